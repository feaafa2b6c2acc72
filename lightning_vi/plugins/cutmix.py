"""CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with
Localizable Features", Eq. 1-2).

    x~ = M * x_A + (1 - M) * x_B,      y~ = lam' * y_A + (1 - lam') * y_B

``lam ~ Beta(alpha, alpha)``; the pasted box has height ``round(H sqrt(1 - lam))`` and width
``round(W sqrt(1 - lam))`` (H and W separately, so non-square images work), a uniformly random centre,
and is clipped to the image; the label weight is area-corrected to the exact pasted fraction
``lam' = 1 - box_area / (H W)``. Partner images come from a random permutation of the batch (any batch
size, odd ones included). With probability ``1 - prob`` a batch is left unchanged.

Defaults: ``alpha=1.0`` (lam uniform), ``prob=1.0``. Produces ``y_soft`` [B, C] for the classifier's soft
cross-entropy; composes with ``mixup`` (a present ``y_soft`` is mixed again).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.plugins._util import require_classifier, sample_beta
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


def soft_labels(batch: dict[str, Any], num_classes: int) -> Tensor:
    if "y_soft" in batch:
        return batch["y_soft"].float()
    return F.one_hot(batch["y"].long(), num_classes).float()


def cutmix_box(h: int, w: int, lam: float, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """Box ``(top, bottom, left, right)`` of relative area about ``1 - lam``, clipped to the image."""
    r = (1.0 - lam) ** 0.5
    ch, cw = int(round(h * r)), int(round(w * r))
    cy = int(torch.randint(0, h, (1,), generator=generator))
    cx = int(torch.randint(0, w, (1,), generator=generator))
    return max(cy - ch // 2, 0), min(cy + ch - ch // 2, h), max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)


@PLUGINS.register("cutmix")
class CutMix(Plugin):
    """CutMix: paste a random box from a partner image, mix labels by the exact pasted area.

    Args:
        alpha: Beta(alpha, alpha) parameter of the mixing ratio; > 0.
        prob: probability of applying CutMix to a batch, in [0, 1].
    """

    order = 10

    def __init__(self, alpha: float = 1.0, prob: float = 1.0) -> None:
        check_range("alpha", alpha, 0.0, low_open=True)
        check_range("prob", prob, 0.0, 1.0)
        self.alpha, self.prob = float(alpha), float(prob)
        self.num_classes = 0
        self.last_lam: float | None = None
        self.last_perm: Tensor | None = None

    def attach(self, module: Any) -> None:
        self.num_classes = require_classifier(self.name, module)

    def transform_batch(self, batch: Any, module: Any) -> Any:
        x = batch["x"]
        if x.ndim < 3:
            raise ValueError(f"cutmix needs image batches [B, C, H, W] (or [B, H, W]); batch['x'] has shape {tuple(x.shape)}")
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return batch
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        lam = sample_beta(self.alpha)
        top, bot, left, right = cutmix_box(h, w, lam)
        perm = torch.randperm(b, device=x.device)
        x_new = x.clone()
        x_new[..., top:bot, left:right] = x[perm][..., top:bot, left:right]
        lam_adj = 1.0 - (bot - top) * (right - left) / (h * w)
        t = soft_labels(batch, self.num_classes)
        self.last_lam, self.last_perm = lam_adj, perm
        return {**batch, "x": x_new, "y_soft": lam_adj * t + (1.0 - lam_adj) * t[perm]}
