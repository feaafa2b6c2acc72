"""Hierarchical Bayesian few-shot meta learning with a Normal-Inverse-Wishart global variable.

Kim & Hospedales, "A Hierarchical Bayesian Model for Deep Few-Shot Meta Learning" (NIW-Meta). The paper's
hierarchical model is ``p(phi) prod_i p(theta_i | phi) p(D_i | theta_i)`` with a global variable
``phi = (mu, Sigma)``, local (episode) variables ``theta_i ~ N(mu, Sigma)``, the variational global
posterior ``q(phi) = NIW(m0, l0, Lambda, nu)`` and the ELBO::

    sum_i ( E_{q_i}[log p(D_i | theta_i)] - E_{q(phi)} KL(q_i(theta_i) || p(theta_i | phi)) ) - KL(q(phi) || p(phi))

Under the NIW, ``E_{q(phi)} log N(theta; mu, Sigma) = log N(theta; m0, Lambda / nu) + const`` (because
``E[Sigma^-1] = nu Lambda^-1``), so the optimal local posterior given ``q(phi)`` has a closed form and is
recomputed from the episode's data whenever it is needed: the *one-time iterate* (no per-episode state).

Here ``theta_i`` are the episode's class prototypes ``theta_ic`` in the feature space of a deterministic
backbone ``f`` (MLP or conv), each ``theta_ic ~ N(mu, Sigma)`` given ``phi``. Support features are
``f(x) ~ N(theta_ic, S)`` with a learned diagonal ``S``, which makes the one-time iterate exact (the paper
needs a quadratic approximation of the episode loss; here the support likelihood is already Gaussian)::

    V^-1 = nu Lambda^-1 + n_c S^-1,     m_ic = V (nu Lambda^-1 m0 + S^-1 sum_{k in class c} f(x_k))

The ELBO's support term ``E_q log N(f(x_k); theta_c, S)`` and the local KL are computed on detached
support features: they fit ``q(phi)`` and ``S`` to how classes and examples spread in feature space, while
the backbone learns only from the query term (a feature-space density could otherwise be raised without
bound by shrinking the features). The data term is the query label likelihood
``p(y = c | z, theta) = softmax_c(log N(z; theta_c, S))``, estimated with ``num_samples`` reparameterized
draws of ``theta`` (training). Prediction uses the closed-form Gaussian predictive
``p(z | c, support) = N(z; m_ic, V + S)`` with Bayes' rule over the ``n_way`` classes.

Loss per query example (all terms logged divided by the episode's query count ``n_way * n_query``):
``nll + kl_weight * (support_nll + local_kl) + global_kl / num_episodes``, where ``num_episodes`` is the
number of episodes the global KL is amortised over (the paper's sum over many/infinite episodes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.module import VIModule
from lightning_vi.nn.backbones import build_backbone
from lightning_vi.registry import FAMILIES


def _softplus_inv(y: float) -> float:
    return math.log(math.expm1(y))


def mvdigamma(a: Tensor, d: int) -> Tensor:
    """Multivariate digamma ``psi_d(a) = sum_{j=1..d} psi(a + (1 - j) / 2)``."""
    return torch.digamma(a.unsqueeze(-1) - 0.5 * torch.arange(d, device=a.device, dtype=a.dtype)).sum(-1)


def niw_kl(m1: Tensor, l1: Tensor, lam1: Tensor, nu1: Tensor,
           m0: Tensor, l0: Tensor, lam0: Tensor, nu0: Tensor) -> Tensor:
    """``KL(NIW(m1, l1, Lambda1, nu1) || NIW(m0, l0, Lambda0, nu0))`` in closed form.

    ``Sigma ~ IW(Lambda, nu)`` (mean ``Lambda / (nu - d - 1)``), ``mu | Sigma ~ N(m, Sigma / l)``. The
    inverse-Wishart part is the Wishart KL of the precisions; the normal part is the Gaussian KL averaged
    with ``E[Sigma^-1] = nu1 Lambda1^-1``.
    """
    d = m1.shape[-1]
    c1, c0 = torch.linalg.cholesky(lam1), torch.linalg.cholesky(lam0)
    logdet1 = 2 * c1.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    logdet0 = 2 * c0.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    lam1_inv = torch.cholesky_inverse(c1)
    tr = (lam1_inv * lam0).sum((-2, -1))
    kl_iw = (0.5 * nu0 * (logdet1 - logdet0) + 0.5 * nu1 * (tr - d) + torch.mvlgamma(0.5 * nu0, d)
             - torch.mvlgamma(0.5 * nu1, d) + 0.5 * (nu1 - nu0) * mvdigamma(0.5 * nu1, d))
    diff = (m1 - m0).unsqueeze(-1)
    maha = (diff.transpose(-2, -1) @ lam1_inv @ diff).squeeze(-1).squeeze(-1)
    kl_n = 0.5 * (d * l0 / l1 - d + d * torch.log(l1 / l0) + l0 * nu1 * maha)
    return kl_iw + kl_n


def expected_gaussian_kl(m: Tensor, v: Tensor, m0: Tensor, l0: Tensor, lam: Tensor, nu: Tensor) -> Tensor:
    """``E_{(mu, Sigma) ~ NIW(m0, l0, Lambda, nu)} KL(N(m, V) || N(mu, Sigma))`` in closed form.

    Uses ``E log|Sigma| = log|Lambda| - d log 2 - psi_d(nu / 2)``, ``E Sigma^-1 = nu Lambda^-1`` and
    ``E_mu (m - mu)^T Sigma^-1 (m - mu) = (m - m0)^T Sigma^-1 (m - m0) + d / l0``.
    """
    d = m.shape[-1]
    c = torch.linalg.cholesky(lam)
    logdet_lam = 2 * c.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    lam_inv = torch.cholesky_inverse(c)
    diff = (m - m0).unsqueeze(-1)
    second = v + diff @ diff.transpose(-2, -1)
    e_logdet = logdet_lam - d * math.log(2.0) - mvdigamma(0.5 * nu, d)
    logdet_v = torch.linalg.slogdet(v)[1]
    return 0.5 * (e_logdet + nu * (lam_inv * second).sum((-2, -1)) + d / l0 - logdet_v - d)


def local_posterior(sums: Tensor, counts: Tensor, m0: Tensor, prior_prec: Tensor, noise_var: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """One-time iterate: ``q(theta_c) = N(m_c, V_c)`` from per-class feature sums and counts.

    ``sums`` [..., C, d], ``counts`` [..., C]; ``prior_prec = nu Lambda^-1`` [d, d]; ``noise_var`` = diag(S) [d].
    Returns ``m`` [..., C, d] and the Cholesky factor of the posterior precision ``V^-1`` [..., C, d, d].
    """
    prec = prior_prec + torch.diag_embed(counts.unsqueeze(-1) / noise_var)
    chol = torch.linalg.cholesky(prec)
    rhs = prior_prec @ m0 + sums / noise_var
    m = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
    return m, chol


@FAMILIES.register("niw_fewshot")
class NIWFewShot(VIModule):
    """Episodic few-shot classifier with an NIW global posterior and closed-form local posteriors.

    Batches come from ``lightning_vi.data.episodes.EpisodeDataModule``: ``support_x``, ``support_y``,
    ``x`` (query) and ``y`` (query labels), labels in ``0..n_way-1``.

    Args:
        input_shape: shape of one example.
        backbone: ``"mlp"`` (``hidden_dims``) or ``"conv"`` (``channels``), see ``lightning_vi.nn.backbones``.
        hidden_dims: MLP hidden widths.
        channels: conv stage widths.
        feature_dim: output width ``d`` of the backbone.
        num_samples: draws of ``theta`` for the expected query log-likelihood (training).
        kl_weight: weight of the support term and local KL (1 = the ELBO).
        num_episodes: number of episodes the global KL is spread over.
        prior_scale: ``p(phi) = NIW(0, 1, prior_scale * I, d + 2)`` (> 0).
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 10, 10),
        backbone: str = "mlp",
        hidden_dims: list[int] = (256,),
        channels: list[int] = (32, 64),
        feature_dim: int = 64,
        num_samples: int = 4,
        kl_weight: float = 1.0,
        num_episodes: int = 10_000,
        prior_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("feature_dim", feature_dim, 1)
        check_range("num_samples", num_samples, 1)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("num_episodes", num_episodes, 1)
        check_range("prior_scale", prior_scale, 0.0, low_open=True)
        self.save_hyperparameters()
        self.input_shape = None  # batches carry episodes [E, M, ...]; shapes are checked in _features
        self.example_shape = tuple(int(s) for s in input_shape)
        d = feature_dim
        self.backbone = build_backbone(backbone, self.example_shape, d, list(hidden_dims), list(channels))
        # q(phi) = NIW(m0, l0, Lambda = L L^T, nu); unconstrained parameters.
        self.m0 = nn.Parameter(torch.zeros(d))
        self.raw_l0 = nn.Parameter(torch.tensor(0.0))
        # Initially nu = d + 2 and Lambda = nu I: a weak prior with E[Sigma^-1] = nu Lambda^-1 = I.
        self.raw_lam_tril = nn.Parameter(torch.diag(torch.full((d,), _softplus_inv(math.sqrt(d + 2.0)))))
        self.raw_nu = nn.Parameter(torch.tensor(_softplus_inv(1.0)))
        self.log_noise_var = nn.Parameter(torch.zeros(d))  # diag(S)
        self.num_samples, self.kl_weight, self.num_episodes = num_samples, kl_weight, num_episodes
        self.register_buffer("prior_lam", prior_scale * torch.eye(d))
        self.prior_nu, self.prior_l0 = float(d + 2), 1.0
        self.term_weights = {"nll": 1.0, "support_nll": kl_weight, "local_kl": kl_weight,
                             "global_kl": 1.0 / num_episodes}

    # -- the global posterior q(phi) ---------------------------------------------------------------
    def global_posterior(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(m0, l0, Lambda, nu)`` of ``q(phi)``; ``nu > d + 1`` so that ``E[Sigma]`` exists."""
        d = self.m0.shape[0]
        tril = torch.tril(self.raw_lam_tril, -1) + torch.diag(F.softplus(self.raw_lam_tril.diagonal()))
        lam = tril @ tril.T + 1e-5 * torch.eye(d, device=tril.device)
        return self.m0, F.softplus(self.raw_l0) + 1e-4, lam, d + 1 + F.softplus(self.raw_nu)

    def global_kl(self) -> Tensor:
        m0, l0, lam, nu = self.global_posterior()
        one = torch.ones((), device=m0.device)
        return niw_kl(m0, l0, lam, nu, torch.zeros_like(m0), self.prior_l0 * one, self.prior_lam,
                      self.prior_nu * one)

    # -- one episode batch -----------------------------------------------------------------------
    def _features(self, x: Tensor, name: str) -> Tensor:
        if x.ndim != 2 + len(self.example_shape) or tuple(x.shape[2:]) != self.example_shape:
            raise ValueError(f"batch[{name!r}] has shape {tuple(x.shape)}; expected (episodes, examples, "
                             f"{', '.join(map(str, self.example_shape))}) (input_shape={list(self.example_shape)})")
        e, m = x.shape[:2]
        return self.backbone(x.reshape(e * m, *self.example_shape)).view(e, m, -1)

    def local_posteriors(self, z: Tensor, support_y: Tensor, n_way: int) -> tuple[Tensor, Tensor, Tensor]:
        """One-time iterate of each class from support features ``z`` [E, K', d]: ``m`` [E, N, d], the
        Cholesky factor of ``V^-1`` [E, N, d, d] and the class one-hot [E, K', N]."""
        onehot = F.one_hot(support_y, n_way).to(z)
        sums, counts = onehot.transpose(1, 2) @ z, onehot.sum(1)
        m0, _, lam, nu = self.global_posterior()
        prior_prec = nu * torch.cholesky_inverse(torch.linalg.cholesky(lam))
        m, chol = local_posterior(sums, counts, m0, prior_prec, self.log_noise_var.exp())
        return m, chol, onehot

    def predictive_logits(self, z: Tensor, m: Tensor, chol_prec: Tensor) -> Tensor:
        """``log N(z; m_c, V_c + S)`` for query features ``z`` [E, Q, d]: logits [E, Q, N]."""
        cov = torch.cholesky_inverse(chol_prec) + torch.diag_embed(self.log_noise_var.exp())
        chol = torch.linalg.cholesky(cov)  # [E, N, d, d]
        diff = z.unsqueeze(1) - m.unsqueeze(2)  # [E, N, Q, d]
        sol = torch.linalg.solve_triangular(chol, diff.transpose(-2, -1), upper=False)  # [E, N, d, Q]
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # [E, N]
        return (-0.5 * (sol.pow(2).sum(-2) + logdet.unsqueeze(-1))).transpose(1, 2)

    @torch.no_grad()
    def predict_proba(self, support_x: Tensor, support_y: Tensor, query_x: Tensor, n_way: int | None = None) -> Tensor:
        """Query class probabilities [E, Q, N] from the closed-form Gaussian predictive."""
        n_way = n_way or int(support_y.max()) + 1
        m, chol, _ = self.local_posteriors(self._features(support_x, "support_x"), support_y, n_way)
        return self.predictive_logits(self._features(query_x, "x"), m, chol).softmax(-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.predict_proba(batch["support_x"], batch["support_y"], batch["x"], batch["classes"].shape[1])

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        n_way = batch["classes"].shape[1]
        zs = self._features(batch["support_x"], "support_x")
        z, y = self._features(batch["x"], "x"), batch["y"]
        q = z.shape[1]
        noise_var = self.log_noise_var.exp()
        # Query term E_q log p(y | z, theta): reparameterized theta = m + L^-T eps with V^-1 = L L^T.
        m, chol, _ = self.local_posteriors(zs, batch["support_y"], n_way)
        eps = torch.randn(self.num_samples, *m.shape, 1, device=m.device, dtype=m.dtype)
        theta = (m.unsqueeze(-1) + torch.linalg.solve_triangular(chol.transpose(-2, -1), eps, upper=True)).squeeze(-1)
        logits = -0.5 * ((z.unsqueeze(2) - theta.unsqueeze(2)).pow(2) / noise_var).sum(-1)  # [S, E, Q, N]
        nll = F.cross_entropy(logits.flatten(0, 2), y.repeat(self.num_samples, 1).flatten())
        # Support term and local KL: the ELBO's fit of q_i to the support features, which are detached so
        # that they teach q(phi) and S the spread of classes and examples without shrinking the backbone.
        md, chold, onehot = self.local_posteriors(zs.detach(), batch["support_y"], n_way)
        v = torch.cholesky_inverse(chold)
        mean_k = onehot @ md  # [E, K', d] posterior mean of each support example's class
        support_nll = 0.5 * (((zs.detach() - mean_k).pow(2) / noise_var).sum(-1)
                             + (onehot @ v.diagonal(dim1=-2, dim2=-1) / noise_var).sum(-1)
                             + self.log_noise_var.sum() + zs.shape[-1] * math.log(2 * math.pi)).sum(-1).mean()
        m0, l0, lam, nu = self.global_posterior()
        local_kl = expected_gaussian_kl(md, v, m0, l0, lam, nu).sum(-1).mean()  # per episode
        pred = self.predictive_logits(z, m, chol)
        # Per query example, so that the loss is the negative ELBO divided by the query count.
        return {"nll": nll, "support_nll": support_nll / q, "local_kl": local_kl / q,
                "global_kl": self.global_kl() / q, "acc": (pred.argmax(-1) == y).float().mean(),
                "pred_nll": F.cross_entropy(pred.flatten(0, 1), y.flatten()), "logits": pred}
