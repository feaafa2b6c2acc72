"""Dropout's Dream Land (Wellmer & Kwok 2021, "Dropout's Dream Land: Generalization from Learned
Simulators to Reality", Sec. 3).

Every ``nn.Dropout`` of the model (or the named ones) becomes a dropout whose Bernoulli mask is frozen
for a whole rollout: one mask = one "dream" environment. Inside a dream the mask is drawn once per
rollout (per batch row, shared over all time steps / positions; shape ``[B, 1, ..., 1, F]``) and reused
by every forward call until :meth:`DreamDropout.new_dream` draws the next one:

    y_t = x_t * m / (1 - p),      m ~ Bernoulli(1 - p)^F fixed for t = 1..T

Training: with ``train_masks="per_batch"`` each training batch (a batch of episodes) gets a fresh dream;
``"standard"`` uses ordinary i.i.d. dropout. Evaluation outside a dream is deterministic (no dropout);
:meth:`mc_predict` gives the MC-dropout mean and spread over ``n`` dreams (Gal & Ghahramani 2016).

Defaults: ``p=None`` (keep each layer's p), ``layers=None`` (all nn.Dropout), ``train_masks="per_batch"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.plugins._util import get_layer, require, set_layer
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


class FrozenMaskDropout(nn.Module):
    """Dropout with a mask that stays fixed while ``dreaming`` (drawn lazily at the first call)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.dreaming = False
        self.mask: Tensor | None = None
        self.generator: torch.Generator | None = None

    def new_mask(self) -> None:
        self.mask = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.dreaming:
            return nn.functional.dropout(x, self.p, self.training)
        if self.p == 0.0:
            return x
        if self.mask is None or self.mask.shape[0] not in (1, x.shape[0]) or self.mask.shape[-1] != x.shape[-1]:
            shape = (x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1])
            keep = torch.rand(shape, generator=self.generator, device="cpu" if self.generator is not None else x.device)
            self.mask = (keep >= self.p).to(device=x.device, dtype=x.dtype) / (1.0 - self.p)
        return x * self.mask


@PLUGINS.register("dream_dropout")
class DreamDropout(Plugin):
    """Dropout masks frozen per rollout ("one dream per mask") with MC-dropout prediction.

    Args:
        p: dropout probability for all wrapped layers in [0, 1) (None = keep each layer's own).
        layers: dotted names of nn.Dropout modules to wrap (None = all of them).
        train_masks: ``"per_batch"`` (a new dream per training batch) or ``"standard"``.
    """

    order = 3

    def __init__(self, p: float | None = None, layers: list[str] | None = None, train_masks: str = "per_batch") -> None:
        if p is not None:
            check_range("p", p, 0.0, 1.0, high_open=True)
        check_choice("train_masks", train_masks, ("per_batch", "standard"))
        self.p, self.layers, self.train_masks = p, (None if layers is None else list(layers)), train_masks
        self.wrapped: list[FrozenMaskDropout] = []

    def attach(self, module: Any) -> None:
        if self.layers is None:
            names = [n for n, m in module.named_modules() if isinstance(m, nn.Dropout)]
            require(bool(names), self.name, module, "it has no nn.Dropout layer to freeze (give the family a "
                    "dropout probability, e.g. classifier `dropout: 0.2`)")
        else:
            names = self.layers
        for n in names:
            layer = get_layer(module, n, "layers")
            if not isinstance(layer, nn.Dropout):
                raise ValueError(f"layers={n!r} is a {type(layer).__name__}, not an nn.Dropout")
            new = FrozenMaskDropout(layer.p if self.p is None else self.p)
            set_layer(module, n, new)
            self.wrapped.append(new)

    # -- dreams ---------------------------------------------------------------------------------
    def new_dream(self, generator: torch.Generator | None = None) -> None:
        """Start a new dream: masks are redrawn at the next forward call and then kept fixed."""
        for m in self.wrapped:
            m.dreaming, m.generator = True, generator
            m.new_mask()

    def wake(self) -> None:
        """Leave dream mode (ordinary dropout in training, none in evaluation)."""
        for m in self.wrapped:
            m.dreaming, m.mask, m.generator = False, None, None

    @contextlib.contextmanager
    def dream(self, generator: torch.Generator | None = None) -> Iterator[None]:
        """``with plugin.dream(): ...`` every forward call inside uses the same frozen masks."""
        self.new_dream(generator)
        try:
            yield
        finally:
            self.wake()

    @torch.no_grad()
    def mc_predict(self, fn: Callable[[], Tensor], n: int = 20, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
        """MC-dropout: mean and standard deviation of ``fn()`` over ``n`` dreams."""
        check_range("n", n, 1)
        outs = []
        for _ in range(n):
            with self.dream(generator):
                outs.append(fn())
        stacked = torch.stack(outs)
        return stacked.mean(0), stacked.std(0) if n > 1 else torch.zeros_like(stacked[0])

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.train_masks == "per_batch":
            self.new_dream()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.train_masks == "per_batch":
            self.wake()
