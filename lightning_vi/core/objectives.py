"""Variational objectives and gradient estimators as functions of log-densities and samples (P05).

Conventions: ``log_w`` holds log importance weights ``log p(x, z_k) - log q(z_k | x)`` with shape
``[K, B]`` (K samples per example). Every bound here maps ``[K, B] -> [B]``:

* ELBO (Kingma & Welling 2014, Eq. 3): ``mean_k log w_k`` (Monte Carlo KL; analytic KL in :func:`elbo_terms`).
* IWAE (Burda et al. 2016, Eq. 8): ``log (1/K) sum_k w_k``.
* Renyi / VR bound (Li & Turner 2016, Eq. 5): ``1/(1-alpha) log (1/K) sum_k w_k^(1-alpha)``;
  ``alpha = 0`` is IWAE, ``alpha -> 1`` the ELBO.

Gradient estimators (Programmable VI, Becker et al. 2024): ``"reparam"`` differentiates through
``z = g(eps, phi)``; ``"score"`` (REINFORCE, Williams 1992) samples ``z`` without gradient and uses
the surrogate ``L(log_w) + (L - b).detach() * sum_k log q(z_k|x)`` whose gradient is unbiased;
``b`` is a baseline (none, moving average, or a learned linear function of ``x``).

Plain Python use on a user-written model/guide pair::

    obj = VariationalObjective("iwae", num_samples=8, estimator="reparam")
    z = obj.draw(q)                                 # q: a torch Distribution of the guide
    terms = obj(log_lik, log_prior, q.log_prob(z))  # each [K, B]; terms["neg_bound"] is the loss
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range, renamed_argument

OBJECTIVES = ("elbo", "iwae", "renyi")
ESTIMATORS = ("reparam", "score")
BASELINES = ("none", "moving_average", "learned")


def elbo_terms(log_px_z: Tensor, kl: Tensor) -> dict[str, Tensor]:
    """Negative ELBO split into reconstruction and KL (Kingma & Welling 2014, Eq. 3), batch means.

    ``log_px_z`` and ``kl`` have shape ``[B]``; returns ``recon = -E log p(x|z)``, ``kl`` and
    ``elbo = E log p(x|z) - KL``.
    """
    recon = -log_px_z.mean()
    kl_mean = kl.mean()
    return {"recon": recon, "kl": kl_mean, "elbo": -(recon + kl_mean).detach()}


def _check_log_w(log_w: Tensor) -> None:
    if log_w.ndim < 1 or log_w.shape[0] < 1:
        raise ValueError(f"log_w must have shape [K, B] with K >= 1, got {tuple(log_w.shape)}")


def iwae_bound(log_w: Tensor) -> Tensor:
    """Importance-weighted bound log (1/K) sum_k w_k per example (Burda et al. 2016, Eq. 8); ``[K, B] -> [B]``."""
    _check_log_w(log_w)
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def elbo_bound(log_w: Tensor) -> Tensor:
    """Monte Carlo ELBO ``mean_k log w_k``; ``[K, B] -> [B]``."""
    _check_log_w(log_w)
    return log_w.mean(0)


def renyi_bound(log_w: Tensor, alpha: float) -> Tensor:
    """Variational Renyi bound (Li & Turner 2016, Eq. 5) with K samples; ``[K, B] -> [B]``.

    ``alpha`` in [0, 1]: 0 gives IWAE, 1 the ELBO (the limit, computed exactly).
    """
    check_range("alpha", alpha, 0.0, 1.0)
    _check_log_w(log_w)
    if alpha == 1.0:
        return log_w.mean(0)
    return iwae_bound((1.0 - alpha) * log_w) / (1.0 - alpha)


def bound(log_w: Tensor, objective: str = "elbo", alpha: float = 0.5) -> Tensor:
    """The named bound (``elbo``, ``iwae`` or ``renyi``) per example; ``[K, B] -> [B]``."""
    check_choice("objective", objective, OBJECTIVES)
    if objective == "elbo":
        return elbo_bound(log_w)
    if objective == "iwae":
        return iwae_bound(log_w)
    return renyi_bound(log_w, alpha)


def score_surrogate(value: Tensor, log_q: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
    """Surrogate whose gradient is the score-function estimate of ``grad E[value]``.

    ``value`` is the per-example bound ``[B]`` computed from samples drawn *without* gradient;
    ``log_q`` is ``[K, B]`` (the guide's log-density of those samples, with gradient).
    """
    signal = (value.detach() - baseline)
    return value + signal.detach() * log_q.sum(0)


class MovingAverageBaseline(nn.Module):
    """Exponential moving average of the learning signal (a scalar)."""

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__()
        check_range("baseline_decay", decay, 0.0, 1.0, high_open=True)
        self.decay = decay
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor | None, signal: Tensor) -> tuple[Tensor, Tensor]:
        """Baseline for this batch (the average *before* this batch) and a zero loss; updates in training."""
        b = self.value.clone() if bool(self.initialised) else signal.detach().mean()
        if self.training:
            m = signal.detach().mean()
            self.value.copy_(torch.where(self.initialised, self.decay * self.value + (1 - self.decay) * m, m))
            self.initialised.fill_(True)
        return b.expand_as(signal), signal.new_zeros(())


class LearnedBaseline(nn.Module):
    """Input-dependent baseline ``b(x) = w^T x + c`` trained by least squares on the learning signal."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.net = nn.Linear(max(int(in_dim), 1), 1)
        nn.init.zeros_(self.net.weight)
        nn.init.zeros_(self.net.bias)

    def forward(self, x: Tensor | None, signal: Tensor) -> tuple[Tensor, Tensor]:
        inp = x.flatten(1) if x is not None else signal.new_zeros(signal.shape[0], self.net.in_features)
        b = self.net(inp).squeeze(-1)
        loss = (signal.detach() - b).pow(2).mean()
        return b.detach(), loss


class VariationalObjective(nn.Module):
    """A composable objective: bound (elbo|iwae|renyi) x estimator (reparam|score) x baseline.

    The ``objective`` part of the VAE-like families (give it by ``class_path`` in YAML to swap bound and
    estimator without touching the family).

    Args:
        objective: ``"elbo"``, ``"iwae"`` or ``"renyi"``.
        num_samples: samples per example (K >= 1).
        alpha: Renyi order in [0, 1] (``objective="renyi"`` only).
        estimator: ``"reparam"`` or ``"score"``.
        baseline: ``"none"``, ``"moving_average"`` or ``"learned"`` (score estimator only).
        kl_weight: weight of ``log p(z) - log q(z|x)`` inside the weights (beta-ELBO, Higgins et al.
            2017; 1 = the exact bound).
        in_dim: input size of the learned baseline. baseline_decay: decay of the moving average.
        k, beta: deprecated names of ``num_samples`` and ``kl_weight`` (docs/concepts.md).
    """

    def __init__(self, objective: str = "elbo", num_samples: int = 1, alpha: float = 0.5, estimator: str = "reparam",
                 baseline: str = "moving_average", kl_weight: float = 1.0, in_dim: int = 1,
                 baseline_decay: float = 0.9, k: int | None = None, beta: float | None = None) -> None:
        super().__init__()
        num_samples = renamed_argument("k", k, "num_samples", num_samples, 1)
        kl_weight = renamed_argument("beta", beta, "kl_weight", kl_weight, 1.0)
        check_choice("objective", objective, OBJECTIVES)
        check_choice("estimator", estimator, ESTIMATORS)
        check_choice("baseline", baseline, BASELINES)
        check_range("num_samples", num_samples, 1)
        if int(num_samples) != num_samples:
            raise ValueError(f"num_samples={num_samples!r} must be a whole number of samples; allowed: 1, 2, 3, ...")
        check_range("alpha", alpha, 0.0, 1.0)
        check_range("kl_weight", kl_weight, 0.0)
        self._init_args = {"objective": objective, "num_samples": int(num_samples), "alpha": float(alpha),
                           "estimator": estimator, "baseline": baseline, "kl_weight": float(kl_weight),
                           "in_dim": int(in_dim), "baseline_decay": float(baseline_decay)}
        self.objective, self.num_samples, self.alpha = objective, int(num_samples), float(alpha)
        self.estimator, self.kl_weight = estimator, float(kl_weight)
        self.baseline_kind = baseline if estimator == "score" else "none"
        self.baseline: nn.Module | None = None
        if self.baseline_kind == "moving_average":
            self.baseline = MovingAverageBaseline(baseline_decay)
        elif self.baseline_kind == "learned":
            self.baseline = LearnedBaseline(in_dim)

    @property
    def analytic(self) -> bool:
        """True for the one-sample reparameterized ELBO, whose KL a Gaussian family computes in closed form."""
        return self.objective == "elbo" and self.num_samples == 1 and self.estimator == "reparam"

    def to_config(self) -> dict:
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_args)}

    def draw(self, q: torch.distributions.Distribution, k: int | None = None) -> Tensor:
        """``k`` samples ``[K, B, ...]`` from the guide: reparameterized or detached per the estimator."""
        shape = torch.Size([k or self.num_samples])
        return q.rsample(shape) if self.estimator == "reparam" else q.sample(shape).detach()

    def forward(self, log_lik: Tensor, log_prior: Tensor, log_q: Tensor, x: Tensor | None = None) -> dict[str, Tensor]:
        """Terms from ``log p(x|z)``, ``log p(z)``, ``log q(z|x)`` (each ``[K, B]``).

        Returns ``neg_bound`` (the loss to minimise, a surrogate for the score estimator),
        ``baseline`` (the learned baseline's loss, or 0), and diagnostics ``bound`` (the value of the
        chosen bound), ``elbo``, ``recon`` (``-E log p(x|z)``) and ``kl`` (Monte Carlo KL).
        """
        log_w = log_lik + self.kl_weight * (log_prior - log_q)
        value = bound(log_w, self.objective, self.alpha)
        base_loss = value.new_zeros(())
        if self.estimator == "score":
            b: Tensor | float = 0.0
            if self.baseline is not None:
                b, base_loss = self.baseline(x, value)
            objective = score_surrogate(value, log_q, b)
        else:
            objective = value
        exact_w = (log_lik + log_prior - log_q).detach()
        return {
            "neg_bound": -objective.mean(),
            "baseline": base_loss,
            "bound": value.detach().mean(),
            "elbo": exact_w.mean(0).mean(),
            "recon": -log_lik.detach().mean(),
            "kl": (log_q - log_prior).detach().mean(),
        }

    def weights(self) -> dict[str, float]:
        """Term weights a family uses for this objective."""
        return {"neg_bound": 1.0, "baseline": 1.0}
