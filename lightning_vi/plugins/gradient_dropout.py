"""Gradient dropout of Regularized Mask Tuning (Zheng et al. 2023, "Regularized Mask Tuning: Uncovering
Hidden Knowledge in Pre-trained Vision-Language Models", Sec. 3.3; in the spirit of GradDrop,
Chen et al. 2020).

The loss splits into a task part and a regularizer part (a term named ``reg_term``, e.g. the KL to the
pre-trained model, or ``kl`` of a VAE), with gradients ``g_t`` and ``g_r`` per parameter entry. Each entry
is kept with the probability that the two gradients agree in sign,

    P = 1/2 (1 + g_t / (|g_t| + |g_r|)),        M ~ Bernoulli(P) entry-wise,

and the update uses

    g <- (1 - lambda + lambda M) * g,           g = g_t + g_r the full gradient,

so ``lambda=0`` leaves gradients unchanged and ``lambda=1`` drops each entry with probability 1 - P.
``g_r`` is obtained with one extra backward of the (weighted) regularizer term; ``g_t = g - g_r``.
Acts in ``on_before_optimizer_step`` (unscaled gradients, also under manual optimization).

Defaults: ``reg_term="kl"``, ``lam=1.0``, ``params=None`` (all trainable parameters; or name prefixes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.core.protocols import HasTermWeights, require_capability
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


def keep_probability(g_task: Tensor, g_reg: Tensor) -> Tensor:
    """``P = 1/2 (1 + g_t / (|g_t| + |g_r|))`` entry-wise (1/2 where both are zero)."""
    denom = g_task.abs() + g_reg.abs()
    return 0.5 * (1.0 + torch.where(denom > 0, g_task / denom.clamp_min(1e-30), torch.zeros_like(denom)))


def drop_gradient(g: Tensor, g_task: Tensor, g_reg: Tensor, lam: float, generator: torch.Generator | None = None) -> Tensor:
    """``(1 - lam + lam M) * g`` with ``M ~ Bernoulli(P)``."""
    if lam == 0:
        return g
    p = keep_probability(g_task, g_reg)
    m = (torch.rand(p.shape, generator=generator, device=p.device if generator is None else "cpu").to(p.device) < p)
    return g * (1.0 - lam + lam * m.to(g.dtype))


@PLUGINS.register("gradient_dropout")
class GradientDropout(Plugin):
    """R-AMT gradient dropout: keep each gradient entry with probability 1/2(1 + g_t/(|g_t|+|g_r|)).

    Args:
        reg_term: name of the regularizer term of the objective (must be in ``term_weights``).
        lam: dropout strength lambda in [0, 1].
        params: parameter-name prefixes to act on (None = all trainable parameters).
    """

    order = 30

    def __init__(self, reg_term: str = "kl", lam: float = 1.0, params: list[str] | None = None) -> None:
        check_range("lam", lam, 0.0, 1.0)
        self.reg_term, self.lam = reg_term, float(lam)
        self.params = None if params is None else tuple(params)
        self._targets: list[tuple[str, Tensor]] = []
        self._g_reg: dict[int, Tensor] = {}

    def attach(self, module: Any) -> None:
        require_capability(module, HasTermWeights, f"plugin {self.name!r}")
        tw = module.term_weights
        if self.reg_term not in tw:
            raise ValueError(f"reg_term={self.reg_term!r} is not a weighted term of {type(module).__name__}; "
                             f"its terms are {sorted(tw)}")
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if self.params is not None:
            named = [(n, p) for n, p in named if n.startswith(self.params)]
            if not named:
                raise ValueError(f"params={list(self.params)!r} match no parameter of {type(module).__name__}")
        self._targets = named
        objective = module.objective

        def objective_with_capture(batch: Any) -> dict[str, Tensor]:
            out = objective(batch)
            if module.training:
                self.capture(out, module)
            return out

        # The regularizer's scalar value is not among the outputs handed to extra_terms: keep it here.
        module.objective = objective_with_capture

    def extra_terms(self, outputs: dict[str, Tensor], batch: Any, module: Any) -> dict[str, Tensor]:
        if self.lam == 0:
            return {}
        term, self._reg_value = self._reg_value, None
        if term is None or not term.requires_grad:
            return {}
        params = [p for _, p in self._targets]
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        scale = 1.0
        trainer = getattr(module, "_trainer", None)
        if trainer is not None and getattr(trainer, "accumulate_grad_batches", 1) > 1:
            scale = 1.0 / trainer.accumulate_grad_batches
        for p, g in zip(params, grads):
            if g is not None:
                g = g * scale
                self._g_reg[id(p)] = self._g_reg[id(p)] + g if id(p) in self._g_reg else g
        return {}

    _reg_value: Tensor | None = None

    def capture(self, terms: dict[str, Tensor], module: Any) -> None:
        w = module.term_weights.get(self.reg_term, 0.0)
        t = terms.get(self.reg_term)
        self._reg_value = w * t if isinstance(t, Tensor) and t.ndim == 0 and w else None

    @torch.no_grad()
    def apply(self) -> None:
        """Drop gradient entries in place (called in ``on_before_optimizer_step``)."""
        for _, p in self._targets:
            if p.grad is None:
                continue
            g_reg = self._g_reg.get(id(p))
            g_reg = torch.zeros_like(p.grad) if g_reg is None else g_reg.to(p.grad.dtype)
            p.grad.copy_(drop_gradient(p.grad, p.grad - g_reg, g_reg, self.lam))
        self._g_reg.clear()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.apply()
