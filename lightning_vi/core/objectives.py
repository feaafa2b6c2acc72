"""Variational objectives as functions of log-densities and samples.

Each returns named terms; families sum the weighted ones. Conventions: ``log_w`` holds log importance
weights ``log p(x, z_k) - log q(z_k | x)`` with shape ``[K, B]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def elbo_terms(log_px_z: Tensor, kl: Tensor) -> dict[str, Tensor]:
    """Negative ELBO split into reconstruction and KL (Kingma & Welling 2014, Eq. 3), batch means.

    ``log_px_z`` and ``kl`` have shape ``[B]``; returns ``recon = -E log p(x|z)``, ``kl`` and
    ``elbo = E log p(x|z) - KL``.
    """
    recon = -log_px_z.mean()
    kl_mean = kl.mean()
    return {"recon": recon, "kl": kl_mean, "elbo": -(recon + kl_mean).detach()}


def iwae_bound(log_w: Tensor) -> Tensor:
    """Importance-weighted bound log (1/K) sum_k w_k per example (Burda et al. 2016, Eq. 8); ``[K, B] -> [B]``."""
    if log_w.ndim < 1 or log_w.shape[0] < 1:
        raise ValueError(f"log_w must have shape [K, B] with K >= 1, got {tuple(log_w.shape)}")
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])
