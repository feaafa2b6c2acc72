"""Procedural sprites in the spirit of dSprites (Matthey et al. 2017) with known generative factors.

Each image shows one white shape (square, ellipse, heart) on black; the factors are returned with it:
``factors[:, 0]`` shape id, ``1`` scale, ``2`` rotation (radians), ``3`` x and ``4`` y position in [0, 1].
Rendering is vectorised over the batch (implicit shape functions on a coordinate grid).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_vi.data.base import InMemoryDataModule

SHAPES = ("square", "ellipse", "heart")
FACTOR_NAMES = ("shape", "scale", "rotation", "x", "y")


def render_sprites(factors: Tensor, image_size: int = 32, chunk: int = 4096) -> Tensor:
    """Render ``[N, 5]`` factors (shape, scale, rotation, x, y) to ``[N, 1, S, S]`` binary images."""
    if image_size < 8:
        raise ValueError(f"image_size={image_size!r} is out of range; allowed: [8, inf)")
    s = image_size
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    out = []
    for f in factors.split(chunk):
        shape, scale, rot, px, py = (f[:, i].view(-1, 1, 1) for i in range(5))
        r = 0.17 * scale  # base radius as a fraction of the image
        dx, dy = gx - px, gy - py
        c, si = torch.cos(rot), torch.sin(rot)
        u, v = (c * dx + si * dy) / r, (-si * dx + c * dy) / r
        square = torch.maximum(u.abs(), v.abs()) <= 0.8
        ellipse = u.pow(2) + (v / 0.55).pow(2) <= 1.0
        hu, hv = 1.15 * u, -1.15 * v + 0.25
        heart = (hu.pow(2) + hv.pow(2) - 1).pow(3) - hu.pow(2) * hv.pow(3) <= 0
        img = torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))
        out.append(img.float().unsqueeze(1))
    return torch.cat(out)


def sample_factors(n: int, generator: torch.Generator, n_scales: int = 6, n_rotations: int = 40,
                   n_positions: int = 32) -> Tensor:
    """Factors on the dSprites grid: 3 shapes x 6 scales x 40 rotations x 32 x 32 positions."""
    def pick(k: int) -> Tensor:
        return torch.randint(0, k, (n,), generator=generator).float()

    shape = pick(3)
    scale = 0.5 + 0.5 * pick(n_scales) / max(n_scales - 1, 1)
    rot = 2 * math.pi * pick(n_rotations) / n_rotations
    x = 0.25 + 0.5 * pick(n_positions) / max(n_positions - 1, 1)
    y = 0.25 + 0.5 * pick(n_positions) / max(n_positions - 1, 1)
    return torch.stack([shape, scale, rot, x, y], dim=1)


class SpritesDataModule(InMemoryDataModule):
    """Procedural sprites: ``x`` [N, 1, S, S], ``y`` shape id (0..2), ``factors`` [N, 5].

    Args:
        n: number of images. image_size: 32 or 64 (any size >= 8 works).
    """

    num_classes = 3
    factor_names = FACTOR_NAMES

    def __init__(self, n: int = 10_000, image_size: int = 32, batch_size: int = 128, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if n < 3:
            raise ValueError(f"n={n!r} is out of range; allowed: [3, inf)")
        self.n, self.image_size = n, image_size

    def generate(self) -> dict[str, Tensor]:
        factors = sample_factors(self.n, self.generator())
        return {"x": render_sprites(factors, self.image_size), "y": factors[:, 0].long(), "factors": factors}
