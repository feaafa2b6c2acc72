"""Exact fractional Brownian motion paths with a chosen Hurst index (Cholesky sampling).

``Cov(B_t, B_s) = 0.5 (t^2H + s^2H - |t - s|^2H)`` on the grid ``t_i = i * duration / length``,
``i = 1..length`` (``B_0 = 0`` is not stored). Sampling is exact: ``B = L eps`` with ``L`` the
Cholesky factor of the covariance (float64), vectorised over paths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule


def fbm_covariance(t: Tensor, s: Tensor, hurst: float | Tensor) -> Tensor:
    """``0.5 (t^2H + s^2H - |t - s|^2H)`` for broadcastable ``t``, ``s`` >= 0."""
    h2 = 2 * hurst
    return 0.5 * (t.abs() ** h2 + s.abs() ** h2 - (t - s).abs() ** h2)


def fbm_paths(n: int, length: int, hurst: float, generator: torch.Generator, duration: float = 1.0,
              channels: int = 1) -> dict[str, Tensor]:
    """``n`` exact fBM paths ``x`` [n, length, channels] on a regular grid ``t`` [n, length] in (0, duration]."""
    check_range("hurst", hurst, 0.0, 1.0, low_open=True, high_open=True)
    check_range("length", length, 2)
    check_range("duration", duration, 0.0, low_open=True)
    grid = torch.arange(1, length + 1, dtype=torch.float64) * (duration / length)
    cov = fbm_covariance(grid[:, None], grid[None, :], hurst)
    chol = torch.linalg.cholesky(cov + 1e-12 * torch.eye(length, dtype=torch.float64))
    eps = torch.randn(n, channels, length, generator=generator, dtype=torch.float64)
    x = (eps @ chol.T).transpose(1, 2).float()  # [n, length, channels]
    return {"x": x, "t": grid.float().expand(n, length).clone(), "mask": torch.ones(n, length),
            "hurst": torch.full((n,), float(hurst))}


class FBMDataModule(InMemoryDataModule):
    """Exact fBM paths: ``x`` [N, T, C], ``t`` [N, T] (shared grid in (0, duration]), ``mask``, ``hurst``."""

    def __init__(self, n: int = 512, length: int = 32, hurst: float = 0.3, duration: float = 1.0, channels: int = 1,
                 batch_size: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        check_range("hurst", hurst, 0.0, 1.0, low_open=True, high_open=True)
        self.kw = dict(n=n, length=length, hurst=hurst, duration=duration, channels=channels)

    def generate(self) -> dict[str, Tensor]:
        return fbm_paths(generator=self.generator(), **self.kw)
