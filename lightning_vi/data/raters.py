"""Procedural multi-rater segmentation of thin structures (the P22 PULASki setting).

Each example is a noisy image of thin curved lines (quadratic Bezier "vessels", about 1.5 px wide, a few
percent of the pixels) with the ground-truth mask ``gt`` and ``R`` annotators' masks. Annotator ``r`` has a
fixed style, a half-width ``width_r`` (thin to thick raters: erosion/dilation of the boundary), plus per image
a sub-pixel shift of its drawing, a width jitter, and misses each of the ``segments`` pieces of a curve with
probability ``miss_prob``. The image is ``contrast * exp(-d^2 / (2 * 0.6^2)) + noise * N(0, 1)`` of the
distance ``d`` to the true curve. Everything is drawn from the ``torch.Generator`` passed in (deterministic from
a seed). Batches: ``x [B, 1, H, W]``, ``masks [B, R, H, W]`` (0/1 floats), ``gt [B, H, W]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule

__all__ = ["make_rater_data", "RaterDataModule", "check_masks"]


def check_masks(x: Tensor, masks: Tensor) -> None:
    """``x [B, C, H, W]`` and rater masks ``masks [B, R, H, W]`` must agree in ``B, H, W``."""
    if x.dim() != 4 or masks.dim() != 4 or masks.shape[0] != x.shape[0] or masks.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"masks must have shape [B, R, H, W] matching images x [B, C, H, W] = {list(x.shape)} in B, H "
                         f"and W, i.e. [{x.shape[0] if x.dim() else '?'}, R, {', '.join(map(str, x.shape[-2:]))}]; "
                         f"got masks of shape {list(masks.shape)}")


def _bezier(n: int, k: int, size: int, g: torch.Generator) -> Tensor:
    """``[n, k, 2]`` points along a quadratic Bezier from one image border region to the opposite one."""
    p0 = torch.rand(n, 2, generator=g) * torch.tensor([0.2, 1.0]) * (size - 1)
    p2 = (torch.tensor([0.8, 0.0]) + torch.rand(n, 2, generator=g) * torch.tensor([0.2, 1.0])) * (size - 1)
    p1 = (0.2 + 0.6 * torch.rand(n, 2, generator=g)) * (size - 1)
    flip = torch.rand(n, generator=g) < 0.5  # left-right or top-bottom
    p0, p1, p2 = (torch.where(flip[:, None], p.flip(-1), p) for p in (p0, p1, p2))
    t = torch.linspace(0, 1, k)[None, :, None]
    return (1 - t) ** 2 * p0[:, None] + 2 * (1 - t) * t * p1[:, None] + t ** 2 * p2[:, None]


def _distance(points: Tensor, keep: Tensor, size: int) -> Tensor:
    """Distance ``[n, H, W]`` from each pixel centre to the kept points ``points [n, P, 2]`` (``keep [n, P]``)."""
    ii, jj = torch.meshgrid(torch.arange(size, dtype=points.dtype), torch.arange(size, dtype=points.dtype), indexing="ij")
    pix = torch.stack([ii, jj], -1).reshape(1, -1, 1, 2)
    d = (pix - points[:, None]).norm(dim=-1)  # [n, HW, P]
    d = torch.where(keep[:, None], d, torch.full_like(d, float("inf")))
    return d.amin(-1).reshape(-1, size, size)


def make_rater_data(num_images: int, size: int, generator: torch.Generator, num_raters: int = 4,
                    num_curves: int = 1, width: float = 0.75, rater_widths: tuple[float, float] = (0.5, 1.15),
                    shift: float = 0.5, miss_prob: float = 0.15, segments: int = 4, contrast: float = 1.0,
                    noise: float = 0.35) -> dict[str, Tensor]:
    """``num_images`` images ``size x size`` with ``num_curves`` thin curves and ``num_raters`` annotations.

    Returns ``x [N, 1, H, W]``, ``masks [N, R, H, W]``, ``gt [N, H, W]`` and ``rater_width [R]``.
    Rater ``r``'s half-width is ``linspace(*rater_widths)[r]`` (+- 0.1 per image), its drawing is shifted by
    ``U(-shift, shift)^2`` pixels, and it misses each curve segment with probability ``miss_prob`` (never all).
    """
    check_range("num_images", num_images, 1)
    check_range("size", size, 8)
    check_range("num_raters", num_raters, 1)
    check_range("num_curves", num_curves, 1)
    check_range("width", width, 0.0, low_open=True)
    check_range("miss_prob", miss_prob, 0.0, 1.0, high_open=True)
    check_range("segments", segments, 1)
    check_range("shift", shift, 0.0)
    check_range("noise", noise, 0.0)
    lo, hi = rater_widths
    check_range("rater_widths[0]", lo, 0.0, low_open=True)
    check_range("rater_widths[1]", hi, lo)
    g, n, s, r = generator, num_images, size, num_raters
    k = 8 * size  # points per curve (about 3 per pixel of length)
    pts = torch.cat([_bezier(n, k, s, g) for _ in range(num_curves)], 1)  # [n, C*k, 2]
    seg = torch.cat([torch.arange(k) * segments // k + c * segments for c in range(num_curves)])  # [C*k]
    every = torch.ones(n, pts.shape[1], dtype=torch.bool)
    d_true = _distance(pts, every, s)
    gt = (d_true < width).float()
    x = contrast * torch.exp(-d_true ** 2 / (2 * 0.6 ** 2)) + noise * torch.randn(n, s, s, generator=g)
    rw = torch.linspace(lo, hi, r)
    masks = []
    for i in range(r):
        miss = torch.rand(n, segments * num_curves, generator=g) < miss_prob
        miss[miss.all(-1), 0] = False  # a rater draws at least one segment
        keep = ~miss[:, seg]
        off = (2 * torch.rand(n, 1, 2, generator=g) - 1) * shift
        w = rw[i] + 0.1 * (2 * torch.rand(n, 1, 1, generator=g) - 1)
        masks.append((_distance(pts + off, keep, s) < w).float())
    return {"x": x[:, None], "masks": torch.stack(masks, 1), "gt": gt, "rater_width": rw}


class RaterDataModule(InMemoryDataModule):
    """Thin-structure images with several annotators' masks (``x``, ``masks``, ``gt``) from :func:`make_rater_data`.

    Args:
        num_images: images in all (split train/val/test). size: side ``H = W``. num_raters: annotators ``R``.
        num_curves, width, rater_widths, shift, miss_prob, segments, contrast, noise: see :func:`make_rater_data`.
    """

    def __init__(self, num_images: int = 1000, size: int = 24, num_raters: int = 4, num_curves: int = 1,
                 width: float = 0.75, rater_widths: list[float] = (0.5, 1.15), shift: float = 0.5,
                 miss_prob: float = 0.15, segments: int = 4, contrast: float = 1.0, noise: float = 0.35,
                 batch_size: int = 16, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.kwargs = dict(num_raters=num_raters, num_curves=num_curves, width=width,
                           rater_widths=tuple(float(v) for v in rater_widths), shift=shift, miss_prob=miss_prob,
                           segments=segments, contrast=contrast, noise=noise)
        self.num_images, self.size = num_images, size
        make_rater_data(1, size, torch.Generator().manual_seed(0), **self.kwargs)  # validate arguments up front

    def generate(self) -> dict[str, Tensor]:
        data = make_rater_data(self.num_images, self.size, self.generator(), **self.kwargs)
        data.pop("rater_width")
        return data
