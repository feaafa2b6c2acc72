"""Two-level hierarchical VAE (Markov HVAE) with learnable or fixed encoder variance, after Dang et
al. 2024, "Beyond Vanilla VAEs: Detecting Posterior Collapse in Conditional and Hierarchical VAEs"
(P01, Sec. 4.2).

Generative model ``p(z2) = N(0, I)``, ``p(z1|z2) = N(f2(z2), level1_std^2 I)``, ``p(x|z1)``;
encoder ``q(z1|x) q(z2|z1)``. Negative ELBO (P01 Eq. 9)::

    -E log p(x|z1) + beta1 * E[log q(z1|x) - log p(z1|z2)] + beta2 * KL(q(z2|z1) || N(0, I))

``encoder_variance="fixed"`` pins both encoder variances to ``encoder_std^2``; ``"learnable"``
learns them. In the linear model (``architecture="linear"``: linear means, data-independent
variances) P01 shows that a learnable second-level encoder variance lets ``z2`` collapse
completely where an unlearnable (fixed, small) variance keeps it active.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import LOG_2PI, diag_normal, gaussian_kl_per_dim, likelihood, standard_normal_like
from lightning_vi.core.module import VIModule
from lightning_vi.core.objectives import VariationalObjective, iwae_bound
from lightning_vi.nn import MLP, ConvDecoder, ConvEncoder
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES


def _batched(net: nn.Module, z: Tensor) -> Tensor:
    """Apply a vector network to ``z`` ``[..., d]`` (the MLPs flatten all but the first dim otherwise)."""
    return net(z.reshape(-1, z.shape[-1])).view(*z.shape[:-1], -1)


@FAMILIES.register("hvae")
class HVAE(VIModule):
    """Two-level hierarchical VAE; MLP, conv or linear networks; learnable or fixed encoder variance.

    Args:
        input_shape: shape of one example. latent_dims: ``[d1, d2]`` sizes of the two levels.
        architecture: ``"mlp"``, ``"conv"`` (images ``[C, H, W]``: stride-2 conv encoder/decoder for
            ``x <-> z1``, MLPs of width ``hidden_dims[-1]`` between the levels) or ``"linear"`` (P01's linear HVAE).
        hidden_dims: MLP hidden widths. conv_channels: channels of the stride-2 conv blocks (``"conv"``).
        encoder_variance: ``"learnable"`` or ``"fixed"`` (both levels; std ``encoder_std``).
        level1_std: std of p(z1 | z2). beta: ``[beta1, beta2]`` KL weights of the two levels.
        likelihood, obs_std, iwae_k, objective, k, alpha, estimator, baseline: as for ``vae``.
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        latent_dims: list[int] = (8, 4),
        architecture: str = "mlp",
        hidden_dims: list[int] = (256, 128),
        conv_channels: list[int] = (32, 64),
        encoder_variance: str = "learnable",
        encoder_std: float = 0.1,
        level1_std: float = 1.0,
        likelihood: str = "gaussian",
        obs_std: float | None = None,
        beta: list[float] = (1.0, 1.0),
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
        check_choice("architecture", architecture, ("mlp", "conv", "linear"))
        check_choice("encoder_variance", encoder_variance, ("learnable", "fixed"))
        check_choice("likelihood", likelihood, ("gaussian", "bernoulli"))
        if len(latent_dims) != 2:
            raise ValueError(f"latent_dims={list(latent_dims)!r} must have 2 entries [d1, d2]")
        if len(beta) != 2:
            raise ValueError(f"beta={list(beta)!r} must have 2 entries [beta1, beta2]")
        for i, d in enumerate(latent_dims):
            check_range(f"latent_dims[{i}]", d, 1)
        for i, b in enumerate(beta):
            check_range(f"beta[{i}]", b, 0.0)
        check_range("encoder_std", encoder_std, 0.0, low_open=True)
        check_range("level1_std", level1_std, 0.0, low_open=True)
        check_range("iwae_k", iwae_k, 1)
        if obs_std is not None:
            check_range("obs_std", obs_std, 0.0, low_open=True)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.d1, self.d2 = int(latent_dims[0]), int(latent_dims[1])
        self.likelihood, self.event_dims = likelihood, len(self.input_shape)
        d_in = math.prod(self.input_shape)
        linear = architecture == "linear"
        learn = encoder_variance == "learnable"
        hid = [] if linear else list(hidden_dims)
        # Encoder heads output means (and log-variances only for a learnable, data-dependent variance).
        per_x = not linear and learn
        if architecture == "conv":
            if len(self.input_shape) != 3:
                raise ValueError(f"architecture='conv' needs input_shape [C, H, W]; got {list(input_shape)}")
            self.enc1 = ConvEncoder(self.input_shape, conv_channels, self.d1 * (2 if per_x else 1))
        else:
            self.enc1 = MLP(d_in, hid, self.d1 * (2 if per_x else 1))
        self.enc2 = MLP(self.d1, hid[-1:] if hid else [], self.d2 * (2 if per_x else 1))
        if linear and learn:
            self.enc_log_var1 = nn.Parameter(torch.zeros(self.d1))
            self.enc_log_var2 = nn.Parameter(torch.zeros(self.d2))
        self.dec2 = MLP(self.d2, hid[-1:] if hid else [], self.d1)
        self.dec1 = (ConvDecoder(self.d1, conv_channels, self.input_shape) if architecture == "conv"
                     else nn.Sequential(MLP(self.d1, hid[::-1], d_in), nn.Unflatten(1, self.input_shape)))
        self.log_obs_std = (
            nn.Parameter(torch.zeros(())) if likelihood == "gaussian" and obs_std is None
            else (torch.tensor(math.log(obs_std)) if obs_std is not None else None)
        )
        self.vi_objective = VariationalObjective(objective, k, alpha, estimator, baseline, 1.0, in_dim=d_in)
        self.analytic = objective == "elbo" and k == 1 and estimator == "reparam"
        self.term_weights = ({"recon": 1.0, "kl1": float(beta[0]), "kl2": float(beta[1])} if self.analytic
                             else self.vi_objective.weights())

    # -- model ---------------------------------------------------------------------------------
    def _head(self, h: Tensor, level: int) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        if hp.encoder_variance == "fixed":
            return h, torch.full_like(h, 2 * math.log(hp.encoder_std))
        if hp.architecture == "linear":
            lv = self.enc_log_var1 if level == 1 else self.enc_log_var2
            return h, lv.expand_as(h)
        mu, lv = h.chunk(2, dim=-1)
        return mu, lv.clamp(-30.0, 20.0)

    def encode1(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._head(self.enc1(x), 1)

    def encode2(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` of q(z2|z1) for ``z1`` of shape ``[..., d1]`` (e.g. ``[K, B, d1]``)."""
        return self._head(_batched(self.enc2, z1), 2)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Means and log-variances of both levels concatenated ``[B, d1 + d2]`` (z2 encoded from E[z1])."""
        mu1, lv1 = self.encode1(x)
        mu2, lv2 = self.encode2(mu1)
        return torch.cat([mu1, mu2], -1), torch.cat([lv1, lv2], -1)

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters from ``z1`` (or from ``[z1, z2]``, whose ``z2`` part is ignored)."""
        return self.dec1(z[..., : self.d1])

    def observation(self, params: Tensor):
        log_std = None if self.log_obs_std is None else self.log_obs_std.to(params)
        return likelihood(self.likelihood, params, self.event_dims, log_std)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params) if self.likelihood == "bernoulli" else params

    def forward(self, x: Tensor) -> Tensor:
        return self.mean(self.decode(self.encode1(x)[0]))

    def p_z1(self, z2: Tensor):
        return diag_normal(_batched(self.dec2, z2), torch.full_like(z2[..., :1], 2 * math.log(self.hparams.level1_std))
                           .expand(*z2.shape[:-1], self.d1))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z2 = torch.randn(n, self.d2, generator=generator).to(self.device)
        z1 = self.dec2(z2) + self.hparams.level1_std * torch.randn(n, self.d1, generator=generator).to(self.device)
        return self.mean(self.decode(z1))

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        mu1, lv1 = self.encode1(x)
        if not self.analytic:
            q1 = diag_normal(mu1, lv1)
            z1 = self.vi_objective.draw(q1)  # [K, B, d1]
            mu2, lv2 = self.encode2(z1)
            q2 = diag_normal(mu2, lv2)
            z2 = q2.rsample() if self.vi_objective.estimator == "reparam" else q2.sample()
            kk = z1.shape[0]
            params = self.decode(z1.flatten(0, 1)).view(kk, x.shape[0], *self.input_shape)
            log_lik = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
            log_prior = self.p_z1(z2).log_prob(z1) + standard_normal_like(mu2).log_prob(z2)
            terms = self.vi_objective(log_lik, log_prior, q1.log_prob(z1) + q2.log_prob(z2), x)
            kl2 = gaussian_kl_per_dim(mu2, lv2).mean((0, 1)).detach()
            return {**terms, "z": z1[0], "mu": mu1, "log_var": lv1, "kl2_per_dim": kl2}
        z1 = mu1 + torch.randn_like(mu1) * torch.exp(0.5 * lv1)
        mu2, lv2 = self.encode2(z1)
        z2 = mu2 + torch.randn_like(mu2) * torch.exp(0.5 * lv2)
        log_px = self.observation(self.decode(z1)).log_prob(x)
        entropy1 = 0.5 * (lv1 + 1.0 + LOG_2PI).sum(-1)
        kl1 = -entropy1 - self.p_z1(z2).log_prob(z1)
        kl2_dims = gaussian_kl_per_dim(mu2, lv2)
        recon, kl1m, kl2m = -log_px.mean(), kl1.mean(), kl2_dims.sum(-1).mean()
        return {"recon": recon, "kl1": kl1m, "kl2": kl2m, "elbo": -(recon + kl1m + kl2m).detach(),
                "z": z1, "mu": mu1, "log_var": lv1, "kl2_per_dim": kl2_dims.mean(0)}

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        """``log p(x, z1, z2) - log q(z1, z2 | x)`` for ``k`` samples; ``[k, B]``."""
        mu1, lv1 = self.encode1(x)
        q1 = diag_normal(mu1, lv1)
        z1 = q1.sample((k,))
        mu2, lv2 = self.encode2(z1)
        q2 = diag_normal(mu2, lv2)
        z2 = q2.sample()
        params = self.decode(z1.flatten(0, 1)).view(k, x.shape[0], *self.input_shape)
        log_lik = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
        return (log_lik + self.p_z1(z2).log_prob(z1) + standard_normal_like(mu2).log_prob(z2)
                - q1.log_prob(z1) - q2.log_prob(z2))

    def test_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():
            return {"iwae": iwae_bound(self.log_importance_weights(batch["x"], self.hparams.iwae_k)).mean()}
