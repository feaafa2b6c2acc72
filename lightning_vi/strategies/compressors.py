"""Sparsifying gradient compressors and error feedback (MASHA, Beznosikov et al. 2022, Definitions 2.1-2.2).

* :class:`RandK` keeps ``k`` coordinates drawn uniformly without replacement, scaled by ``d/k``:
  unbiased, ``E[C(x)] = x``, with variance ``E||C(x) - x||^2 = (d/k - 1) ||x||^2`` (the paper's
  ``q = d/k - 1``). With ``scale=False`` it is the (biased) contractive version, ``E||C(x)-x||^2 = (1-k/d)||x||^2``.
* :class:`TopK` keeps the ``k`` largest-magnitude coordinates: contractive, ``||C(x) - x||^2 <= (1 - k/d) ||x||^2``.
* :class:`ErrorFeedback` (EF, Seide et al. 2014; Stich et al. 2018): ``sent = C(e + g)``,
  ``e <- e + g - sent``, so ``sum(sent) + e_T = sum(g)`` exactly.

A compressor returns a :class:`Sparse` message (values, indices, dimension): what goes on the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def resolve_k(k: float | int, d: int) -> int:
    """Number of kept coordinates: ``k`` as an absolute count (int) or a fraction of ``d`` (float in (0, 1]).

    A fraction gives ``max(1, floor(k * d))`` (never more than the fraction asks). Raises ``ValueError``
    naming ``k`` when it is outside (0, d].
    """
    if d < 1:
        raise ValueError(f"dimension d={d!r} must be at least 1")
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"k={k!r} must be an int in [1, d] or a float fraction in (0, 1]")
    if isinstance(k, float):
        if not (0.0 < k <= 1.0) or math.isnan(k):
            raise ValueError(f"k={k!r} as a fraction is outside (0, 1]; allowed: a fraction in (0, 1] or an int in [1, {d}]")
        return max(1, int(math.floor(k * d + 1e-9)))
    if not (0 < k <= d):
        raise ValueError(f"k={k!r} is outside (0, d] with d={d}; allowed: an int in [1, {d}] or a fraction in (0, 1]")
    return int(k)


@dataclass
class Sparse:
    """A compressed vector: ``values`` at ``indices`` of a ``d``-vector (what a worker transmits)."""

    values: Tensor
    indices: Tensor
    d: int

    def dense(self) -> Tensor:
        out = torch.zeros(self.d, dtype=self.values.dtype, device=self.values.device)
        return out.index_add_(0, self.indices.long(), self.values)

    def nbytes(self, send_indices: bool = True) -> int:
        """Bytes on the wire: the values, plus the indices unless the receiver can regenerate them."""
        n = self.values.numel() * self.values.element_size()
        return n + (self.indices.numel() * self.indices.element_size() if send_indices else 0)


class Compressor:
    """Base: ``compress(x) -> Sparse`` for a flat tensor; ``__call__`` gives the dense ``C(x)``."""

    def __init__(self, k: float | int) -> None:
        resolve_k(k, 1 if isinstance(k, float) else max(int(k), 1))  # validates type and sign now
        self.k = k

    def num_kept(self, d: int) -> int:
        return resolve_k(self.k, d)

    def compress(self, x: Tensor, generator: torch.Generator | None = None) -> Sparse:
        raise NotImplementedError

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.compress(x.reshape(-1), generator).dense().reshape(x.shape)


class RandK(Compressor):
    """Rand-k: ``C(x) = (d/k) sum_{i in S} x_i e_i`` with ``S`` a uniform k-subset (unbiased when ``scale``).

    The subset comes from ``generator``: workers that seed it alike pick the same coordinates, so only the
    ``k`` values need to travel (an all-reduce of ``k`` numbers).
    """

    def __init__(self, k: float | int, scale: bool = True) -> None:
        super().__init__(k)
        self.scale = scale

    def indices(self, d: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        k = self.num_kept(d)
        return torch.randperm(d, generator=generator)[:k].to(device=device, dtype=torch.int32)

    def compress(self, x: Tensor, generator: torch.Generator | None = None) -> Sparse:
        x = x.reshape(-1)
        d = x.numel()
        idx = self.indices(d, generator, x.device)
        values = x[idx.long()]
        if self.scale:
            values = values * (d / idx.numel())
        return Sparse(values, idx, d)


class TopK(Compressor):
    """Top-k: keep the ``k`` coordinates of largest magnitude (contractive with ``delta = k/d``)."""

    def compress(self, x: Tensor, generator: torch.Generator | None = None) -> Sparse:
        x = x.reshape(-1)
        k = self.num_kept(x.numel())
        idx = torch.topk(x.abs(), k, sorted=False).indices
        return Sparse(x[idx], idx.to(torch.int32), x.numel())


class ErrorFeedback:
    """Error feedback around a compressor: ``sent = C(e + g)``, ``e <- e + g - sent`` (one residual per key)."""

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.residuals: dict[object, Tensor] = {}

    def compress(self, g: Tensor, key: object = 0, generator: torch.Generator | None = None) -> Sparse:
        g = g.reshape(-1)
        e = self.residuals.get(key)
        if e is None or e.shape != g.shape or e.dtype != g.dtype or e.device != g.device:
            e = torch.zeros_like(g)
        corrected = e + g
        msg = self.compressor.compress(corrected, generator)
        self.residuals[key] = corrected - msg.dense()
        return msg

    def residual(self, key: object = 0) -> Tensor | None:
        return self.residuals.get(key)
