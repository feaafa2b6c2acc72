"""Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6 / Alg. 1-2).

Training drops the condition with probability ``p_uncond`` (replaced by a null token, Alg. 1 line 3);
sampling combines the two predictions: ``out = uncond + w * (cond - uncond)``. ``w = 0`` is the
unconditional model, ``w = 1`` the conditional one, ``w > 1`` extrapolates toward the condition.
(Ho & Salimans write ``(1 + w) cond - w uncond``; our ``w`` is their ``1 + w``, as in diffusers.)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range


def drop_condition(y: Tensor, p_uncond: float, null_value: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by ``null_value`` with probability ``p_uncond`` (vectorised)."""
    check_range("p_uncond", p_uncond, 0.0, 1.0)
    if p_uncond == 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device="cpu").to(y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, null_value), y)


def guided(model_fn: Callable[[Tensor, Tensor, Tensor], Tensor], y: Tensor, null_value: int | Tensor,
           scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """``(x, t) -> uncond + scale * (cond - uncond)``, both passes in one batched call.

    ``y`` is the condition (labels, an indicator, or a conditioning tensor such as DiffuseVAE's ``x_hat``);
    ``null_value`` the null token (an int) or the null condition (a tensor shaped like ``y``)."""
    check_range("guidance_scale", scale, 0.0)
    if scale == 1.0:
        return lambda x, t: model_fn(x, t, y)
    null = null_value if isinstance(null_value, Tensor) else torch.full_like(y, null_value)
    if scale == 0.0:
        return lambda x, t: model_fn(x, t, null)

    def fn(x: Tensor, t: Tensor) -> Tensor:
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return fn
