"""Planted anomalies for pixel-wise anomaly detection (the P37 / StRegA oracle).

:func:`plant_anomalies` puts one square of random side (``min_size..max_size`` pixels) at a random place in
each image and returns the corrupted images with the ground-truth mask. Each square is one of:

* ``"blob"``: a low-contrast patch, every pixel moved by ``c`` towards the opposite intensity,
  ``x' = x + c (1 - 2 x)`` (on a black background a grey square of level ``c``);
* ``"texture"``: a checkerboard with one-pixel cells, ``x' = x + c (1 - 2 x)`` on alternate pixels only
  (mean level ``c / 2``: a fine pattern rather than a bright square);

with the contrast ``c`` drawn uniformly in ``[min_contrast, max_contrast]``. Images are expected in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range

KINDS = ("blob", "texture")


def plant_anomalies(x: Tensor, generator: torch.Generator, min_size: int = 3, max_size: int = 8,
                    min_contrast: float = 0.3, max_contrast: float = 0.6,
                    kinds: tuple[str, ...] = KINDS, centers: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Corrupt ``x`` [N, C, H, W] with one anomaly per image; returns ``(x_anomalous, mask [N, 1, H, W] bool)``.

    Kinds cycle over the batch (image ``i`` gets ``kinds[i % len(kinds)]``); sizes, places and contrasts are
    drawn from ``generator``. ``centers`` [N, 2] (x, y as fractions of the width and height, e.g. sprite
    positions) puts each square over that point, shifted by up to half its side, instead of anywhere."""
    if x.ndim != 4:
        raise ValueError(f"x.shape={tuple(x.shape)}: plant_anomalies needs images [N, C, H, W]")
    n, _, h, w = x.shape
    check_range("min_size", min_size, 1, min(h, w))
    check_range("max_size", max_size, min_size, min(h, w))
    check_range("min_contrast", min_contrast, 0.0, 1.0)
    check_range("max_contrast", max_contrast, min_contrast, 1.0)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kinds contains {k!r}; allowed: {KINDS}")
    if not kinds:
        raise ValueError(f"kinds={kinds!r} is empty; allowed: a non-empty subset of {KINDS}")
    size = torch.randint(min_size, max_size + 1, (n,), generator=generator)
    if centers is None:
        top = (torch.rand(n, generator=generator) * (h - size + 1)).long()
        left = (torch.rand(n, generator=generator) * (w - size + 1)).long()
    else:
        if centers.shape != (n, 2):
            raise ValueError(f"centers.shape={tuple(centers.shape)}; allowed: ({n}, 2)")
        jitter = (torch.rand(n, 2, generator=generator) - 0.5) * size.view(-1, 1)
        corner = centers * torch.tensor([w, h]) - size.view(-1, 1) / 2 + jitter
        left = corner[:, 0].round().long().clamp(min=torch.zeros_like(size), max=w - size)
        top = corner[:, 1].round().long().clamp(min=torch.zeros_like(size), max=h - size)
    contrast = min_contrast + (max_contrast - min_contrast) * torch.rand(n, generator=generator)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    t, le, s = top.view(-1, 1, 1), left.view(-1, 1, 1), size.view(-1, 1, 1)
    inside = (rows >= t) & (rows < t + s) & (cols >= le) & (cols < le + s)
    is_texture = torch.tensor([kinds[i % len(kinds)] == "texture" for i in range(n)]).view(-1, 1, 1)
    checker = ((rows - t + cols - le) % 2 == 0)
    mask = (inside & (~is_texture | checker)).unsqueeze(1)                     # [N, 1, H, W]
    x = x.clone()
    shift = contrast.view(-1, 1, 1, 1) * (1 - 2 * x)
    return torch.where(mask, x + shift, x), mask
