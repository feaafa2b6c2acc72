"""Gradient clipping: by global norm, by value (as Lightning's Trainer does) and adaptive gradient
clipping (AGC; Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization", Sec. 4.1, Eq. 3).

* ``norm``:  g <- g * min(1, max_norm / ||g||_q)   (``||g||_q`` over all parameters of a group);
* ``value``: g <- clamp(g, -threshold, threshold);
* ``agc``:   for every unit i (row of a weight; a whole tensor for biases/gains)
  ``G_i <- G_i * lambda max(||W_i||, eps) / ||G_i||`` if ``||G_i|| / max(||W_i||, eps) > lambda``,
  else unchanged (unit-wise norms: Frobenius over all axes but the output axis).

Thresholds per optimizer parameter group: ``group_thresholds[i]`` overrides ``threshold`` for group i
(``None`` in the list = no clipping there). The norm is computed per group when ``group_thresholds``
is set, else over all parameters together (what ``Trainer(gradient_clip_val=...)`` does).

Where it acts: Lightning's ``on_before_optimizer_step`` callback hook. Lightning 2.6 runs the
closure (forward + backward), then ``scaler.unscale_`` (16-mixed), then ``on_before_optimizer_step``,
then ``configure_gradient_clipping``; bf16-mixed has no scaler. So the gradients seen here are always
unscaled, and the hook also runs for manual optimization (``opt.step()`` in ``training_step``), where
Lightning's own clipping is disabled.

Defaults: ``algorithm="norm"``, ``threshold=1.0``, ``norm_type=2.0``, ``eps=1e-3`` (AGC), no exclusions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.plugins._util import optimizer_params
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


def unitwise_norm(x: Tensor) -> Tensor:
    """Norm per output unit (broadcastable to ``x``): rows of weights, the whole tensor for <= 1-D."""
    if x.ndim <= 1:
        return x.norm()
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_(params: list[Tensor], clip: float, eps: float = 1e-3) -> None:
    """AGC in place on the gradients of ``params``."""
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        max_norm = unitwise_norm(p.detach().float()).clamp_min(eps) * clip
        g_norm = unitwise_norm(g.float())
        scale = torch.where(g_norm > max_norm, max_norm / g_norm.clamp_min(1e-6), torch.ones_like(g_norm))
        g.mul_(scale.to(g.dtype))


@PLUGINS.register("gradient_clipping")
class GradientClipping(Plugin):
    """Gradient clipping by norm, value or unit-wise adaptive (AGC), per parameter group, on unscaled grads.

    Args:
        algorithm: ``"norm"``, ``"value"`` or ``"agc"``.
        threshold: max norm / max |value| / AGC lambda; > 0.
        norm_type: q of the norm (``"norm"`` only), > 0 (``inf`` allowed).
        group_thresholds: per-optimizer-param-group thresholds (None entries skip a group).
        eps: AGC's floor on the weight norm, > 0.
        exclude: parameter-name prefixes AGC leaves alone (Brock et al. exclude the final linear layer).
    """

    order = 40

    def __init__(self, algorithm: str = "norm", threshold: float = 1.0, norm_type: float = 2.0,
                 group_thresholds: list[float | None] | None = None, eps: float = 1e-3,
                 exclude: list[str] = ()) -> None:
        check_choice("algorithm", algorithm, ("norm", "value", "agc"))
        check_range("threshold", threshold, 0.0, low_open=True)
        check_range("norm_type", norm_type, 0.0, low_open=True)
        check_range("eps", eps, 0.0, low_open=True)
        for i, t in enumerate(group_thresholds or []):
            if t is not None:
                check_range(f"group_thresholds[{i}]", t, 0.0, low_open=True)
        self.algorithm, self.threshold, self.norm_type, self.eps = algorithm, float(threshold), float(norm_type), eps
        self.group_thresholds = None if group_thresholds is None else list(group_thresholds)
        self.exclude = tuple(exclude)
        self._excluded: set[int] = set()
        self.last_norms: list[float] = []

    def attach(self, module: Any) -> None:
        self._excluded = {id(p) for n, p in module.named_parameters() if self.exclude and n.startswith(self.exclude)}

    def clip(self, groups: list[list[Tensor]]) -> None:
        """Clip the gradients of parameter ``groups`` in place (the optimizer's param groups)."""
        if self.group_thresholds is not None and len(self.group_thresholds) != len(groups):
            raise ValueError(f"group_thresholds has {len(self.group_thresholds)} entries but the optimizer has "
                             f"{len(groups)} parameter groups")
        if self.group_thresholds is None:
            work = [([p for g in groups for p in g], self.threshold)]
        else:
            work = [(g, t) for g, t in zip(groups, self.group_thresholds) if t is not None]
        self.last_norms = []
        for params, thr in work:
            params = [p for p in params if p.grad is not None]
            if not params:
                continue
            if self.algorithm == "norm":
                n = torch.nn.utils.clip_grad_norm_(params, thr, norm_type=self.norm_type)
                self.last_norms.append(float(n))
            elif self.algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, thr)
            else:
                adaptive_clip_([p for p in params if id(p) not in self._excluded], thr, self.eps)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.clip([list(g["params"]) for g in optimizer_params(optimizer)])
