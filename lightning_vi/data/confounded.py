"""Synthetic structural causal model with a hidden confounder (VLUCI oracle data, P33).

SCM (every unit independently; ``U`` is never handed to a model)::

    U   = S + spread * e_u,  S uniform on {-1, +1}^du   unobserved confounder (bimodal; ``spread=None``: U ~ N(0, I))
    Xp  = U A + proxy_noise * e_p,  e_p ~ N(0, I)       noisy proxies of U (A: fixed loadings)
    Xc  ~ N(0, I_dc)                                    independent observed covariates
    X   = [Xp, Xc]
    T   ~ Bernoulli(sigmoid(treat_strength * sum(U) + 0.5 Xc_0))
    mu0 = sin(Xc_0) + 0.5 Xc_1 + beta0 * sum(U)
    mu1 = mu0 + 1 + 0.5 Xc_0 + (beta1 - beta0) * sum(U)
    Y_t = mu_t + outcome_noise * e_t,   Y = T Y_1 + (1 - T) Y_0

``U`` drives both ``T`` and ``Y``, so a regression of ``Y`` on ``X`` alone is confounded; the true
individual effects ``mu1 - mu0`` and both noisy potential outcomes are kept so that PEHE, ATE error
and counterfactual interval coverage can be computed.

Why a bimodal ``U`` by default: with a Gaussian ``U`` and effects linear in ``U`` the marginal
``p(Y | X, T)`` is itself Gaussian, so an outcome decoder that ignores ``U`` attains the same ELBO and
the outcome-side posterior collapses onto the treatment-side one (measured here: ``KL(q2 || q1)`` about
0.01 nats, posterior no sharper than from the proxies alone). A non-Gaussian confounder makes ``U``
identifiable from the outcome, the setting in which inferring it can help.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule


def confounded_scm(n: int, confounder_dim: int = 1, n_proxies: int = 3, n_covariates: int = 2,
                   proxy_noise: float = 1.0, treat_strength: float = 1.0, beta0: float = 1.5, beta1: float = 3.0,
                   outcome_noise: float = 0.5, spread: float | None = 0.3, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Draw ``n`` units of the SCM above. Returns ``x`` [n, n_proxies + n_covariates], ``t`` [n] (0/1 float),
    ``y`` [n], the potential outcomes ``y0``, ``y1`` [n], their noiseless means ``mu0``, ``mu1`` [n] and the
    hidden ``u`` [n, confounder_dim] (for diagnostics only)."""
    check_range("n", n, 1)
    check_range("confounder_dim", confounder_dim, 1)
    check_range("n_proxies", n_proxies, 1)
    check_range("n_covariates", n_covariates, 2)
    check_range("proxy_noise", proxy_noise, 0.0)
    check_range("outcome_noise", outcome_noise, 0.0)
    g = generator or torch.Generator().manual_seed(0)
    if spread is None:
        u = torch.randn(n, confounder_dim, generator=g)
    else:
        check_range("spread", spread, 0.0)
        signs = 2.0 * torch.randint(0, 2, (n, confounder_dim), generator=g) - 1.0
        u = signs + spread * torch.randn(n, confounder_dim, generator=g)
    loadings = torch.ones(confounder_dim, n_proxies) / confounder_dim ** 0.5
    xp = u @ loadings + proxy_noise * torch.randn(n, n_proxies, generator=g)
    xc = torch.randn(n, n_covariates, generator=g)
    s = u.sum(1)
    t = torch.bernoulli(torch.sigmoid(treat_strength * s + 0.5 * xc[:, 0]), generator=g)
    mu0 = torch.sin(xc[:, 0]) + 0.5 * xc[:, 1] + beta0 * s
    mu1 = mu0 + 1.0 + 0.5 * xc[:, 0] + (beta1 - beta0) * s
    y0 = mu0 + outcome_noise * torch.randn(n, generator=g)
    y1 = mu1 + outcome_noise * torch.randn(n, generator=g)
    y = torch.where(t > 0.5, y1, y0)
    return {"x": torch.cat([xp, xc], 1), "t": t, "y": y, "y0": y0, "y1": y1, "mu0": mu0, "mu1": mu1, "u": u}


class ConfoundedDataModule(InMemoryDataModule):
    """Units of :func:`confounded_scm` as batches ``{"x", "t", "y", "y0", "y1", "mu0", "mu1", "u"}``; models
    train on ``x``, ``t``, ``y`` only, the rest is ground truth for evaluation.

    Args:
        n: number of units; the other SCM arguments as for :func:`confounded_scm`.
    """

    def __init__(self, n: int = 2000, confounder_dim: int = 1, n_proxies: int = 3, n_covariates: int = 2,
                 proxy_noise: float = 1.0, treat_strength: float = 1.0, beta0: float = 1.5, beta1: float = 3.0,
                 outcome_noise: float = 0.5, spread: float | None = 0.3, batch_size: int = 256, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        check_range("n", n, 10)
        self.kwargs = dict(confounder_dim=confounder_dim, n_proxies=n_proxies, n_covariates=n_covariates,
                           proxy_noise=proxy_noise, treat_strength=treat_strength, beta0=beta0, beta1=beta1,
                           outcome_noise=outcome_noise, spread=spread)
        confounded_scm(1, **self.kwargs)  # validates the SCM arguments now, not at setup
        self.n = n

    def generate(self) -> dict[str, Tensor]:
        return confounded_scm(self.n, generator=self.generator(), **self.kwargs)
