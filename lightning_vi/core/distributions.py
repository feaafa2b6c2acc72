"""Thin helpers over ``torch.distributions`` (no re-implementations of densities)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, Normal

LOG_2PI = math.log(2 * math.pi)


def diag_normal(mu: Tensor, log_var: Tensor, event_dims: int = 1) -> Independent:
    """Diagonal Gaussian with ``event_dims`` trailing event dimensions."""
    return Independent(Normal(mu, torch.exp(0.5 * log_var)), event_dims)


def standard_normal_like(mu: Tensor, event_dims: int = 1) -> Independent:
    return Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), event_dims)


def likelihood(kind: str, params: Tensor, event_dims: int, log_std: Tensor | None = None) -> Independent:
    """Observation model p(x|z): ``"gaussian"`` (mean=params, shared log-std) or ``"bernoulli"`` (logits)."""
    if kind == "gaussian":
        std = torch.exp(log_std).expand_as(params) if log_std is not None else torch.ones_like(params)
        return Independent(Normal(params, std), event_dims)
    if kind == "bernoulli":
        # Targets in [0, 1] (grey levels) are allowed, as in the usual binary cross-entropy VAE loss.
        return Independent(Bernoulli(logits=params, validate_args=False), event_dims)
    raise ValueError(f"likelihood={kind!r} is not allowed; choose one of ['gaussian', 'bernoulli']")


def gaussian_kl_per_dim(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) per latent dimension (Kingma & Welling 2014, App. B)."""
    return 0.5 * (mu.pow(2) + log_var.exp() - 1.0 - log_var)
