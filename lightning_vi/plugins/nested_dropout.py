"""Nested dropout (Rippel, Gelbart & Adams 2014, "Learning Ordered Representations with Nested
Dropout", Sec. 2-3; used on the feature layer by Chen et al. 2021, "Compressing Features for Learning
with Noisy Labels", Sec. 3.2).

For each training example an index ``b`` in {1..D} is drawn and the feature vector is truncated:

    h~_j = h_j * 1[j <= b]

* ``distribution="geometric"`` (Rippel et al. Eq. 3): ``p(b) = rho (1 - rho)^(b-1)``, truncated to D;
* ``distribution="half_normal"`` (Chen et al.): ``b = min(D, 1 + floor(|N(0, sigma^2)|))`` with
  ``sigma = sigma_frac * D``.

Truncation acts on the output of the sub-module ``layer`` (default ``backbone``, the classifier's
feature layer; any family with such a sub-module works) along dimension 1. At evaluation the first
``eval_k`` units are kept (``None`` = all); :meth:`NestedDropout.select_truncation` picks the
best-on-validation ``eval_k``. ``eval_k`` lives in a module buffer, so it is saved in checkpoints.

Defaults: ``distribution="geometric"``, ``rho=0.1``, ``sigma_frac=0.5``, ``layer="backbone"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.plugins._util import get_layer
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


def sample_truncation(n: int, d: int, distribution: str, rho: float, sigma: float, device: Any = None) -> Tensor:
    """``n`` truncation indices b in 1..d (``[n]``, long)."""
    if distribution == "geometric":
        u = torch.rand(n, device=device).clamp_min(1e-12)
        b = 1 + torch.floor(torch.log(u) / torch.log(torch.tensor(1.0 - rho))) if rho < 1 else torch.ones(n, device=device)
    else:
        b = 1 + torch.floor(torch.randn(n, device=device).abs() * sigma)
    return b.clamp(1, d).long()


def truncate(h: Tensor, b: Tensor | int) -> Tensor:
    """Zero units ``j >= b`` along dim 1 (``b`` per example ``[B]`` or one int)."""
    idx = torch.arange(h.shape[1], device=h.device)
    if isinstance(b, Tensor):
        mask = idx.unsqueeze(0) < b.unsqueeze(1)
    else:
        mask = (idx < b).unsqueeze(0)
    mask = mask.view(*mask.shape, *([1] * (h.ndim - 2)))
    return h * mask.to(h.dtype)


@PLUGINS.register("nested_dropout")
class NestedDropout(Plugin):
    """Nested dropout: truncate the feature vector at a sampled index (ordered representations).

    Args:
        distribution: ``"geometric"`` (Rippel et al.) or ``"half_normal"`` (Chen et al.).
        rho: geometric success probability, in (0, 1].
        sigma_frac: half-normal scale as a fraction of the width D, > 0.
        layer: dotted name of the sub-module whose output is truncated.
        eval_k: units kept at evaluation (None = all).
    """

    order = 2

    def __init__(self, distribution: str = "geometric", rho: float = 0.1, sigma_frac: float = 0.5,
                 layer: str = "backbone", eval_k: int | None = None) -> None:
        check_choice("distribution", distribution, ("geometric", "half_normal"))
        check_range("rho", rho, 0.0, 1.0, low_open=True)
        check_range("sigma_frac", sigma_frac, 0.0, low_open=True)
        if eval_k is not None:
            check_range("eval_k", eval_k, 1)
        self.distribution, self.rho, self.sigma_frac, self.layer = distribution, float(rho), float(sigma_frac), layer
        self.eval_k = eval_k
        self._module: Any = None

    def attach(self, module: Any) -> None:
        target = get_layer(module, self.layer, "layer")
        module.register_buffer("nested_dropout_eval_k", torch.tensor(self.eval_k or 0, dtype=torch.long))
        self._module = module
        target.register_forward_hook(self._hook)

    def _hook(self, layer: Any, inputs: Any, out: Tensor) -> Tensor:
        d = out.shape[1]
        if layer.training:
            sigma = self.sigma_frac * d
            return truncate(out, sample_truncation(out.shape[0], d, self.distribution, self.rho, sigma, out.device))
        k = int(self._module.nested_dropout_eval_k)
        return truncate(out, k) if 0 < k < d else out

    def set_eval_k(self, k: int | None) -> None:
        self._module.nested_dropout_eval_k.fill_(int(k or 0))

    @torch.no_grad()
    def select_truncation(self, module: Any, batches: Iterable[Any], candidates: Sequence[int],
                          metric: str = "loss") -> dict[int, float]:
        """Evaluate ``metric`` (a term, lower is better; ``acc`` is maximised) at each truncation on
        ``batches`` (e.g. the validation loader), set ``eval_k`` to the best and return all scores."""
        batches = list(batches)
        was = module.training
        module.eval()
        scores: dict[int, float] = {}
        for k in candidates:
            self.set_eval_k(k)
            vals = [float(module.compute_loss(b, "val")[1][metric]) for b in batches]
            scores[int(k)] = sum(vals) / len(vals)
        best = max(scores, key=scores.get) if metric == "acc" else min(scores, key=scores.get)
        self.set_eval_k(best)
        module.train(was)
        return scores
