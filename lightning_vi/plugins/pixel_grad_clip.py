"""Pixel-wise gradient clipping (PGC; Pan et al. 2024, "Enhancing High-Resolution 3D Generation through
Pixel-wise Gradient Clipping", Sec. 3.2).

The gradient arriving at a chosen tensor ``t`` (e.g. a rendered image [B, C, H, W]) is clipped per pixel,
keeping its direction:

    g_p <- g_p * min(1, threshold / ||g_p||_2)      with ||g_p|| the norm over the channel dim at pixel p

and then flows on through the graph (a tensor hook, so upstream parameters see the clipped gradient).
``target`` names an output of the family's objective (e.g. ``logits``, ``features``, a decoded image) or a
batch entry that requires grad (``x`` of a differentiable renderer); ``channel_dim`` is the axis the
per-pixel norm runs over (1 for [B, C, H, W]; for [B, D] vectors every entry is its own pixel when
``channel_dim=None``). :func:`clip_pixel_grad` is the same operation for any tensor.

Defaults: ``threshold=0.1``, ``channel_dim=1``, ``target="features"`` (the classifier's feature vector).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


def pixel_clip(g: Tensor, threshold: float, channel_dim: int | None = 1) -> Tensor:
    """``g`` with each pixel's (channel-dim) norm clipped to ``threshold``, direction kept."""
    norm = g.abs() if channel_dim is None else g.norm(dim=channel_dim, keepdim=True)
    return g * (threshold / norm.clamp_min(1e-12)).clamp(max=1.0)


def clip_pixel_grad(t: Tensor, threshold: float, channel_dim: int | None = 1) -> Tensor:
    """Register PGC on ``t`` (a non-leaf tensor in the graph); returns ``t``."""
    t.register_hook(lambda g: pixel_clip(g, threshold, channel_dim))
    return t


@PLUGINS.register("pixel_grad_clip")
class PixelGradClip(Plugin):
    """Pixel-wise gradient clipping on a chosen tensor, keeping each pixel's gradient direction.

    Args:
        target: name of an objective output or batch entry whose gradient is clipped.
        threshold: max per-pixel gradient norm, > 0.
        channel_dim: dimension the per-pixel norm runs over (None = element-wise).
    """

    order = 28

    def __init__(self, target: str = "features", threshold: float = 0.1, channel_dim: int | None = 1) -> None:
        check_range("threshold", threshold, 0.0, low_open=True)
        if not isinstance(target, str) or not target:
            raise ValueError(f"target={target!r} must name an objective output or batch entry")
        self.target, self.threshold, self.channel_dim = target, float(threshold), channel_dim

    def extra_terms(self, outputs: dict[str, Tensor], batch: Any, module: Any) -> dict[str, Tensor]:
        t = outputs.get(self.target)
        if t is None and isinstance(batch, dict):
            t = batch.get(self.target)
        if not isinstance(t, Tensor):
            raise KeyError(f"pixel_grad_clip target={self.target!r} is neither an output of "
                           f"{type(module).__name__}.objective (outputs: {sorted(outputs)}) nor a batch entry")
        if not t.requires_grad:
            raise ValueError(f"pixel_grad_clip target={self.target!r} does not require grad; no gradient flows "
                             "through it, so there is nothing to clip")
        clip_pixel_grad(t, self.threshold, self.channel_dim)
        return {}
