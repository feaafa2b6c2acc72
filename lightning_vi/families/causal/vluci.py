"""VLUCI: Variational Learning of Unobserved Confounders for Counterfactual Inference (P33).

Graph: observed covariates ``X``, unobserved confounder ``U``; ``U -> X`` (X holds noisy proxies of U),
``(X, U) -> T`` and ``(X, T, U) -> Y``. VLUCI infers the posterior of ``U`` and hands its samples to a
counterfactual outcome model. The *doubly variational* inference implemented here splits the evidence as
``log p(X, T, Y) = log p(X, T) + log p(Y | X, T)`` and bounds each factor with its own variational posterior:

* stage 1 (treatment side), ``q1(U | X, T)``::

      ELBO_1 = E_q1[log p(X | U) + log p(T | X, U)] - KL(q1(U | X, T) || N(0, I))

* stage 2 (outcome side), ``q2(U | X, T, Y)``, whose prior is the stage-1 posterior (the variational
  stand-in for ``p(U | X, T)``)::

      ELBO_2 = E_q2[log p(Y | X, T, U)] - KL(q2(U | X, T, Y) || sg[q1(U | X, T)])

``sg`` stops the gradient: stage 2 treats stage 1's posterior as a fixed prior, the alternation of the two
variational steps done in one optimizer step. ``p(Y | X, T, U)`` is a T-learner-shaped decoder (one head
per arm). The loss is ``-(ELBO_1 + ELBO_2)`` (terms ``rec_x``, ``rec_t``, ``kl_t``, ``rec_y``, ``kl_y``).

Counterfactual inference (the paper's "compatible with counterfactual inference models"): draw ``S``
samples ``U_s ~ q2(U | X, T, Y)`` per unit (:meth:`VLUCI.confounder_features`), fit a separate T-learner
``mu_0(X, U), mu_1(X, U)`` with Gaussian noise on the ``S``-fold augmented data (:func:`fit_tlearner`),
predict by averaging over the samples and form intervals for counterfactual outcomes from the predictive
mixture ``mu_t(X, U_s) + sigma_t * eps`` (:func:`predict_counterfactuals`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.nn.mlp import MLP
from lightning_vi.registry import FAMILIES

LOG_2PI = math.log(2 * math.pi)


def _gauss_nll(y: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise ``-log N(y; mean, exp(log_std)^2)``."""
    return 0.5 * ((y - mean) / log_std.exp()).pow(2) + log_std + 0.5 * LOG_2PI


def check_units(x: Tensor, t: Tensor, y: Tensor | None = None, x_dim: int | None = None) -> None:
    """``x`` [N, D], ``t`` [N] and ``y`` [N] must describe the same ``N`` units (a clear error otherwise)."""
    if x.ndim != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (units, covariates)")
    if x_dim is not None and x.shape[1] != x_dim:
        raise ValueError(f"x has {x.shape[1]} covariates per unit; the model was built with x_dim={x_dim}")
    lengths = {"x": len(x), "t": len(t)} | ({} if y is None else {"y": len(y)})
    if len(set(lengths.values())) != 1:
        raise ValueError(f"x, t and y must have one entry per unit; got lengths {lengths}")
    if t.ndim != 1 or (y is not None and y.ndim != 1):
        raise ValueError(f"t and y must be vectors [units]; got t {tuple(t.shape)}"
                         + ("" if y is None else f", y {tuple(y.shape)}"))


@FAMILIES.register("vluci")
class VLUCI(VIModule):
    """VLUCI (P33): doubly variational inference of an unobserved confounder U (module docstring).

    Batches are dicts with ``x`` [B, x_dim], ``t`` [B] (0/1) and ``y`` [B] (other keys are ignored).

    Args:
        x_dim: number of observed covariates.
        confounder_dim: dimension of the unobserved confounder ``U`` (>= 1).
        hidden_dims: MLP hidden widths of every encoder and decoder.
        reconstruct_x: include ``log p(X | U)`` in stage 1 (anchors ``U`` to its proxies in ``X``).
        kl_weight: weight of both KL terms (1 = the two ELBOs).
        lr: learning rate of the default optimizer (this family's default 3e-3).
        **kwargs: the other shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``,
            ``check_finite``).
    """

    def __init__(
        self,
        x_dim: int = 5,
        confounder_dim: int = 1,
        hidden_dims: list[int] = (32, 32),
        reconstruct_x: bool = True,
        kl_weight: float = 1.0,
        lr: float = 3e-3,
        **kwargs: Any,
    ) -> None:
        if confounder_dim < 1:
            raise ValueError(f"confounder_dim={confounder_dim!r}: VLUCI infers an unobserved confounder U, so it "
                             "needs confounder_dim >= 1; for an outcome model without U fit a T-learner on X alone "
                             "(lightning_vi.families.causal.fit_tlearner)")
        check_range("x_dim", x_dim, 1)
        check_range("kl_weight", kl_weight, 0.0)
        super().__init__(lr=lr, **kwargs)
        self.save_hyperparameters()
        self.x_dim, self.confounder_dim, self.reconstruct_x = x_dim, confounder_dim, reconstruct_x
        hidden, du = list(hidden_dims), confounder_dim
        self.enc_t = MLP(x_dim + 1, hidden, 2 * du)          # q1(U | X, T)
        self.enc_y = MLP(x_dim + 2, hidden, 2 * du)          # q2(U | X, T, Y)
        self.dec_x = MLP(du, hidden, x_dim)                  # p(X | U)
        self.log_std_x = nn.Parameter(torch.zeros(x_dim))
        self.dec_t = MLP(x_dim + du, hidden, 1)              # p(T | X, U) logits
        self.dec_y = nn.ModuleList([MLP(x_dim + du, hidden, 1) for _ in range(2)])  # p(Y | X, T=a, U)
        self.log_std_y = nn.Parameter(torch.zeros(2))
        self.term_weights = {"rec_x": float(reconstruct_x), "rec_t": 1.0, "kl_t": kl_weight,
                             "rec_y": 1.0, "kl_y": kl_weight}

    # -- the two variational posteriors ------------------------------------------------------
    def posterior_t(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Stage-1 posterior ``q1(U | X, T)``: mean and log-variance [N, du]."""
        return self.enc_t(torch.cat([x, t[:, None]], 1)).chunk(2, -1)

    def posterior(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Stage-2 posterior ``q2(U | X, T, Y)``: mean and log-variance [N, du]."""
        check_units(x, t, y, self.x_dim)
        return self.enc_y(torch.cat([x, t[:, None], y[:, None]], 1)).chunk(2, -1)

    def outcome_mean(self, x: Tensor, t: Tensor, u: Tensor) -> Tensor:
        """Mean of the decoder ``p(Y | X, T, U)`` [N]: head ``t`` of the two arm heads."""
        xu = torch.cat([x, u], -1)
        return torch.where(t > 0.5, self.dec_y[1](xu)[..., 0], self.dec_y[0](xu)[..., 0])

    def objective(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, t, y = batch["x"].float(), batch["t"].float(), batch["y"].float()
        check_units(x, t, y, self.x_dim)
        mu1, lv1 = self.posterior_t(x, t)
        u1 = mu1 + (0.5 * lv1).exp() * torch.randn_like(mu1)
        rec_x = _gauss_nll(x, self.dec_x(u1), self.log_std_x).sum(-1).mean()
        rec_t = F.binary_cross_entropy_with_logits(self.dec_t(torch.cat([x, u1], -1))[:, 0], t)
        kl_t = gaussian_kl(mu1, lv1).sum(-1).mean()
        mu2, lv2 = self.enc_y(torch.cat([x, t[:, None], y[:, None]], 1)).chunk(2, -1)
        u2 = mu2 + (0.5 * lv2).exp() * torch.randn_like(mu2)
        log_std = torch.where(t > 0.5, self.log_std_y[1], self.log_std_y[0])
        rec_y = _gauss_nll(y, self.outcome_mean(x, t, u2), log_std).mean()
        kl_y = gaussian_kl(mu2, lv2, mu1.detach(), lv1.detach()).sum(-1).mean()
        elbo_1 = -(rec_x * float(self.reconstruct_x) + rec_t + kl_t)
        elbo_2 = -(rec_y + kl_y)
        return {"rec_x": rec_x, "rec_t": rec_t, "kl_t": kl_t, "rec_y": rec_y, "kl_y": kl_y,
                "elbo_xt": elbo_1.detach(), "elbo_y": elbo_2.detach(), "u": u2}

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """Posterior mean of ``U`` given the unit's ``(X, T, Y)``."""
        return self.posterior(x, t, y)[0]

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """``lvi predict``: the posterior mean of ``U`` per unit (the VIModule default would call ``self(x)``)."""
        return self(batch["x"].float(), batch["t"].float(), batch["y"].float())

    @torch.no_grad()
    def confounder_samples(self, x: Tensor, t: Tensor, y: Tensor, n_samples: int = 20,
                           generator: torch.Generator | None = None) -> Tensor:
        """``n_samples`` draws ``U_s ~ q2(U | X, T, Y)`` per unit: [S, N, du]."""
        check_range("n_samples", n_samples, 1)
        mu, lv = self.posterior(x.float(), t.float(), y.float())
        eps = torch.randn((n_samples, *mu.shape), generator=generator, dtype=mu.dtype).to(mu.device)
        return mu + (0.5 * lv).exp() * eps

    def confounder_features(self, x: Tensor, t: Tensor, y: Tensor, n_samples: int = 20,
                            generator: torch.Generator | None = None) -> Tensor:
        """Outcome-model inputs ``[X, U_s]`` for every posterior sample: [S, N, x_dim + du]."""
        u = self.confounder_samples(x, t, y, n_samples, generator)
        return torch.cat([x.float().expand(n_samples, *x.shape), u], -1)


def fit_vluci(model: VLUCI, data: dict[str, Tensor], steps: int = 1500, batch_size: int = 256, lr: float = 3e-3,
              seed: int = 0) -> VLUCI:
    """Minibatch Adam on the model's loss (``compute_loss``, the same terms ``lvi fit`` optimizes), without a
    Trainer: for tests and notebooks on small tabular data. Returns the model in eval mode."""
    check_range("steps", steps, 1)
    g = torch.Generator().manual_seed(seed)
    n = len(data["x"])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        loss, _ = model.compute_loss({k: data[k][idx] for k in ("x", "t", "y")}, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


class TLearner(nn.Module):
    """Two separate regressors ``mu_0(F), mu_1(F)`` with per-arm Gaussian noise ``sigma_0, sigma_1`` (features
    ``F`` = ``X`` alone, or ``[X, U]`` with VLUCI's confounder samples)."""

    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        check_range("in_dim", in_dim, 1)
        self.heads = nn.ModuleList([MLP(in_dim, list(hidden_dims), 1) for _ in range(2)])
        self.log_std = nn.Parameter(torch.zeros(2))

    def forward(self, features: Tensor) -> Tensor:
        """Means of both arms [..., 2]."""
        return torch.cat([h(features) if features.ndim == 2 else h(features.reshape(-1, features.shape[-1])).view(
            *features.shape[:-1], 1) for h in self.heads], -1)


def fit_tlearner(features: Tensor, t: Tensor, y: Tensor, hidden_dims: Sequence[int] = (32, 32), steps: int = 600,
                 lr: float = 3e-3, weight_decay: float = 1e-3, batch_size: int = 512, seed: int = 0) -> TLearner:
    """Fit a :class:`TLearner` by Gaussian maximum likelihood, each head on its own arm's units.

    ``features`` is [N, D] or, for VLUCI, [S, N, D] (``S`` posterior samples per unit: the data are augmented
    ``S``-fold, each copy with the unit's ``t`` and ``y``)."""
    if features.ndim == 3:
        s = features.shape[0]
        check_units(features[0], t, y)
        features, t, y = features.reshape(-1, features.shape[-1]), t.repeat(s), y.repeat(s)
    check_units(features, t, y)
    torch.manual_seed(seed)
    model = TLearner(features.shape[1], hidden_dims)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    arm = (t > 0.5).long()
    n = len(features)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g)
        mean = model(features[idx]).gather(1, arm[idx, None])[:, 0]
        loss = _gauss_nll(y[idx].float(), mean, model.log_std[arm[idx]]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict_counterfactuals(tlearner: TLearner, features: Tensor, level: float = 0.9, outcome_noise: bool = True,
                            n_noise: int = 50, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Potential-outcome predictions averaged over posterior samples, and central ``level`` intervals.

    ``features``: [N, D] (one point per unit) or [S, N, D] (VLUCI samples). The predictive distribution of
    ``Y_a`` is the mixture over ``s`` of ``N(mu_a(F_s), sigma_a^2)`` (``outcome_noise=False`` drops
    ``sigma_a``: the interval then reflects the confounder's posterior only). Returns ``mu0``, ``mu1``,
    ``ite`` = ``mu1 - mu0`` (sample means) [N] and ``lo``, ``hi`` [N, 2] (per arm)."""
    check_range("level", level, 0.0, 1.0, low_open=True, high_open=True)
    if features.ndim == 2:
        features = features[None]
    means = tlearner(features)                                        # [S, N, 2]
    draws = means[:, None].expand(-1, n_noise if outcome_noise else 1, -1, -1)
    if outcome_noise:
        eps = torch.randn(draws.shape, generator=generator)
        draws = draws + tlearner.log_std.exp() * eps
    draws = draws.reshape(-1, *means.shape[1:])                       # [S * K, N, 2]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2])
    lo, hi = torch.quantile(draws, q, dim=0)
    mu = means.mean(0)
    return {"mu0": mu[:, 0], "mu1": mu[:, 1], "ite": mu[:, 1] - mu[:, 0], "lo": lo, "hi": hi}


def pehe(ite_hat: Tensor, ite: Tensor) -> float:
    """Precision in estimating heterogeneous effects, ``sqrt(mean((ite_hat - ite)^2))`` (Hill 2011)."""
    return float((ite_hat - ite).pow(2).mean().sqrt())


def ate_error(ite_hat: Tensor, ite: Tensor) -> float:
    """Absolute error of the average treatment effect, ``|mean(ite_hat) - mean(ite)|``."""
    return float((ite_hat.mean() - ite.mean()).abs())


def counterfactual_coverage(pred: dict[str, Tensor], t: Tensor, y0: Tensor, y1: Tensor) -> float:
    """Fraction of units whose counterfactual outcome (``y1`` if untreated, ``y0`` if treated) lies in its interval."""
    cf_arm = (t < 0.5).long()[:, None]
    y_cf = torch.where(t > 0.5, y0, y1)
    lo, hi = pred["lo"].gather(1, cf_arm)[:, 0], pred["hi"].gather(1, cf_arm)[:, 0]
    return float(((y_cf >= lo) & (y_cf <= hi)).float().mean())
