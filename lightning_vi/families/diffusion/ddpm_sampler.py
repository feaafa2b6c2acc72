"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2 / Eq. 6-7), with optional step skipping.

One reverse step from ``t`` to ``prev = t - T // steps`` uses the posterior ``q(x_prev | x_t, x0_hat)``
(DDPM Eq. 6-7) with ``abar_prev`` in place of ``abar_{t-1}``; the variance is the "fixed_small"
``beta_tilde = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)``. With ``steps = T`` this is
exactly Algorithm 2; the numbers follow diffusers' ``DDPMScheduler`` (leading spacing).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from lightning_vi.families.diffusion.schedules import NoiseSchedule

ModelFn = Callable[[Tensor, Tensor], Tensor]


def check_steps(steps: int, num_train_timesteps: int) -> None:
    if not isinstance(steps, int) or steps <= 0 or steps > num_train_timesteps:
        raise ValueError(f"num_inference_steps={steps!r} is out of range; allowed: integers in [1, {num_train_timesteps}]")


def leading_timesteps(num_train_timesteps: int, steps: int) -> Tensor:
    ratio = num_train_timesteps // steps
    return (torch.arange(steps) * ratio).flip(0)


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: Tensor, steps: int | None = None,
                generator: torch.Generator | None = None, clip_sample: float | None = None) -> Tensor:
    """Run the reverse chain from ``x_T`` (pure noise) to ``x_0``.

    Args:
        model_fn: ``(x_t, t[B]) -> network output`` of ``schedule.prediction_type``.
        steps: reverse steps (default T). generator: draws the per-step noise (on CPU).
        clip_sample: clamp ``x0_hat`` to ``[-clip_sample, clip_sample]`` if given.
    """
    T = schedule.num_train_timesteps
    steps = T if steps is None else steps
    check_steps(steps, T)
    ratio = T // steps
    abar = schedule.alphas_cumprod
    x = x_T
    for t in leading_timesteps(T, steps).tolist():
        prev = t - ratio
        a_t = abar[t]
        a_prev = abar[prev] if prev >= 0 else torch.ones((), device=abar.device)
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, _ = schedule.split(model_fn(x, tb), x, t)
        if clip_sample is not None:
            x0 = x0.clamp(-clip_sample, clip_sample)
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)) * x
        if t > 0:
            var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = mean + var.sqrt() * noise
        else:
            x = mean
    return x
