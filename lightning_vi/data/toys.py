"""2D toy distributions for density models: moons, swiss roll, 8 gaussians, checkerboard."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice
from lightning_vi.data.base import InMemoryDataModule

TOYS = ("moons", "swiss_roll", "8gaussians", "checkerboard")


def sample_toy(name: str, n: int, generator: torch.Generator, noise: float = 0.05) -> Tensor:
    """``n`` points ``[n, 2]`` of the named toy, roughly zero-mean with unit-order scale."""
    check_choice("name", name, TOYS)
    g = generator
    if name == "moons":
        t = math.pi * torch.rand(n, generator=g)
        upper = torch.rand(n, generator=g) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
    elif name == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
        pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5.0
    elif name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g).float()
        centers = torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1) * 2.0
        return centers + noise * 2 * torch.randn(n, 2, generator=g)
    else:  # checkerboard: 4x4 board on [-2, 2]^2, the squares with even (i + j)
        x1 = 4 * torch.rand(n, generator=g) - 2
        x2 = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
        x2 = x2 + (torch.floor(x1) % 2)
        return torch.stack([x1, x2], 1)
    return pts + noise * torch.randn(n, 2, generator=g)


class Toy2DDataModule(InMemoryDataModule):
    """2D toy points ``x`` [N, 2] (no labels)."""

    def __init__(self, name: str = "moons", n: int = 10_000, noise: float = 0.05, batch_size: int = 256,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        check_choice("name", name, TOYS)
        self.name, self.n, self.noise = name, n, noise

    def generate(self) -> dict[str, Tensor]:
        return {"x": sample_toy(self.name, self.n, self.generator(), self.noise)}
