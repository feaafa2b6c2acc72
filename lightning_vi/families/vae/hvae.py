"""Two-level hierarchical VAE (Markov HVAE) with learnable or fixed encoder variance, after Dang et
al. 2024, "Beyond Vanilla VAEs: Detecting Posterior Collapse in Conditional and Hierarchical VAEs"
(P01, Sec. 4.2).

Generative model ``p(z2) = N(0, I)``, ``p(z1|z2) = N(f2(z2), level1_std^2 I)``, ``p(x|z1)``;
encoder ``q(z1|x) q(z2|z1)``. Negative ELBO (P01 Eq. 9)::

    -E log p(x|z1) + kl_weight[0] * E[log q(z1|x) - log p(z1|z2)] + kl_weight[1] * KL(q(z2|z1) || N(0, I))

``encoder_variance="fixed"`` pins both encoder variances to ``encoder_std^2``; ``"learnable"``
learns them. In the linear model (``architecture="linear"``: linear means, data-independent
variances) P01 shows that a learnable second-level encoder variance lets ``z2`` collapse
completely where an unlearnable (fixed, small) variance keeps it active.

A subclass of :class:`~lightning_vi.families.vae.vae.VAE`: its ``encoder``/``decoder`` parts map
``x <-> z1`` (the encoder outputs ``[mu1, log_var1]``, or ``mu1`` alone with ``encoder_variance="fixed"``);
the networks between the levels (``enc2``, ``dec2``) are MLPs of width ``hidden_dims[-1]``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import LOG_2PI, diag_normal, gaussian_kl, standard_normal_like
from lightning_vi.families.vae.vae import VAE
from lightning_vi.nn import MLP, LinearGaussianEncoder, make_encoder
from lightning_vi.registry import FAMILIES


def _batched(net: nn.Module, z: Tensor) -> Tensor:
    """Apply a vector network to ``z`` ``[..., d]`` (the MLPs flatten all but the first dim otherwise)."""
    return net(z.reshape(-1, z.shape[-1])).view(*z.shape[:-1], -1)


@FAMILIES.register("hvae")
class HVAE(VAE):
    """Two-level hierarchical VAE; MLP, conv or linear networks; learnable or fixed encoder variance.

    The other arguments are the VAE's (:class:`VAE`; ``latent_dim`` is ``latent_dims[0]``).

    Args:
        input_shape: shape of one example.
        latent_dims: ``[d1, d2]`` sizes of the two levels.
        architecture: ``"mlp"``, ``"conv"`` (images ``[C, H, W]``: stride-2 conv encoder/decoder for
            ``x <-> z1``, MLPs of width ``hidden_dims[-1]`` between the levels) or ``"linear"`` (P01's linear HVAE).
        hidden_dims: MLP hidden widths.
        encoder_variance: ``"learnable"`` or ``"fixed"`` (both levels; std ``encoder_std``).
        encoder_std: encoder std of both levels when fixed.
        level1_std: std of p(z1 | z2).
        kl_weight: ``[kl_weight1, kl_weight2]`` KL weights of the two levels.
        beta: deprecated name of ``kl_weight``.
    """

    renamed_state_keys = (("enc1.", "encoder."), ("dec1.", "decoder."), ("enc_log_var1", "encoder.log_var"),
                          ("enc_log_var2", "enc2.log_var"), *VAE.renamed_state_keys)

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        latent_dims: list[int] = (8, 4),
        architecture: str = "mlp",
        hidden_dims: list[int] = (256, 128),
        encoder_variance: str = "learnable",
        encoder_std: float = 0.1,
        level1_std: float = 1.0,
        kl_weight: list[float] = (1.0, 1.0),
        beta: Optional[list[float]] = None,
        **kwargs: Any,
    ) -> None:
        check_choice("encoder_variance", encoder_variance, ("learnable", "fixed"))
        if len(latent_dims) != 2:
            raise ValueError(f"latent_dims={list(latent_dims)!r} must have 2 entries [d1, d2]")
        for i, d in enumerate(latent_dims):
            check_range(f"latent_dims[{i}]", d, 1)
        check_range("encoder_std", encoder_std, 0.0, low_open=True)
        check_range("level1_std", level1_std, 0.0, low_open=True)
        # plain attributes read by default_encoder during VAE.__init__
        self.d1, self.d2 = int(latent_dims[0]), int(latent_dims[1])
        self.encoder_variance, self.encoder_std, self.level1_std = encoder_variance, encoder_std, level1_std
        super().__init__(input_shape=input_shape, latent_dim=self.d1, architecture=architecture,
                         hidden_dims=hidden_dims, **kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, (1.0, 1.0))
        if len(kl_weight) != 2:
            raise ValueError(f"kl_weight={list(kl_weight)!r} must have 2 entries [kl_weight1, kl_weight2]")
        for i, b in enumerate(kl_weight):
            check_range(f"kl_weight[{i}]", b, 0.0)
        self.save_hyperparameters()
        self._hparams.pop("latent_dim", None)  # VAE's; latent_dims rebuilds it
        linear, learn = architecture == "linear", encoder_variance == "learnable"
        hid = [] if linear else list(hidden_dims)[-1:]
        self.enc2 = LinearGaussianEncoder(self.d1, self.d2) if linear and learn else MLP(
            self.d1, hid, self.d2 * (2 if learn else 1))
        self.dec2 = MLP(self.d2, hid, self.d1)
        if self.analytic:
            self.term_weights = {"recon": 1.0, "kl1": float(kl_weight[0]), "kl2": float(kl_weight[1])}

    def default_encoder(self, architecture: str, latent_dim: int, hidden_dims: list[int], channels: list[int]) -> nn.Module:
        """``x -> [mu1, log_var1]`` (``mu1`` alone for a fixed variance; a linear mean and a learned
        data-independent log-variance for the linear model)."""
        learn = self.encoder_variance == "learnable"
        if architecture == "linear" and learn:
            return LinearGaussianEncoder(math.prod(self.input_shape), self.d1)
        return make_encoder(architecture, self.input_shape, self.d1 * (2 if learn else 1), hidden_dims, channels)

    # -- model ---------------------------------------------------------------------------------
    def _head(self, h: Tensor, level: int) -> tuple[Tensor, Tensor]:
        if self.encoder_variance == "fixed":
            return h, torch.full_like(h, 2 * math.log(self.encoder_std))
        mu, lv = h.chunk(2, dim=-1)
        return mu, lv.clamp(-30.0, 20.0)

    def encode1(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._head(self.encoder(x), 1)

    def encode2(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log_var)`` of q(z2|z1) for ``z1`` of shape ``[..., d1]`` (e.g. ``[K, B, d1]``)."""
        return self._head(_batched(self.enc2, z1), 2)

    def encode(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Means and log-variances of both levels concatenated ``[B, d1 + d2]`` (z2 encoded from E[z1])."""
        mu1, lv1 = self.encode1(x)
        mu2, lv2 = self.encode2(mu1)
        return torch.cat([mu1, mu2], -1), torch.cat([lv1, lv2], -1)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        """Likelihood parameters from ``z1`` (or from ``[z1, z2]``, whose ``z2`` part is ignored)."""
        return self.decoder(z[..., : self.d1])

    def forward(self, x: Tensor) -> Tensor:
        return self.mean(self.decode(self.encode1(x)[0]))

    def p_z1(self, z2: Tensor):
        return diag_normal(_batched(self.dec2, z2), torch.full_like(z2[..., :1], 2 * math.log(self.level1_std))
                           .expand(*z2.shape[:-1], self.d1))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z2 = torch.randn(n, self.d2, generator=generator).to(self.device)
        z1 = self.dec2(z2) + self.level1_std * torch.randn(n, self.d1, generator=generator).to(self.device)
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
            params = self._decode_samples(z1, None)
            log_lik = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
            log_prior = self.p_z1(z2).log_prob(z1) + standard_normal_like(mu2).log_prob(z2)
            terms = self.vi_objective(log_lik, log_prior, q1.log_prob(z1) + q2.log_prob(z2), x)
            kl2 = gaussian_kl(mu2, lv2).mean((0, 1)).detach()
            return {**terms, "z": z1[0], "mu": mu1, "log_var": lv1, "kl2_per_dim": kl2}
        z1 = mu1 + torch.randn_like(mu1) * torch.exp(0.5 * lv1)
        mu2, lv2 = self.encode2(z1)
        z2 = mu2 + torch.randn_like(mu2) * torch.exp(0.5 * lv2)
        log_px = self.observation(self.decode(z1)).log_prob(x)
        entropy1 = 0.5 * (lv1 + 1.0 + LOG_2PI).sum(-1)
        kl1 = -entropy1 - self.p_z1(z2).log_prob(z1)
        kl2_dims = gaussian_kl(mu2, lv2)
        recon, kl1m, kl2m = -log_px.mean(), kl1.mean(), kl2_dims.sum(-1).mean()
        return {"recon": recon, "kl1": kl1m, "kl2": kl2m, "elbo": -(recon + kl1m + kl2m).detach(),
                "z": z1, "mu": mu1, "log_var": lv1, "kl2_per_dim": kl2_dims.mean(0)}

    def log_importance_weights(self, x: Tensor, k: int, c: Tensor | None = None) -> Tensor:
        """``log p(x, z1, z2) - log q(z1, z2 | x)`` for ``k`` samples; ``[k, B]``."""
        mu1, lv1 = self.encode1(x)
        q1 = diag_normal(mu1, lv1)
        z1 = q1.sample((k,))
        mu2, lv2 = self.encode2(z1)
        q2 = diag_normal(mu2, lv2)
        z2 = q2.sample()
        params = self._decode_samples(z1, None)
        log_lik = self.observation(params).log_prob(x.unsqueeze(0).expand_as(params))
        return (log_lik + self.p_z1(z2).log_prob(z1) + standard_normal_like(mu2).log_prob(z2)
                - q1.log_prob(z1) - q2.log_prob(z2))
