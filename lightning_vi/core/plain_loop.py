"""A plain-PyTorch training loop over a family's loss, for oracle tests, notebooks and benchmarks.

Lightning's per-step bookkeeping dominates the cost of the tiny models those use, so they train with
:func:`fit_objective`: Adam over the trainable parameters, ``module.compute_loss(batch, "train")`` (the same
weighted terms, plugin transforms and extra terms, and non-finite check as ``training_step``), and the family's
``update_ema()`` after each step where it has one.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from lightning_vi.core.module import VIModule


def fit_objective(module: VIModule, batches: Any | Callable[[int], Any], steps: int, lr: float = 2e-3) -> VIModule:
    """Train ``module`` for ``steps`` Adam steps and return it in eval mode.

    Args:
        batches: one batch used at every step (full-batch training), or ``step -> batch``.
        steps: optimizer steps; lr: Adam's learning rate.
    """
    if steps < 0:
        raise ValueError(f"steps={steps!r} is out of range; allowed: [0, inf)")
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr)
    module.train()
    for step in range(int(steps)):
        loss, _ = module.compute_loss(batches(step) if callable(batches) else batches, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(module, "update_ema"):
            module.update_ema()
    return module.eval()
