"""DDIM sampling (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12 and Eq. 16).

One step from ``t`` to ``prev = t - T // steps`` (diffusers' ``DDIMScheduler`` convention)::

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)     (Eq. 16)

``eta = 0`` is the deterministic DDIM; ``eta = 1`` recovers DDPM's variance. ``abar_prev = 1`` when
``prev < 0`` (``set_alpha_to_one``). Timestep spacings, as in diffusers (and Lin et al. 2024, Table 2):

- ``leading``: ``arange(steps) * (T // steps)``, reversed (does not reach ``T - 1``);
- ``trailing``: ``round(arange(T, 0, -T / steps)) - 1`` (starts at ``T - 1``);
- ``linspace``: ``round(linspace(0, T - 1, steps))``, reversed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.families.diffusion.ddpm_sampler import ModelFn, check_steps
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


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: Tensor, steps: int = 50, eta: float = 0.0,
                spacing: str = "leading", generator: torch.Generator | None = None,
                clip_sample: float | None = None) -> Tensor:
    """Run DDIM from ``x_T``; ``model_fn(x_t, t[B])`` returns the network output."""
    check_range("eta", eta, 0.0)
    T = schedule.num_train_timesteps
    ratio = T // steps
    abar = schedule.alphas_cumprod
    x = x_T
    for t in ddim_timesteps(T, steps, spacing).tolist():
        prev = t - ratio
        a_t = abar[t]
        a_prev = abar[prev] if prev >= 0 else torch.ones((), device=abar.device)
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0, eps = schedule.split(model_fn(x, tb), x, t)
        if clip_sample is not None:
            x0 = x0.clamp(-clip_sample, clip_sample)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x
