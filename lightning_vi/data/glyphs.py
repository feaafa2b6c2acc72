"""Procedural glyphs: many exchangeable classes for few-shot learning (an Omniglot stand-in, generated).

Each class is a random glyph of ``strokes`` line segments with endpoints in the unit square. An example of a
class redraws its glyph under a random similarity transform (rotation, scale, shift) with endpoint jitter and
pixel noise. Classes are drawn i.i.d. from one distribution, as meta learning assumes of its tasks, so any
split of the class ids into meta-train and meta-test classes is a fair one. Rendering is vectorised over all
examples and strokes (distance of each pixel centre to each segment).
"""

from __future__ import annotations



import torch
from torch import Tensor

from lightning_vi.core.checks import check_range


def render_strokes(p0: Tensor, p1: Tensor, image_size: int, width: float = 0.07) -> Tensor:
    """Segments ``p0 -> p1`` [N, S, 2] in [0, 1]^2 drawn as ``[N, 1, size, size]`` images in [0, 1]."""
    g = (torch.arange(image_size, dtype=p0.dtype) + 0.5) / image_size
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).view(1, 1, -1, 2)  # [1, 1, P, 2] (x, y)
    a, ab = p0.unsqueeze(2), (p1 - p0).unsqueeze(2)  # [N, S, 1, 2]
    t = ((grid - a) * ab).sum(-1) / ab.pow(2).sum(-1).clamp_min(1e-8)
    dist = (a + t.clamp(0, 1).unsqueeze(-1) * ab - grid).norm(dim=-1)  # [N, S, P]
    img = torch.exp(-(dist / width).pow(2)).amax(1)
    return img.view(-1, 1, image_size, image_size)


def glyph_data(num_classes: int = 100, per_class: int = 40, strokes: int = 3, image_size: int = 10,
               jitter: float = 0.04, rotation: float = 0.2, noise: float = 0.05, seed: int = 0) -> dict[str, Tensor]:
    """``{"x": [C * per_class, 1, S, S], "y": [C * per_class]}`` of procedural glyph classes."""
    check_range("num_classes", num_classes, 1)
    check_range("per_class", per_class, 1)
    check_range("strokes", strokes, 1)
    check_range("image_size", image_size, 4)
    g = torch.Generator().manual_seed(seed)
    templates = 0.15 + 0.7 * torch.rand(num_classes, strokes, 2, 2, generator=g)  # [C, S, end, xy]
    y = torch.arange(num_classes).repeat_interleave(per_class)
    n = len(y)
    pts = templates[y] + jitter * torch.randn(n, strokes, 2, 2, generator=g)
    angle = rotation * torch.randn(n, generator=g)
    scale = 1 + 0.08 * torch.randn(n, generator=g)
    shift = 0.06 * torch.randn(n, 1, 1, 2, generator=g)
    c, s = torch.cos(angle), torch.sin(angle)
    rot = (scale.view(-1, 1, 1) * torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2))
    pts = torch.einsum("nij,nsej->nsei", rot, pts - 0.5) + 0.5 + shift
    x = render_strokes(pts[:, :, 0], pts[:, :, 1], image_size)
    x = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return {"x": x, "y": y}



