"""mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", Eq. 1), CutMix's sibling.

    x~ = lam x_i + (1 - lam) x_j,      y~ = lam y_i + (1 - lam) y_j,      lam ~ Beta(alpha, alpha)

Partners ``j`` come from a random permutation of the batch (any batch size). With probability
``1 - prob`` the batch is left unchanged. Defaults: ``alpha=0.2`` (the paper's ImageNet value),
``prob=1.0``. Produces ``y_soft`` [B, C]; works on any input shape.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_vi.core.checks import check_range
from lightning_vi.plugins._util import require_classifier, sample_beta
from lightning_vi.plugins.base import Plugin
from lightning_vi.plugins.cutmix import soft_labels
from lightning_vi.registry import PLUGINS


@PLUGINS.register("mixup")
class Mixup(Plugin):
    """mixup: convex combinations of input pairs and of their labels.

    Args:
        alpha: Beta(alpha, alpha) parameter; > 0.
        prob: probability of mixing a batch, in [0, 1].
    """

    order = 10

    def __init__(self, alpha: float = 0.2, prob: float = 1.0) -> None:
        check_range("alpha", alpha, 0.0, low_open=True)
        check_range("prob", prob, 0.0, 1.0)
        self.alpha, self.prob = float(alpha), float(prob)
        self.num_classes = 0
        self.last_lam: float | None = None

    def attach(self, module: Any) -> None:
        self.num_classes = require_classifier(self.name, module)

    def transform_batch(self, batch: Any, module: Any) -> Any:
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return batch
        x = batch["x"]
        lam = sample_beta(self.alpha)
        perm = torch.randperm(x.shape[0], device=x.device)
        t = soft_labels(batch, self.num_classes)
        self.last_lam = lam
        return {**batch, "x": lam * x + (1 - lam) * x[perm], "y_soft": lam * t + (1 - lam) * t[perm]}
