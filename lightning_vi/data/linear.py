"""Linear-Gaussian data: probabilistic PCA (Tipping & Bishop 1999) with a controlled spectrum.

``x = W z + mu + sigma * eps`` with ``z, eps ~ N(0, I)``. The maximum log-likelihood of PPCA has a
closed form (Tipping & Bishop 1999, Eq. 4 and 7-8), the oracle for linear VAEs (Lucas et al. 2019).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_vi.data.base import InMemoryDataModule


def ppca_data(n: int, scales: list[float], dim: int, sigma: float, generator: torch.Generator) -> dict[str, Tensor]:
    """``n`` samples in ``dim`` dims whose signal directions (orthonormal) have std ``scales``."""
    q = torch.linalg.qr(torch.randn(dim, dim, generator=generator)).Q[:, : len(scales)]
    w = q * torch.tensor(scales)
    z = torch.randn(n, len(scales), generator=generator)
    x = z @ w.T + sigma * torch.randn(n, dim, generator=generator)
    return {"x": x, "z": z}


def ppca_max_loglik(x: Tensor, latent_dim: int) -> float:
    """Closed-form maximum of the PPCA mean log-likelihood per sample (Tipping & Bishop 1999).

    With sample covariance eigenvalues ``l_1 >= ... >= l_d``: ``sigma^2 = mean(l_{q+1..d})`` and
    ``C = W W^T + sigma^2 I`` has eigenvalues ``max(l_i, sigma^2)``; the mean log-likelihood is
    ``-d/2 log 2 pi - 1/2 log|C| - 1/2 tr(C^-1 S)``.
    """
    x = x.double()
    d = x.shape[1]
    s = torch.cov(x.T, correction=0)
    lam = torch.linalg.eigvalsh(s).flip(0)
    sigma2 = lam[latent_dim:].mean()
    c_eig = torch.cat([torch.maximum(lam[:latent_dim], sigma2), sigma2.repeat(d - latent_dim)])
    return float(-0.5 * d * math.log(2 * math.pi) - 0.5 * c_eig.log().sum() - 0.5 * (lam / c_eig).sum())


class PPCADataModule(InMemoryDataModule):
    """PPCA data ``x`` [N, dim] with signal stds ``scales`` and noise ``sigma``."""

    def __init__(self, n: int = 5000, dim: int = 10, scales: list[float] = (3.0, 2.0, 1.0), sigma: float = 0.5,
                 batch_size: int = 256, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.n, self.dim, self.scales, self.sigma = n, dim, list(scales), sigma

    def generate(self) -> dict[str, Tensor]:
        return ppca_data(self.n, self.scales, self.dim, self.sigma, self.generator())
