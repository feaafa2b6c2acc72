"""Thin helpers over ``torch.distributions`` (no re-implementations of densities), the one Gaussian KL
every family uses, and the observation models ("likelihood" parts) of the autoencoder families."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from lightning_vi.core.checks import check_choice, check_range

LOG_2PI = math.log(2 * math.pi)
LIKELIHOODS = ("gaussian", "bernoulli")


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
    raise ValueError(f"likelihood={kind!r} is not allowed; choose one of {list(LIKELIHOODS)}")


def gaussian_kl(mu_q: Tensor, log_var_q: Tensor, mu_p: Tensor | float | None = None,
                log_var_p: Tensor | float | None = None) -> Tensor:
    """Elementwise KL(N(mu_q, exp(log_var_q)) || N(mu_p, exp(log_var_p))) of diagonal Gaussians.

    Closed form (Kingma & Welling 2014, App. B; Bishop 2006, Eq. 1.113 per coordinate)::

        0.5 * (log_var_p - log_var_q + (exp(log_var_q) + (mu_q - mu_p)^2) / exp(log_var_p) - 1)

    ``mu_p = log_var_p = None`` is the standard normal prior, ``0.5 * (mu^2 + exp(log_var) - 1 - log_var)``.
    Prior arguments broadcast (a float prior variance, as for Bayesian layers, is allowed). Sum over the
    latent axis for the KL of the joint.
    """
    if mu_p is None and log_var_p is None:
        return 0.5 * (mu_q.pow(2) + log_var_q.exp() - 1.0 - log_var_q)
    mu_p = torch.zeros((), dtype=mu_q.dtype, device=mu_q.device) if mu_p is None else torch.as_tensor(mu_p).to(mu_q)
    log_var_p = (torch.zeros((), dtype=mu_q.dtype, device=mu_q.device) if log_var_p is None
                 else torch.as_tensor(log_var_p).to(mu_q))
    return 0.5 * (log_var_p - log_var_q + (log_var_q.exp() + (mu_q - mu_p).pow(2)) / log_var_p.exp() - 1.0)


def gaussian_kl_per_dim(mu: Tensor, log_var: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(log_var))) || N(0, I)) per latent dimension: :func:`gaussian_kl` with N(0, I)."""
    return gaussian_kl(mu, log_var)


class Likelihood(nn.Module):
    """Observation model p(x|z), the ``likelihood`` part of the autoencoder families.

    ``forward(params)`` returns the *elementwise* distribution of each pixel/coordinate (the family
    wraps it in ``Independent`` over the example's dimensions); ``mean(params)`` its mean, the
    reconstruction. Subclasses record their constructor arguments in ``_init_args`` so that
    :meth:`to_config` describes them in checkpoints.
    """

    _init_args: dict[str, Any]

    def forward(self, params: Tensor) -> Distribution:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(params) -> Distribution")

    def mean(self, params: Tensor) -> Tensor:
        return self(params).mean

    def to_config(self) -> dict[str, Any]:
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_args)}


class GaussianLikelihood(Likelihood):
    """``N(params, std^2)`` per coordinate; ``obs_std=None`` learns one shared ``log_std`` (init 0), a
    float fixes it (stored as a non-persistent buffer: it is a hyper-parameter, not a weight)."""

    def __init__(self, obs_std: float | None = None) -> None:
        super().__init__()
        self._init_args = {"obs_std": obs_std}
        if obs_std is None:
            self.log_std = nn.Parameter(torch.zeros(()))
        else:
            check_range("obs_std", obs_std, 0.0, low_open=True)
            self.register_buffer("log_std", torch.tensor(math.log(obs_std)), persistent=False)

    def forward(self, params: Tensor) -> Normal:
        return Normal(params, torch.exp(self.log_std.to(params)).expand_as(params))

    def mean(self, params: Tensor) -> Tensor:
        return params


class BernoulliLikelihood(Likelihood):
    """``Bernoulli(logits=params)``; targets in [0, 1] (grey levels) are allowed, as in the usual
    binary cross-entropy VAE loss."""

    def __init__(self) -> None:
        super().__init__()
        self._init_args = {}

    def forward(self, params: Tensor) -> Bernoulli:
        return Bernoulli(logits=params, validate_args=False)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


def make_likelihood(kind: str, obs_std: float | None = None) -> Likelihood:
    """The named observation model: ``"gaussian"`` (learned std unless ``obs_std``) or ``"bernoulli"``."""
    check_choice("likelihood", kind, LIKELIHOODS)
    return GaussianLikelihood(obs_std) if kind == "gaussian" else BernoulliLikelihood()
