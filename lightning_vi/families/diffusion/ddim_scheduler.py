"""DDIM step (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12 and Eq. 16).

One step from ``t`` to ``prev = t - T // steps`` (diffusers' ``DDIMScheduler`` convention)::

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)     (Eq. 16)

``eta = 0`` is the deterministic DDIM; ``eta = 1`` recovers DDPM's variance. ``abar_prev = 1`` when
``prev < 0`` (``set_alpha_to_one``). Timestep spacings, as in diffusers (and Lin et al. 2024, Table 2):

- ``leading``: ``arange(steps) * (T // steps)``, reversed (does not reach ``T - 1``);
- ``trailing``: ``round(arange(T, 0, -T / steps)) - 1`` (starts at ``T - 1``);
- ``linspace``: ``round(linspace(0, T - 1, steps))``, reversed.

Run it with :func:`~lightning_vi.families.diffusion.sample_loop.sample_loop`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.families.diffusion.sample_loop import check_steps, randn
from lightning_vi.families.diffusion.schedules import NoiseSchedule

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_train_timesteps: int, steps: int, spacing: str = "leading") -> Tensor:
    """Descending int64 timesteps of the named spacing (diffusers' ``set_timesteps``)."""
    check_choice("timestep_spacing", spacing, SPACINGS)
    check_steps(steps, num_train_timesteps)
    T = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ts = (np.arange(0, steps) * (T // steps)).round()[::-1].copy().astype(np.int64)
    else:
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    return torch.from_numpy(ts)


class DDIMScheduler:
    """DDIM steps over ``steps`` timesteps of ``schedule`` (Eq. 12, 16).

    Args:
        schedule: the trained model's :class:`NoiseSchedule`. steps: reverse steps.
        eta: 0 = deterministic DDIM, 1 = DDPM variance. spacing: one of ``SPACINGS``.
        clip_sample: clamp ``x0_hat`` to ``[-clip_sample, clip_sample]`` (and recompute ``eps_hat``).
    """

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0, spacing: str = "leading",
                 clip_sample: float | None = None) -> None:
        check_range("eta", eta, 0.0)
        self.schedule, self.eta, self.clip_sample = schedule, eta, clip_sample
        self.timesteps: list[int] = ddim_timesteps(schedule.num_train_timesteps, steps, spacing).tolist()
        self.ratio = schedule.num_train_timesteps // steps

    def step(self, model_output: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x_prev`` from ``x_t`` (Eq. 12), plus ``sigma z`` when ``eta > 0``."""
        abar = self.schedule.alphas_cumprod
        prev = t - self.ratio
        a_t = abar[t]
        a_prev = abar[prev] if prev >= 0 else torch.ones((), device=abar.device)
        x0, eps = self.schedule.split(model_output, x_t, t)
        if self.clip_sample is not None:
            x0 = x0.clamp(-self.clip_sample, self.clip_sample)
            eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if self.eta > 0:
            x = x + sigma * randn(x.shape, generator, like=x)
        return x
