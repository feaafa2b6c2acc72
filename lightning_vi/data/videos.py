"""Moving-sprite videos: one sprite (lightning_vi.data.sprites) moving with constant velocity, bouncing.

``x`` [N, 1, T, S, S] (channels, time, height, width: the Conv3d layout), ``t`` [N, T], ``mask`` [N, T],
``factors`` [N, T, 5]. All frames are rendered in one vectorised call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule
from lightning_vi.data.sprites import render_sprites


def moving_sprites(n: int, frames: int, image_size: int, generator: torch.Generator, speed: float = 0.06,
                   spin: float = 0.2) -> dict[str, Tensor]:
    """Videos of a sprite moving in ``[0.25, 0.75]^2`` with reflecting walls and a constant spin."""
    check_range("frames", frames, 1)
    g = generator
    shape = torch.randint(0, 3, (n,), generator=g).float()
    scale = 0.6 + 0.4 * torch.rand(n, generator=g)
    pos0 = 0.25 + 0.5 * torch.rand(n, 2, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    vel = speed * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    rot0 = 2 * math.pi * torch.rand(n, generator=g)
    steps = torch.arange(frames, dtype=torch.float32)
    raw = pos0[:, None] - 0.25 + vel[:, None] * steps[None, :, None]  # unfolded position, period 1.0
    tri = 0.5 - (torch.remainder(raw, 1.0) - 0.5).abs()  # reflect into [0, 0.5]
    pos = 0.25 + tri
    rot = rot0[:, None] + spin * steps[None]
    factors = torch.stack([shape[:, None].expand(n, frames), scale[:, None].expand(n, frames), rot,
                           pos[..., 0], pos[..., 1]], dim=-1)
    frames_img = render_sprites(factors.reshape(-1, 5), image_size).view(n, frames, 1, image_size, image_size)
    return {"x": frames_img.transpose(1, 2).contiguous(), "t": steps.expand(n, frames).clone(),
            "mask": torch.ones(n, frames), "factors": factors}


class MovingSpritesDataModule(InMemoryDataModule):
    """Moving-sprite videos ``x`` [N, 1, T, S, S] in {0, 1}, with ``t``, ``mask`` and per-frame ``factors``."""

    def __init__(self, n: int = 512, frames: int = 8, image_size: int = 16, speed: float = 0.06, spin: float = 0.2,
                 batch_size: int = 32, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.kw = dict(n=n, frames=frames, image_size=image_size, speed=speed, spin=spin)

    def generate(self) -> dict[str, Tensor]:
        return moving_sprites(generator=self.generator(), **self.kw)
