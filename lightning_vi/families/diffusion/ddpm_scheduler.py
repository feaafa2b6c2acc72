"""DDPM ancestral sampling step (Ho et al. 2020, Algorithm 2 / Eq. 6-7), with optional step skipping.

One reverse step from ``t`` to ``prev = t - T // steps`` draws from the posterior ``q(x_prev | x_t, x0_hat)``
(DDPM Eq. 6-7) with ``abar_prev`` in place of ``abar_{t-1}``::

    mean = sqrt(abar_prev) beta_t / (1 - abar_t) x0_hat + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) x_t
    var  = beta_tilde = (1 - abar_prev) / (1 - abar_t) beta_t,   alpha_t = abar_t / abar_prev, beta_t = 1 - alpha_t

("fixed_small"; no noise at ``t = 0``). With ``steps = T`` this is exactly Algorithm 2; timesteps
and numbers follow diffusers' ``DDPMScheduler`` (leading spacing). Run it with
:func:`~lightning_vi.families.diffusion.sample_loop.sample_loop`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.families.diffusion.sample_loop import check_steps, randn
from lightning_vi.families.diffusion.schedules import NoiseSchedule


def leading_timesteps(num_train_timesteps: int, steps: int) -> Tensor:
    """``arange(steps) * (T // steps)``, descending."""
    check_steps(steps, num_train_timesteps)
    return (torch.arange(steps) * (num_train_timesteps // steps)).flip(0)


class DDPMScheduler:
    """Ancestral DDPM steps over ``steps`` leading timesteps of ``schedule``.

    Args:
        schedule: the trained model's :class:`NoiseSchedule`. steps: reverse steps (default T).
        clip_sample: clamp ``x0_hat`` to ``[-clip_sample, clip_sample]`` if given.
    """

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, clip_sample: float | None = None) -> None:
        T = schedule.num_train_timesteps
        steps = T if steps is None else steps
        self.schedule, self.clip_sample = schedule, clip_sample
        self.ratio = T // steps if isinstance(steps, int) and steps > 0 else 0
        self.timesteps: list[int] = leading_timesteps(T, steps).tolist()

    def abar_prev(self, t: int) -> Tensor:
        abar = self.schedule.alphas_cumprod
        prev = t - self.ratio
        return abar[prev] if prev >= 0 else torch.ones((), device=abar.device)

    def step(self, model_output: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x_prev ~ q(x_prev | x_t, x0_hat)`` (Eq. 6-7)."""
        a_t, a_prev = self.schedule.alphas_cumprod[t], self.abar_prev(t)
        x0, _ = self.schedule.split(model_output, x_t, t)
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        mean = (a_prev.sqrt() * beta_t / (1 - a_t)) * x0 + (alpha_t.sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
        if t == 0:
            return mean
        var = ((1 - a_prev) / (1 - a_t) * beta_t).clamp(min=1e-20)
        return mean + var.sqrt() * randn(x_t.shape, generator, like=x_t)
