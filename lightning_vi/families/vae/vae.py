"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

Loss (negative beta-ELBO, Higgins et al. 2017): ``recon + beta * kl`` with
``recon = -E_q log p(x|z)`` (one reparameterized sample, Eq. 7) and the analytic Gaussian KL
(App. B). At test time the importance-weighted bound of Burda et al. (2016, Eq. 8) with ``iwae_k``
samples estimates log p(x).

``objective`` / ``k`` / ``alpha`` / ``estimator`` / ``baseline`` swap in any bound and gradient
estimator of :mod:`lightning_vi.core.objectives` (ELBO with Monte Carlo KL, IWAE, Renyi; reparameterized
or score-function gradients). The default (``elbo``, ``k=1``, ``reparam``) is the analytic-KL loss above.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import diag_normal, gaussian_kl_per_dim, likelihood, standard_normal_like
from lightning_vi.core.module import VIModule
from lightning_vi.core.objectives import VariationalObjective, elbo_terms, iwae_bound
from lightning_vi.nn import MLP, ConvDecoder, ConvEncoder
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES

ARCHITECTURES = ("mlp", "conv", "linear")


@FAMILIES.register("vae")
class VAE(VIModule):
    """VAE with Gaussian or Bernoulli likelihood, MLP/conv/linear networks and a beta weight.

    Args:
        input_shape: shape of one example, e.g. ``[1, 8, 8]`` (images) or ``[10]`` (vectors).
        latent_dim: number of latent dimensions.
        architecture: ``"mlp"``, ``"conv"`` (images; stride-2 convs) or ``"linear"`` (linear encoder
            mean with a data-independent diagonal variance and a linear decoder: probabilistic PCA).
        hidden_dims: MLP hidden widths. conv_channels: channels of the stride-2 conv blocks.
        likelihood: ``"gaussian"`` (learned shared std unless ``obs_std`` is set) or ``"bernoulli"``.
        beta: weight of the KL term (beta-VAE). iwae_k: samples of the test-time IWAE estimate.
        objective: training bound ``"elbo"``, ``"iwae"`` or ``"renyi"``; k: samples per example;
            alpha: Renyi order in [0, 1]; estimator: ``"reparam"`` or ``"score"``; baseline:
            ``"none"``, ``"moving_average"`` or ``"learned"`` (score estimator).
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        latent_dim: int = 8,
        architecture: str = "mlp",
        hidden_dims: list[int] = (256, 128),
        conv_channels: list[int] = (32, 64),
        likelihood: str = "gaussian",
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
        check_choice("architecture", architecture, ARCHITECTURES)
        check_choice("likelihood", likelihood, ("gaussian", "bernoulli"))
        check_range("beta", beta, 0.0)
        check_range("latent_dim", latent_dim, 1)
        check_range("iwae_k", iwae_k, 1)
        if obs_std is not None:
            check_range("obs_std", obs_std, 0.0, low_open=True)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim, self.likelihood, self.beta, self.iwae_k = latent_dim, likelihood, beta, iwae_k
        self.event_dims = len(self.input_shape)
        d_in = math.prod(self.input_shape)
        if architecture == "conv":
            if len(self.input_shape) != 3:
                raise ValueError(f"architecture='conv' needs input_shape [C, H, W], got {list(input_shape)}")
            self.encoder = ConvEncoder(self.input_shape, conv_channels, 2 * latent_dim)
            self.decoder = ConvDecoder(latent_dim, conv_channels, self.input_shape)
        elif architecture == "mlp":
            self.encoder = MLP(d_in, hidden_dims, 2 * latent_dim)
            self.decoder = nn.Sequential(MLP(latent_dim, list(hidden_dims)[::-1], d_in), nn.Unflatten(1, self.input_shape))
        else:
            self.encoder = MLP(d_in, [], latent_dim)
            self.enc_log_var = nn.Parameter(torch.zeros(latent_dim))
            self.decoder = nn.Sequential(MLP(latent_dim, [], d_in), nn.Unflatten(1, self.input_shape))
        self.log_obs_std = (
            nn.Parameter(torch.zeros(())) if likelihood == "gaussian" and obs_std is None
            else (torch.tensor(math.log(obs_std)) if obs_std is not None else None)
        )
        self.vi_objective = VariationalObjective(objective, k, alpha, estimator, baseline, beta, in_dim=d_in)
        self.analytic = objective == "elbo" and k == 1 and estimator == "reparam"
        self.term_weights = {"recon": 1.0, "kl": beta} if self.analytic else self.vi_objective.weights()

    # -- model ---------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, log_var)`` of q(z|x), each ``[B, latent_dim]``."""
        h = self.encoder(x)
        if self.hparams.architecture == "linear":
            return h, self.enc_log_var.expand_as(h)
        mu, log_var = h.chunk(2, dim=-1)
        return mu, log_var.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters (Gaussian mean or Bernoulli logits) of shape ``[B, *input_shape]``."""
        return self.decoder(z)

    def observation(self, params: Tensor):
        log_std = None if self.log_obs_std is None else self.log_obs_std.to(params)
        return likelihood(self.likelihood, params, self.event_dims, log_std)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params) if self.likelihood == "bernoulli" else params

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction: mean of p(x | z = E[z|x])."""
        return self.mean(self.decode(self.encode(x)[0]))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples from p(x) (likelihood means at z ~ N(0, I))."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.mean(self.decode(z))

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        mu, log_var = self.encode(x)
        if not self.analytic:
            return self.general_objective(x, mu, log_var)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        log_px = self.observation(self.decode(z)).log_prob(x)
        kl_dims = gaussian_kl_per_dim(mu, log_var)
        terms = elbo_terms(log_px, kl_dims.sum(-1))
        return {**terms, "z": z, "mu": mu, "log_var": log_var, "kl_per_dim": kl_dims.mean(0)}

    def general_objective(self, x: Tensor, mu: Tensor, log_var: Tensor) -> dict[str, Tensor]:
        """Terms of the configured bound/estimator with ``k`` samples (see ``core.objectives``)."""
        q = diag_normal(mu, log_var)
        z = self.vi_objective.draw(q)  # [k, B, D]
        k = z.shape[0]
        params = self.decode(z.flatten(0, 1)).view(k, x.shape[0], *self.input_shape)
        log_lik = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
        terms = self.vi_objective(log_lik, standard_normal_like(mu).log_prob(z), q.log_prob(z), x)
        kl_dims = gaussian_kl_per_dim(mu, log_var)
        return {**terms, "z": z[0], "mu": mu, "log_var": log_var, "kl_per_dim": kl_dims.mean(0).detach()}

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        """``log p(x, z_k) - log q(z_k | x)`` for ``k`` posterior samples; shape ``[k, B]``."""
        mu, log_var = self.encode(x)
        q = diag_normal(mu, log_var)
        z = q.sample((k,))  # [k, B, D]
        params = self.decode(z.flatten(0, 1)).view(k, x.shape[0], *self.input_shape)
        log_px = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
        return log_px + standard_normal_like(mu).log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def iwae(self, x: Tensor, k: int | None = None) -> Tensor:
        """Per-example IWAE estimate of log p(x) with ``k`` samples (``[B]``)."""
        return iwae_bound(self.log_importance_weights(x, k or self.iwae_k))

    def test_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"iwae": self.iwae(batch["x"]).mean()}
