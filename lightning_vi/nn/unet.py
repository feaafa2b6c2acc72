"""Small denoising networks for diffusion and flow models: a time-conditioned MLP and a small UNet.

Both take ``(x, t, y=None, cond=None)``: ``t`` is a ``[B]`` timestep (integer index or continuous
time, embedded sinusoidally as in Vaswani et al. 2017 / DDPM App. B), ``y`` optional class labels
(``num_classes`` means "no label", the null token of classifier-free guidance), ``cond`` an optional
tensor shaped like ``x`` concatenated to the input (DiffuseVAE's reconstruction).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps ``t`` ``[B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return F.pad(emb, (0, dim % 2))


class _Conditioning(nn.Module):
    """Time (and class) embedding ``[B, dim]``."""

    def __init__(self, dim: int, num_classes: int, time_scale: float) -> None:
        super().__init__()
        self.dim, self.time_scale = dim, time_scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, t: Tensor, y: Tensor | None) -> Tensor:
        h = self.mlp(timestep_embedding(t * self.time_scale, self.dim))
        if self.label is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.label.num_embeddings - 1, device=t.device, dtype=torch.long)
            h = h + self.label(y)
        return h


class MLPDenoiser(nn.Module):
    """Residual MLP on flattened inputs with additive time/class embeddings.

    Args:
        data_shape: shape of one example. hidden: width. depth: residual blocks.
        num_classes: 0 = unconditional. cond_channels: 1 to accept ``cond`` shaped like ``x``.
        time_scale: multiplies ``t`` before embedding (1000 for continuous t in [0, 1]).
    """

    def __init__(self, data_shape: Sequence[int], hidden: int = 128, depth: int = 3, num_classes: int = 0,
                 cond_channels: int = 0, time_scale: float = 1.0) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.inp = nn.Linear(d * (1 + (cond_channels > 0)), hidden)
        self.emb = _Conditioning(hidden, num_classes, time_scale)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        h = x.flatten(1) if cond is None else torch.cat([x.flatten(1), cond.flatten(1)], 1)
        h = self.inp(h)
        e = self.emb(t, y)
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h).view(x.shape)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(min(8, c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.e = nn.Linear(emb, c_out)
        self.n2, self.c2 = nn.GroupNorm(min(8, c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.e(e)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small UNet (Ronneberger et al. 2015 as used by DDPM): one res-block per level, stride-2 down,
    nearest-upsample up, skip concatenation. H and W must be divisible by ``2 ** (len(channels) - 1)``.
    """

    def __init__(self, data_shape: Sequence[int], channels: Sequence[int] = (32, 64), num_classes: int = 0,
                 cond_channels: int = 0, time_scale: float = 1.0) -> None:
        super().__init__()
        c, h, w = data_shape
        f = 2 ** (len(channels) - 1)
        if h % f or w % f:
            raise ValueError(f"UNet with channels={list(channels)} needs H and W divisible by {f}; got {list(data_shape)}")
        emb = 4 * channels[0]
        self.emb = _Conditioning(emb, num_classes, time_scale)
        self.inp = nn.Conv2d(c + cond_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = channels[0]
        for ch in channels:
            self.down.append(_ResBlock(prev, ch, emb))
            prev = ch
        self.mid = _ResBlock(prev, prev, emb)
        self.up = nn.ModuleList(_ResBlock(prev + ch if i == 0 else ch_prev + ch, ch, emb)
                                for i, (ch, ch_prev) in enumerate(zip(channels[::-1], [prev, *channels[::-1]])))
        self.out = nn.Sequential(nn.GroupNorm(min(8, channels[0]), channels[0]), nn.SiLU(), nn.Conv2d(channels[0], c, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        e = self.emb(t, y)
        h = self.inp(x if cond is None else torch.cat([x, cond], 1))
        skips = []
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h, e)
            skips.append(h)
        h = self.mid(h, e)
        for i, block in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], 1), e)
        return self.out(h)
