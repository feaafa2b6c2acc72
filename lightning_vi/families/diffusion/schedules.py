"""Noise schedules and prediction-type conversions for Gaussian diffusion (Ho et al. 2020, "DDPM").

Forward process (DDPM Eq. 4): ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` with
``abar_t = prod_{s<=t} (1 - beta_s)``; ``add_noise`` draws from it.

Beta schedules (names and numbers as in diffusers' ``DDPMScheduler``):

- ``linear``: ``beta = linspace(beta_start, beta_end, T)`` (DDPM Sec. 4).
- ``scaled_linear``: ``beta = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`` (latent diffusion).
- ``squaredcos_cap_v2``: cosine schedule of Nichol & Dhariwal (2021, Eq. 17):
  ``abar(t) = cos(((t/T + s) / (1 + s)) * pi / 2) ** 2`` with s = 0.008 and
  ``beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999)``.

Prediction types: ``epsilon`` (the noise), ``v`` (Salimans & Ho 2022, Eq. 6-7:
``v = sqrt(abar) eps - sqrt(1 - abar) x0``) and ``x0`` (``sample`` in diffusers).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v", "x0")


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's alpha-bar function of continuous time ``t`` in [0, 1]."""
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float = 1e-4,
               beta_end: float = 0.02, max_beta: float = 0.999) -> Tensor:
    """The ``[T]`` float64 betas of the named schedule."""
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if not isinstance(num_train_timesteps, int) or num_train_timesteps <= 0:
        raise ValueError(f"num_train_timesteps={num_train_timesteps!r} is out of range; allowed: integers >= 1")
    T = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float64) ** 2
    i = torch.arange(T, dtype=torch.float64)
    ratio = cosine_alpha_bar((i + 1) / T) / cosine_alpha_bar(i / T)
    return torch.clamp(1 - ratio, max=max_beta)


class NoiseSchedule(torch.nn.Module):
    """A discrete-time schedule: ``betas``, ``alphas``, ``alphas_cumprod`` (buffers, float32) and the
    conversions between ``x_t``, ``x_0``, the noise and ``v``.

    Args:
        num_train_timesteps: T (>= 1). beta_schedule: one of ``BETA_SCHEDULES``.
        beta_start, beta_end: ends of the (scaled) linear schedules.
        prediction_type: what the network predicts, one of ``PREDICTION_TYPES``.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, prediction_type: str = "epsilon") -> None:
        super().__init__()
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        betas = make_betas(beta_schedule, num_train_timesteps, beta_start, beta_end)
        check_range("beta_start", beta_start, 0.0, 1.0, low_open=True, high_open=True)
        check_range("beta_end", beta_end, 0.0, 1.0, low_open=True, high_open=True)
        self.num_train_timesteps, self.beta_schedule, self.prediction_type = num_train_timesteps, beta_schedule, prediction_type
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas", (1 - betas).float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    # -- helpers ---------------------------------------------------------------------------------
    def _abar(self, t: Tensor | int, like: Tensor) -> Tensor:
        """``abar_t`` broadcast to ``like``'s shape (``t`` is ``[B]`` or a scalar)."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device)
        a = self.alphas_cumprod[t.long()].to(like)
        return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a

    def snr(self, t: Tensor | int) -> Tensor:
        """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` (Kingma et al. 2021)."""
        a = self.alphas_cumprod[torch.as_tensor(t, device=self.alphas_cumprod.device).long()]
        return a / (1 - a)

    def sample_timesteps(self, n: int, device: torch.device | None = None) -> Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), device=device)

    # -- forward process -------------------------------------------------------------------------
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (DDPM Eq. 4)."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022, Eq. 6)."""
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def target(self, x0: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """The regression target of the configured prediction type."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v":
            return self.velocity(x0, noise, t)
        return x0

    def split(self, model_output: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """``(x0_hat, eps_hat)`` from a network output of the configured prediction type."""
        a = self._abar(t, x_t)
        sa, s1a = a.sqrt(), (1 - a).sqrt()
        if self.prediction_type == "epsilon":
            eps = model_output
            return (x_t - s1a * eps) / sa, eps
        if self.prediction_type == "v":  # x0 = sqrt(a) x_t - sqrt(1-a) v ; eps = sqrt(a) v + sqrt(1-a) x_t
            return sa * x_t - s1a * model_output, sa * model_output + s1a * x_t
        x0 = model_output
        return x0, (x_t - sa * x0) / s1a

    def extra_repr(self) -> str:
        return f"T={self.num_train_timesteps}, beta_schedule={self.beta_schedule!r}, prediction_type={self.prediction_type!r}"
