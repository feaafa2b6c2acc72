"""Variational autoencoder (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

Loss (negative beta-ELBO, Higgins et al. 2017): ``recon + kl_weight * kl`` with
``recon = -E_q log p(x|z)`` (one reparameterized sample, Eq. 7) and the analytic Gaussian KL
(App. B). At test time the importance-weighted bound of Burda et al. (2016, Eq. 8) with ``iwae_k``
samples estimates log p(x).

The family is composed of four parts, each replaceable from YAML by ``class_path`` (docs/concepts.md):
``encoder`` (``x -> [mu, log_var]``), ``decoder`` (``z -> likelihood parameters``), ``likelihood``
(:class:`~lightning_vi.core.distributions.Likelihood`) and ``objective``
(:class:`~lightning_vi.core.objectives.VariationalObjective`: ELBO with Monte Carlo KL, IWAE, Renyi;
reparameterized or score-function gradients). Parts not given are built by name from ``architecture``,
``likelihood`` and ``objective`` (``nn.factories``). The default (``elbo``, one sample, ``reparam``) is the
analytic-KL loss above. :class:`~lightning_vi.families.vae.cvae.CVAE`, ``HVAE`` and ``CEVAE`` subclass
this class and override the hooks ``condition`` / ``encode`` / ``prior`` / ``decode``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.distributions import Independent

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import Likelihood, diag_normal, gaussian_kl, make_likelihood
from lightning_vi.core.module import VIModule, resolve_part
from lightning_vi.core.objectives import VariationalObjective, elbo_terms, iwae_bound
from lightning_vi.nn.factories import ARCHITECTURES, make_decoder, make_gaussian_encoder
from lightning_vi.registry import FAMILIES

__all__ = ["VAE", "ARCHITECTURES"]


@FAMILIES.register("vae")
class VAE(VIModule):
    """VAE with injected (or named) encoder, decoder, likelihood and objective, and a KL weight.

    Args:
        input_shape: shape of one example, e.g. ``[1, 8, 8]`` (images) or ``[10]`` (vectors).
        latent_dim: number of latent dimensions.
        architecture: default encoder/decoder: ``"mlp"``, ``"conv"`` (images; stride-2 convs) or ``"linear"``
            (linear encoder mean with a data-independent diagonal variance and a linear decoder: probabilistic PCA).
        hidden_dims: MLP hidden widths (of the default encoder; mirrored in the decoder).
        channels: channels of the stride-2 conv blocks (``architecture="conv"``).
        likelihood: ``"gaussian"`` (learned shared std unless ``obs_std`` is set), ``"bernoulli"`` or a
            ``Likelihood`` part.
        obs_std: fixed std of the Gaussian likelihood (None = learned).
        kl_weight: weight of the KL term (beta-VAE, Higgins et al. 2017).
        iwae_k: samples of the test-time IWAE estimate.
        objective: training bound ``"elbo"``, ``"iwae"`` or ``"renyi"`` (built with ``num_samples``, ``alpha``,
            ``estimator``, ``baseline`` and ``kl_weight``) or a ``VariationalObjective`` part (whose own
            ``kl_weight`` then applies).
        num_samples: samples per example of the training bound.
        alpha: Renyi order in [0, 1].
        estimator: ``"reparam"`` or ``"score"``.
        baseline: ``"none"``, ``"moving_average"`` or ``"learned"`` (score estimator).
        encoder: module ``x [B, *input_shape] -> [B, 2 * latent_dim]`` (mean, then log-variance); None = built
            from ``architecture``.
        decoder: module ``z [B, latent_dim] -> [B, *input_shape]`` likelihood parameters; None = built from
            ``architecture``.
        beta: deprecated name of ``kl_weight``.
        k: deprecated name of ``num_samples``.
        conv_channels: deprecated name of ``channels``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    #: State-dict keys of releases before the parts were injected (on_load_checkpoint renames them).
    renamed_state_keys = (("enc_log_var", "encoder.log_var"), ("log_obs_std", "likelihood.log_std"),
                          ("log_obs_std", None))

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        latent_dim: int = 8,
        architecture: str = "mlp",
        hidden_dims: list[int] = (256, 128),
        channels: list[int] = (32, 64),
        likelihood: Union[str, Likelihood] = "gaussian",
        obs_std: Optional[float] = None,
        kl_weight: float = 1.0,
        iwae_k: int = 64,
        objective: Union[str, VariationalObjective] = "elbo",
        num_samples: int = 1,
        alpha: float = 0.5,
        estimator: str = "reparam",
        baseline: str = "moving_average",
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        beta: Optional[float] = None,
        k: Optional[int] = None,
        conv_channels: Optional[list[int]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, 1.0)
        num_samples = self.rename_argument("k", k, "num_samples", num_samples, 1)
        channels = self.rename_argument("conv_channels", conv_channels, "channels", channels, (32, 64))
        self.save_hyperparameters()
        check_range("kl_weight", kl_weight, 0.0)
        check_range("latent_dim", latent_dim, 1)
        check_range("iwae_k", iwae_k, 1)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim, self.iwae_k, self.architecture = int(latent_dim), int(iwae_k), architecture
        self.event_dims = len(self.input_shape)
        d_in = math.prod(self.input_shape)
        self.encoder = resolve_part(encoder, "encoder")
        if self.encoder is None:
            self.encoder = self.default_encoder(architecture, latent_dim, hidden_dims, channels)
        self.decoder = resolve_part(decoder, "decoder")
        if self.decoder is None:
            self.decoder = self.default_decoder(architecture, latent_dim, hidden_dims, channels)
        self.likelihood = (make_likelihood(likelihood, obs_std) if isinstance(likelihood, str)
                           else resolve_part(likelihood, "likelihood"))
        self.vi_objective = (VariationalObjective(objective, num_samples, alpha, estimator, baseline, kl_weight, in_dim=d_in)
                             if isinstance(objective, str) else resolve_part(objective, "objective"))
        self.kl_weight = self.vi_objective.kl_weight if not isinstance(objective, str) else float(kl_weight)
        self.analytic = self.vi_objective.analytic
        self.term_weights = {"recon": 1.0, "kl": self.kl_weight} if self.analytic else self.vi_objective.weights()

    def default_encoder(self, architecture: str, latent_dim: int, hidden_dims: list[int], channels: list[int]) -> nn.Module:
        """The encoder built from ``architecture`` when none is given."""
        return make_gaussian_encoder(architecture, self.input_shape, latent_dim, hidden_dims, channels)

    def default_decoder(self, architecture: str, latent_dim: int, hidden_dims: list[int], channels: list[int]) -> nn.Module:
        """The decoder built from ``architecture`` when none is given."""
        return make_decoder(architecture, latent_dim, self.input_shape, hidden_dims, channels)

    # -- hooks (overridden by CVAE) ------------------------------------------------------------
    def condition(self, batch: dict[str, Any]) -> Tensor | None:
        """What the model is conditioned on (none for the VAE; the CVAE's condition vector)."""
        return None

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, log_var)`` of q(z|x), each ``[B, latent_dim]``."""
        h = self.encoder(x) if c is None else self.encoder(x, c)
        mu, log_var = h.chunk(2, dim=-1)
        return mu, log_var.clamp(-30.0, 20.0)

    def prior(self, mu: Tensor, c: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """``(mu, log_var)`` of p(z) (``None, None``: the standard normal) for posteriors like ``mu``."""
        return None, None

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Likelihood parameters (Gaussian mean or Bernoulli logits) of shape ``[B, *input_shape]``."""
        return self.decoder(z if c is None else torch.cat([z, c], dim=1))

    # -- model ---------------------------------------------------------------------------------
    def observation(self, params: Tensor) -> Independent:
        """p(x|z) for likelihood parameters ``[..., *input_shape]`` (one event per example)."""
        return Independent(self.likelihood(params), self.event_dims)

    def mean(self, params: Tensor) -> Tensor:
        return self.likelihood.mean(params)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction: mean of p(x | z = E[z|x])."""
        return self.mean(self.decode(self.encode(x)[0]))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples from p(x) (likelihood means at z ~ N(0, I))."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.mean(self.decode(z))

    @staticmethod
    def _given(fn, v: Tensor, c: Tensor | None):
        """``fn(v)`` or ``fn(v, c)``: without a condition, ``encode``/``decode`` overrides taking one argument work."""
        return fn(v) if c is None else fn(v, c)

    def _decode_samples(self, z: Tensor, c: Tensor | None) -> Tensor:
        """Likelihood parameters ``[K, B, *input_shape]`` of latents ``[K, B, D]``."""
        kk, b = z.shape[:2]
        cc = None if c is None else c.unsqueeze(0).expand(kk, *c.shape).flatten(0, 1)
        return self._given(self.decode, z.flatten(0, 1), cc).view(kk, b, *self.input_shape)

    def _log_prior(self, z: Tensor, p_mu: Tensor | None, p_lv: Tensor | None) -> Tensor:
        if p_mu is None:
            return diag_normal(torch.zeros_like(z), torch.zeros_like(z)).log_prob(z)
        return diag_normal(p_mu, p_lv).log_prob(z)

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        c = self.condition(batch)
        mu, log_var = self._given(self.encode, x, c)
        p_mu, p_lv = self.prior(mu, c)
        kl_dims = gaussian_kl(mu, log_var, p_mu, p_lv)
        if self.analytic:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
            log_px = self.observation(self._given(self.decode, z, c)).log_prob(x)
            out = {**elbo_terms(log_px, kl_dims.sum(-1)), "z": z}
        else:  # the configured bound/estimator with num_samples samples (see core.objectives)
            q = diag_normal(mu, log_var)
            z = self.vi_objective.draw(q)  # [K, B, D]
            params = self._decode_samples(z, c)
            log_lik = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
            out = {**self.vi_objective(log_lik, self._log_prior(z, p_mu, p_lv), q.log_prob(z), x), "z": z[0]}
            kl_dims = kl_dims.detach()
        return {**out, "mu": mu, "log_var": log_var, "kl_per_dim": kl_dims.mean(0)}

    def log_importance_weights(self, x: Tensor, k: int, c: Tensor | None = None) -> Tensor:
        """``log p(x, z_k | c) - log q(z_k | x, c)`` for ``k`` posterior samples; shape ``[k, B]``."""
        mu, log_var = self._given(self.encode, x, c)
        q = diag_normal(mu, log_var)
        z = q.sample((k,))  # [k, B, D]
        params = self._decode_samples(z, c)
        log_px = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
        return log_px + self._log_prior(z, *self.prior(mu, c)) - q.log_prob(z)

    @torch.no_grad()
    def iwae(self, x: Tensor, k: int | None = None, c: Tensor | None = None) -> Tensor:
        """Per-example IWAE estimate of log p(x) with ``k`` samples (``[B]``)."""
        return iwae_bound(self.log_importance_weights(x, k or self.iwae_k, c))

    def test_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"iwae": self.iwae(batch["x"], c=self.condition(batch)).mean()}
