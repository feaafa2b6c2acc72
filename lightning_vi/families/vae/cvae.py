"""Conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models"; P12) with the linear variant analysed by Dang et al. 2024 (P01).

Model: prior ``p(z|c)`` (standard normal, or a learned Gaussian prior network), decoder ``p(x|z, c)``,
recognition network ``q(z|x, c)``. The loss is P12's hybrid (weighted) bound, Eq. 6-7::

    loss = (1 - gsnn_weight) * (-ELBO_CVAE) + gsnn_weight * (-E_{z ~ p(z|c)} log p(x|z, c))

with ``-ELBO_CVAE = -E_q log p(x|z,c) + beta * KL(q(z|x,c) || p(z|c))`` (Eq. 4). The condition ``c``
is ``batch[condition_key]``: class labels (``condition="label"``, one-hot with ``condition_dim``
classes) or attribute vectors (``condition="vector"`` of size ``condition_dim``).

``architecture="linear"``: linear encoder mean over ``[x, c]`` with a learnable data-independent
diagonal variance and a linear decoder over ``[z, c]``: P01's linear CVAE, whose collapsed dimensions
are those where the eigenvalues of the output covariance left unexplained by ``c`` fall below
``beta * sigma^2`` (see :func:`linear_cvae_collapse_prediction`).
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import diag_normal, likelihood
from lightning_vi.core.module import VIModule
from lightning_vi.core.objectives import VariationalObjective, elbo_terms, iwae_bound
from lightning_vi.nn import MLP, ConvDecoder, ConvEncoder
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES


def gaussian_kl(mu_q: Tensor, log_var_q: Tensor, mu_p: Tensor, log_var_p: Tensor) -> Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) per dimension."""
    return 0.5 * (log_var_p - log_var_q + (log_var_q.exp() + (mu_q - mu_p).pow(2)) / log_var_p.exp() - 1.0)


def linear_cvae_collapse_prediction(x: Tensor, c: Tensor | None, latent_dim: int, beta: float, sigma: float) -> int:
    """Collapsed latent dims of a trained linear CVAE predicted by the linear analysis (P01, Thm. 2).

    The latent only models what the condition does not explain linearly: the residual covariance
    ``S_xx - S_xc S_cc^-1 S_cx``. Its ``latent_dim`` largest eigenvalues that are ``<= beta * sigma^2``
    correspond to collapsed dimensions. Higher input/output correlation -> smaller residual -> more collapse.
    ``c=None`` gives the plain linear VAE prediction (Lucas et al. 2019): eigenvalues of ``S_xx``.
    """
    x = x.double().flatten(1)
    xc = x - x.mean(0)
    n = x.shape[0]
    resid = xc.T @ xc / n
    if c is not None:
        c = c.double().flatten(1)
        cc = c - c.mean(0)
        sxc, scc = xc.T @ cc / n, cc.T @ cc / n
        resid = resid - sxc @ torch.linalg.solve(scc, sxc.T)
    lam = torch.linalg.eigvalsh(resid).flip(0)[:latent_dim]
    return int((lam <= beta * sigma**2).sum())


@FAMILIES.register("cvae")
class CVAE(VIModule):
    """Conditional VAE on labels or attribute vectors with P12's weighted (hybrid) bound.

    Args:
        input_shape: shape of one example. latent_dim: latent size.
        condition: ``"label"`` (integer class ids) or ``"vector"`` (float attributes).
        condition_dim: number of classes (labels) or attribute size (vectors).
        condition_key: batch key of the condition (``"y"`` by default).
        architecture: ``"mlp"``, ``"conv"`` or ``"linear"`` (P01's linear CVAE).
        prior: ``"standard"`` N(0, I) or ``"learned"`` N(mu(c), diag var(c)) (P12's prior network).
        gsnn_weight: weight of the GSNN term in the hybrid loss (needs ``prior="learned"`` if > 0).
        likelihood, obs_std, beta, iwae_k, objective, k, alpha, estimator, baseline: as for ``vae``.
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 32, 32),
        latent_dim: int = 8,
        condition: str = "label",
        condition_dim: int = 3,
        condition_key: str = "y",
        architecture: str = "mlp",
        hidden_dims: list[int] = (256, 128),
        conv_channels: list[int] = (32, 64),
        prior: str = "standard",
        gsnn_weight: float = 0.0,
        likelihood: str = "bernoulli",
        obs_std: float | None = None,
        beta: float = 1.0,
        iwae_k: int = 64,
        objective: str = "elbo",
        k: int = 1,
        alpha: float = 0.5,
        estimator: str = "reparam",
        baseline: str = "moving_average",
        plugins: list[Union[Plugin, str, dict]] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr: float = 1e-3,
        check_finite: bool = True,
    ) -> None:
        super().__init__(plugins=plugins, optimizer=optimizer, lr_scheduler=lr_scheduler, lr=lr,
                         check_finite=check_finite)
        check_choice("condition", condition, ("label", "vector"))
        check_choice("architecture", architecture, ("mlp", "conv", "linear"))
        check_choice("prior", prior, ("standard", "learned"))
        check_choice("likelihood", likelihood, ("gaussian", "bernoulli"))
        check_range("condition_dim", condition_dim, 1)
        check_range("latent_dim", latent_dim, 1)
        check_range("gsnn_weight", gsnn_weight, 0.0, 1.0)
        check_range("beta", beta, 0.0)
        check_range("iwae_k", iwae_k, 1)
        if gsnn_weight > 0 and prior != "learned":
            raise ValueError(f"gsnn_weight={gsnn_weight!r} needs prior='learned' (got prior={prior!r})")
        if obs_std is not None:
            check_range("obs_std", obs_std, 0.0, low_open=True)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim, self.condition_dim, self.likelihood = latent_dim, condition_dim, likelihood
        self.event_dims = len(self.input_shape)
        d_in, dc = math.prod(self.input_shape), condition_dim
        if architecture == "conv":
            if len(self.input_shape) != 3:
                raise ValueError(f"architecture='conv' needs input_shape [C, H, W], got {list(input_shape)}")
            width = list(hidden_dims)[-1] if hidden_dims else 128
            self.encoder_x = ConvEncoder(self.input_shape, conv_channels, width)
            self.encoder_head = MLP(width + dc, [width], 2 * latent_dim)
            self.decoder = ConvDecoder(latent_dim + dc, conv_channels, self.input_shape)
        elif architecture == "mlp":
            self.encoder_x = nn.Flatten(1)
            self.encoder_head = MLP(d_in + dc, hidden_dims, 2 * latent_dim)
            self.decoder = nn.Sequential(MLP(latent_dim + dc, list(hidden_dims)[::-1], d_in),
                                         nn.Unflatten(1, self.input_shape))
        else:
            self.encoder_x = nn.Flatten(1)
            self.encoder_head = MLP(d_in + dc, [], latent_dim)
            self.enc_log_var = nn.Parameter(torch.zeros(latent_dim))
            self.decoder = nn.Sequential(MLP(latent_dim + dc, [], d_in), nn.Unflatten(1, self.input_shape))
        self.prior_net = MLP(dc, [] if architecture == "linear" else [64], 2 * latent_dim) if prior == "learned" else None
        self.log_obs_std = (
            nn.Parameter(torch.zeros(())) if likelihood == "gaussian" and obs_std is None
            else (torch.tensor(math.log(obs_std)) if obs_std is not None else None)
        )
        self.vi_objective = VariationalObjective(objective, k, alpha, estimator, baseline, beta, in_dim=d_in)
        self.analytic = objective == "elbo" and k == 1 and estimator == "reparam"
        self.beta, self.gsnn_weight = beta, gsnn_weight
        base = {"recon": 1.0, "kl": beta} if self.analytic else self.vi_objective.weights()
        w = 1.0 - gsnn_weight
        self.term_weights = {name: w * v for name, v in base.items()}
        if gsnn_weight > 0:
            self.term_weights["gsnn_recon"] = gsnn_weight

    # -- condition -----------------------------------------------------------------------------
    def condition_vector(self, c: Tensor) -> Tensor:
        """Validate the condition and return it as ``[B, condition_dim]`` floats (one-hot for labels)."""
        key = f"batch[{self.hparams.condition_key!r}]"
        if self.hparams.condition == "label":
            if c.ndim != 1 or c.is_floating_point():
                raise ValueError(f"{key} must hold integer class labels of shape [B]; got dtype {c.dtype} "
                                 f"and shape {tuple(c.shape)}")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.condition_dim):
                raise ValueError(f"{key} has labels in [{int(c.min())}, {int(c.max())}]; allowed: "
                                 f"[0, {self.condition_dim - 1}] (condition_dim={self.condition_dim})")
            return F.one_hot(c.long(), self.condition_dim).float()
        c = c.float()
        if c.ndim == 1 and self.condition_dim == 1:
            c = c.unsqueeze(1)
        if c.ndim != 2 or c.shape[1] != self.condition_dim:
            raise ValueError(f"{key} has shape {tuple(c.shape)}; expected (*, {self.condition_dim}) "
                             f"(condition_dim={self.condition_dim})")
        return c

    def _condition(self, batch: dict[str, Any]) -> Tensor:
        key = self.hparams.condition_key
        if key not in batch:
            raise KeyError(f"CVAE needs the condition batch[{key!r}]; the batch has {sorted(batch)}. "
                           "Set model.init_args.condition_key.")
        c = self.condition_vector(batch[key]).to(batch["x"].device)
        if c.shape[0] != batch["x"].shape[0]:
            raise ValueError(f"batch[{key!r}] has {c.shape[0]} conditions for {batch['x'].shape[0]} examples in "
                             "batch['x']; give one condition per example")
        return c

    # -- model ---------------------------------------------------------------------------------
    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` of q(z|x, c); ``c`` as ``[B, condition_dim]`` (zeros if omitted)."""
        if c is None:
            c = x.new_zeros(x.shape[0], self.condition_dim)
        h = self.encoder_head(torch.cat([self.encoder_x(x), c], dim=1))
        if self.hparams.architecture == "linear":
            return h, self.enc_log_var.expand_as(h)
        mu, log_var = h.chunk(2, dim=-1)
        return mu, log_var.clamp(-30.0, 20.0)

    def prior(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` of p(z|c)."""
        if self.prior_net is None:
            z = c.new_zeros(c.shape[0], self.latent_dim)
            return z, z
        mu, log_var = self.prior_net(c).chunk(2, dim=-1)
        return mu, log_var.clamp(-10.0, 10.0)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        if c is None:
            c = z.new_zeros(z.shape[0], self.condition_dim)
        return self.decoder(torch.cat([z, c], dim=1))

    def observation(self, params: Tensor):
        log_std = None if self.log_obs_std is None else self.log_obs_std.to(params)
        return likelihood(self.likelihood, params, self.event_dims, log_std)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params) if self.likelihood == "bernoulli" else params

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        cv = None if c is None else self.condition_vector(c)
        return self.mean(self.decode(self.encode(x, cv)[0], cv))

    @torch.no_grad()
    def sample(self, n: int, condition: Tensor | list | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples for the requested condition (a label, labels ``[n]``, or vectors ``[n, d]``).

        Without a condition, labels cycle through the classes (zeros for vector conditions).
        """
        if condition is None:
            condition = (torch.arange(n) % self.condition_dim if self.hparams.condition == "label"
                         else torch.zeros(n, self.condition_dim))
        condition = torch.as_tensor(condition)
        if self.hparams.condition == "label" and condition.ndim == 0:
            condition = condition.repeat(n)
        c = self.condition_vector(condition).to(self.device)
        if c.shape[0] != n:
            raise ValueError(f"condition has {c.shape[0]} rows; expected n={n} (one per sample) or a single label")
        mu, log_var = self.prior(c)
        eps = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.mean(self.decode(mu + eps * torch.exp(0.5 * log_var), c))

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        c = self._condition(batch)
        mu, log_var = self.encode(x, c)
        p_mu, p_lv = self.prior(c)
        if self.analytic:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
            log_px = self.observation(self.decode(z, c)).log_prob(x)
            kl_dims = gaussian_kl(mu, log_var, p_mu, p_lv)
            out = {**elbo_terms(log_px, kl_dims.sum(-1)), "z": z}
        else:
            q = diag_normal(mu, log_var)
            z = self.vi_objective.draw(q)
            kk = z.shape[0]
            cc = c.unsqueeze(0).expand(kk, *c.shape)
            params = self.decode(z.flatten(0, 1), cc.flatten(0, 1)).view(kk, x.shape[0], *self.input_shape)
            log_lik = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
            out = {**self.vi_objective(log_lik, diag_normal(p_mu, p_lv).log_prob(z), q.log_prob(z), x), "z": z[0]}
            kl_dims = gaussian_kl(mu, log_var, p_mu, p_lv).detach()
        if self.gsnn_weight > 0:
            zp = p_mu + torch.randn_like(p_mu) * torch.exp(0.5 * p_lv)
            out["gsnn_recon"] = -self.observation(self.decode(zp, c)).log_prob(x).mean()
        return {**out, "mu": mu, "log_var": log_var, "kl_per_dim": kl_dims.mean(0)}

    def log_importance_weights(self, x: Tensor, k: int, c: Tensor) -> Tensor:
        """``log p(x, z_k | c) - log q(z_k | x, c)``; shape ``[k, B]`` (``c`` as ``[B, condition_dim]``)."""
        mu, log_var = self.encode(x, c)
        q, p = diag_normal(mu, log_var), diag_normal(*self.prior(c))
        z = q.sample((k,))
        cc = c.unsqueeze(0).expand(k, *c.shape).flatten(0, 1)
        params = self.decode(z.flatten(0, 1), cc).view(k, x.shape[0], *self.input_shape)
        return self.observation(params).log_prob(x.unsqueeze(0).expand_as(params)) + p.log_prob(z) - q.log_prob(z)

    def test_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():
            lw = self.log_importance_weights(batch["x"], self.hparams.iwae_k, self._condition(batch))
        return {"iwae": iwae_bound(lw).mean()}
