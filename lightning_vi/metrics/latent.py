"""Latent-space diagnostics as torchmetrics ``Metric`` objects (accumulate over batches, sync across devices).

* Active units (Burda et al. 2016, Sec. 5.2): ``Var_x E_q[z_d | x] > threshold`` (0.01).
* Per-dimension KL ``E_x KL(q(z_d|x) || N(0, 1))`` and the number of collapsed dims (KL < ``kl_threshold``).
* Mutual information ``I(x; z) = E_x KL(q(z|x) || p(z)) - KL(q(z) || p(z))`` with the aggregate
  posterior ``q(z)`` replaced by the Gaussian of its moments (an upper estimate, since that Gaussian
  has the largest entropy at those moments).
* Bonheme & Grzes 2023 (P09, "Be More Active!"): correlation matrices of mean representations
  ``E_q[z|x]`` and of sampled representations ``z ~ q(z|x)``; passive dims = not active.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_vi.core.distributions import gaussian_kl_per_dim


def _corr(s1: Tensor, s2: Tensor, n: Tensor) -> Tensor:
    mean = s1 / n
    cov = s2 / n - mean[:, None] * mean[None, :]
    std = cov.diagonal().clamp_min(1e-12).sqrt()
    return cov / (std[:, None] * std[None, :])


class LatentStatistics(Metric):
    """Accumulates posterior means/log-variances ``[B, D]``; ``compute()`` returns a dict of diagnostics."""

    full_state_update = False

    def __init__(self, latent_dim: int, au_threshold: float = 0.01, kl_threshold: float = 0.01, **kw) -> None:
        super().__init__(**kw)
        if latent_dim < 1:
            raise ValueError(f"latent_dim={latent_dim!r} is out of range; allowed: [1, inf)")
        self.latent_dim, self.au_threshold, self.kl_threshold = latent_dim, au_threshold, kl_threshold
        d = latent_dim
        self.add_state("n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        for name, shape in (("mu_sum", (d,)), ("mu_outer", (d, d)), ("z_sum", (d,)), ("z_outer", (d, d)),
                            ("var_sum", (d,)), ("kl_sum", (d,))):
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: Tensor, log_var: Tensor) -> None:
        if mu.ndim != 2 or mu.shape[1] != self.latent_dim or mu.shape != log_var.shape:
            raise ValueError(f"mu/log_var have shapes {tuple(mu.shape)}/{tuple(log_var.shape)}; "
                             f"expected (B, {self.latent_dim}) both")
        mu, log_var = mu.detach().double(), log_var.detach().double()
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp()
        self.n += mu.shape[0]
        self.mu_sum += mu.sum(0)
        self.mu_outer += mu.T @ mu
        self.z_sum += z.sum(0)
        self.z_outer += z.T @ z
        self.var_sum += log_var.exp().sum(0)
        self.kl_sum += gaussian_kl_per_dim(mu, log_var).sum(0)

    def compute(self) -> dict[str, Tensor]:
        n = self.n
        mean = self.mu_sum / n
        cov_mu = self.mu_outer / n - mean[:, None] * mean[None, :]
        au_var = cov_mu.diagonal()
        active = au_var > self.au_threshold
        kl = self.kl_sum / n
        # moments of the aggregate posterior: Cov = Cov(mu) + E[diag var]
        cov_q = cov_mu + torch.diag(self.var_sum / n)
        d = self.latent_dim
        kl_agg = 0.5 * (torch.trace(cov_q) + mean.pow(2).sum() - d - torch.linalg.slogdet(cov_q).logabsdet)
        return {
            "active_units": active.sum(), "active": active, "au_variance": au_var,
            "kl_per_dim": kl, "collapsed_dims": (kl < self.kl_threshold).sum(),
            "mutual_information": (kl.sum() - kl_agg).clamp_min(0.0),
            "corr_mean": _corr(self.mu_sum, self.mu_outer, n), "corr_sampled": _corr(self.z_sum, self.z_outer, n),
        }


class ActiveUnits(LatentStatistics):
    """Number of active latent units (variance of posterior means above ``au_threshold``)."""

    def compute(self) -> Tensor:
        return super().compute()["active_units"]


class CollapsedDims(LatentStatistics):
    """Number of latent dims whose mean KL to the prior is below ``kl_threshold``."""

    def compute(self) -> Tensor:
        return super().compute()["collapsed_dims"]


class MutualInformation(LatentStatistics):
    """Estimate of I(x; z) under the encoder (Gaussian-moment aggregate posterior)."""

    def compute(self) -> Tensor:
        return super().compute()["mutual_information"]


def passive_correlation(stats: dict[str, Tensor]) -> tuple[float, float]:
    """P09's statistic: for each passive dim its largest |correlation| with another dim, averaged over
    passive dims, in mean and in sampled representations (``nan`` without passive dims)."""
    passive = ~stats["active"]
    if not bool(passive.any()):
        return float("nan"), float("nan")
    d = passive.numel()
    off = ~torch.eye(d, dtype=torch.bool, device=passive.device)
    def stat(corr: Tensor) -> float:
        c = corr.abs().masked_fill(~off, 0.0)
        return float(c[passive].max(1).values.mean())

    return stat(stats["corr_mean"]), stat(stats["corr_sampled"])


def passive_pair_correlation(stats: dict[str, Tensor]) -> tuple[float, float]:
    """Mean |correlation| over pairs of distinct passive dims, in mean and in sampled representations
    (P09, Sec. 4: passive variables co-vary in the means; ``nan`` with fewer than two passive dims)."""
    passive = ~stats["active"]
    k = int(passive.sum())
    if k < 2:
        return float("nan"), float("nan")
    off = ~torch.eye(k, dtype=torch.bool, device=passive.device)

    def stat(corr: Tensor) -> float:
        return float(corr.abs()[passive][:, passive][off].mean())

    return stat(stats["corr_mean"]), stat(stats["corr_sampled"])
