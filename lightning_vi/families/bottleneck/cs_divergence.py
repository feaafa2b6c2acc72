"""Kernel (Parzen) estimators of the Cauchy-Schwarz divergence and the closed form for Gaussians.

``D_CS(p || q) = -log( (int p q)^2 / (int p^2 int q^2) )`` (Principe 2010; Yu et al. 2024, "Cauchy-Schwarz
Divergence Information Bottleneck for Regression", Eq. 4). With a Gaussian kernel
``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))`` each integral is a mean of a Gram matrix (Eq. 5):
``D_CS ~ log mean K_xx + log mean K_yy - 2 log mean K_xy``. The estimator converges to the CS divergence of
``p`` and ``q`` each smoothed by ``N(0, sigma^2/2 I)``, i.e. to the true value as ``sigma -> 0``.

Also: CS mutual information ``I_CS(x; t) = D_CS(p(x, t) || p(x) p(t))`` (Eq. 9) and the conditional CS
divergence ``D_CS(p(y|t) || q(yhat|t))`` for paired samples (Yu et al. 2023, Eq. 17), the two terms of CS-IB.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range


def gaussian_gram(a: Tensor, b: Tensor, sigma: float) -> Tensor:
    """``exp(-|a_i - b_j|^2 / (2 sigma^2))`` for rows of ``a`` [N, D] and ``b`` [M, D]."""
    check_range("sigma", sigma, 0.0, low_open=True)
    a, b = a.flatten(1), b.flatten(1)
    d2 = (a.pow(2).sum(-1)[:, None] + b.pow(2).sum(-1)[None, :] - 2 * a @ b.T).clamp_min(0)
    return torch.exp(-d2 / (2 * sigma ** 2))


def _self_mean(k: Tensor, exclude_diagonal: bool) -> Tensor:
    if not exclude_diagonal:
        return k.mean()
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def cs_divergence(x: Tensor, y: Tensor, sigma: float = 1.0, exclude_diagonal: bool = True) -> Tensor:
    """Kernel estimate of ``D_CS(p || q)`` from samples ``x ~ p`` [N, D] and ``y ~ q`` [M, D].

    ``exclude_diagonal`` drops the ``i = j`` terms of ``K_xx`` and ``K_yy`` (U-statistics; removes the
    ``O(1 / (N sigma^D))`` upward bias of the plain Gram means used in the paper's code)."""
    return (_self_mean(gaussian_gram(x, x, sigma), exclude_diagonal).log()
            + _self_mean(gaussian_gram(y, y, sigma), exclude_diagonal).log()
            - 2 * gaussian_gram(x, y, sigma).mean().log())


def _log_gauss_at(diff: Tensor, cov: Tensor) -> Tensor:
    d = diff.shape[-1]
    return -0.5 * (d * math.log(2 * math.pi) + torch.logdet(cov) + diff @ torch.linalg.solve(cov, diff))


def gaussian_cs_divergence(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """Closed form ``D_CS(N(mu1, cov1) || N(mu2, cov2))`` using ``int N1 N2 = N(mu1; mu2, cov1 + cov2)``."""
    zero = torch.zeros_like(mu1)
    return (-2 * _log_gauss_at(mu1 - mu2, cov1 + cov2) + _log_gauss_at(zero, 2 * cov1)
            + _log_gauss_at(zero, 2 * cov2))


def cs_mutual_information(x: Tensor, t: Tensor, sigma_x: float = 1.0, sigma_t: float = 1.0) -> Tensor:
    """``I_CS(x; t)``: CS divergence between the joint and the product of marginals (product kernel)."""
    kx, kt = gaussian_gram(x, x, sigma_x), gaussian_gram(t, t, sigma_t)
    joint = (kx * kt).mean()
    marg = kx.mean() * kt.mean()
    cross = (kx.mean(1) * kt.mean(1)).mean()
    return joint.log() + marg.log() - 2 * cross.log()


def conditional_cs_divergence(y: Tensor, y_hat: Tensor, t: Tensor, sigma_y: float = 1.0,
                              sigma_t: float = 1.0) -> Tensor:
    """``D_CS(p(y|t) || q(yhat|t))`` from paired samples ``(t_i, y_i, yhat_i)`` (shared conditioning Gram)."""
    k = gaussian_gram(t, t, sigma_t)
    d2 = k.sum(1).pow(2)                                       # (sum_i K_ji)^2 per row j
    l1, l2 = gaussian_gram(y, y, sigma_y), gaussian_gram(y_hat, y_hat, sigma_y)
    l21 = gaussian_gram(y_hat, y, sigma_y)                      # [j, i] = k(yhat_j, y_i)
    term = lambda lmat: ((k * lmat).sum(1) / d2).sum().log()  # noqa: E731
    return term(l1) + term(l2) - term(l21) - term(l21.T)
