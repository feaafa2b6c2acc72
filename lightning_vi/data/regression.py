"""Synthetic nonlinear regression data: ``y = sin(2 x_0) + 0.5 x_1^2 - 0.5 x_2 + noise`` on ``x ~ U[-2, 2]^d``."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule


class RegressionDataModule(InMemoryDataModule):
    """``x`` [N, dim] (dims beyond the third are distractors), ``y`` [N, 1].

    Args:
        n: number of examples. dim: input dimension (>= 3). noise_std: observation noise std.
    """

    def __init__(self, n: int = 1000, dim: int = 5, noise_std: float = 0.1, batch_size: int = 256,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        check_range("n", n, 10)
        check_range("dim", dim, 3)
        check_range("noise_std", noise_std, 0.0)
        self.n, self.dim, self.noise_std = n, dim, noise_std

    def generate(self) -> dict[str, Tensor]:
        g = self.generator()
        x = torch.rand(self.n, self.dim, generator=g) * 4 - 2
        f = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - 0.5 * x[:, 2]
        y = f + self.noise_std * torch.randn(self.n, generator=g)
        return {"x": x, "y": y[:, None]}
