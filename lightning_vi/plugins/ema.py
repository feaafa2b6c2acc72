"""Exponential moving average of a family's network, for sampling and validation (the "EMA weights"
of DDPM, Ho et al. 2020, Sec. 4 / App. B: decay 0.9999; Polyak & Juditsky 1992 averaging).

``attach`` adds a frozen copy ``module.ema_<target>`` of ``module.<target>`` (default ``net`` ->
``ema_net``): it is a submodule, so it is saved in and restored from checkpoints (resume included) and
moves with the module; its parameters do not require gradients, so the optimizer never sees them.
After every training batch (optimizer step)::

    theta_ema <- decay * theta_ema + (1 - decay) * theta          (buffers are copied)

Families that support it (``ddpm`` and its subclasses, ``flow_matching``) use the copy whenever they
are in eval mode: validation, test, ``sample``. Default ``decay=0.999``, ``target="net"``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lightning_vi.core.checks import check_range
from lightning_vi.plugins._util import get_layer, require
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


@PLUGINS.register("ema")
class EMA(Plugin):
    """EMA copy of ``module.<target>`` used by the family in eval mode.

    Args:
        decay: in [0, 1); 0 copies the weights every step.
        target: attribute (dotted path) of the network to average, default ``net``.
    """

    order = 8  # structural: copies the network after other structural plugins changed it

    def __init__(self, decay: float = 0.999, target: str = "net") -> None:
        check_range("decay", decay, 0.0, 1.0, high_open=True)
        if not isinstance(target, str) or not target:
            raise ValueError(f"target={target!r} must be the attribute name of the network to average, e.g. 'net'")
        self.decay, self.target = float(decay), target
        self.attr = "ema_" + target.replace(".", "_")

    def attach(self, module: Any) -> None:
        net = get_layer(module, self.target, "target")
        require(not hasattr(module, self.attr) or getattr(module, self.attr) is None, "ema", module,
                f"it already has an attribute {self.attr!r} (two EMA plugins on one target?)")
        setattr(module, self.attr, copy.deepcopy(net).requires_grad_(False))

    def averaged(self, module: Any) -> nn.Module:
        return getattr(module, self.attr)

    @torch.no_grad()
    def update(self, module: Any) -> None:
        """One EMA step of ``module.ema_<target>`` toward ``module.<target>``."""
        net, ema = module.get_submodule(self.target), self.averaged(module)
        for pe, p in zip(ema.parameters(), net.parameters()):
            pe.lerp_(p.detach(), 1 - self.decay)
        for be, b in zip(ema.buffers(), net.buffers()):
            be.copy_(b)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update(pl_module)
