"""Conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured Output Representation using Deep
Conditional Generative Models"; P12) with the linear variant analysed by Dang et al. 2024 (P01).

Model: prior ``p(z|c)`` (standard normal, or a learned Gaussian prior network), decoder ``p(x|z, c)``,
recognition network ``q(z|x, c)``. The loss is P12's hybrid (weighted) bound, Eq. 6-7::

    loss = (1 - gsnn_weight) * (-ELBO_CVAE) + gsnn_weight * (-E_{z ~ p(z|c)} log p(x|z, c))

with ``-ELBO_CVAE = -E_q log p(x|z,c) + kl_weight * KL(q(z|x,c) || p(z|c))`` (Eq. 4). The condition ``c``
is ``batch[condition_key]``: class labels (``condition="label"``, one-hot with ``condition_dim``
classes) or attribute vectors (``condition="vector"`` of size ``condition_dim``).

``architecture="linear"``: linear encoder mean over ``[x, c]`` with a learnable data-independent
diagonal variance and a linear decoder over ``[z, c]``: P01's linear CVAE, whose collapsed dimensions
are those where the eigenvalues of the output covariance left unexplained by ``c`` fall below
``kl_weight * sigma^2`` (see :func:`linear_cvae_collapse_prediction`).

A subclass of :class:`~lightning_vi.families.vae.vae.VAE`: the same parts (its ``encoder`` is called as
``encoder(x, c)``, its ``decoder`` on ``[z, c]``) and objectives, with the hooks ``condition`` and ``prior``.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import Likelihood
from lightning_vi.families.vae.vae import VAE
from lightning_vi.nn import MLP, ConditionalEncoder, ConvEncoder, LinearGaussianEncoder, make_decoder
from lightning_vi.registry import FAMILIES


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
class CVAE(VAE):
    """Conditional VAE on labels or attribute vectors with P12's weighted (hybrid) bound.

    The other arguments are the VAE's (:class:`VAE`).

    Args:
        condition: ``"label"`` (integer class ids) or ``"vector"`` (float attributes).
        condition_dim: number of classes (labels) or attribute size (vectors).
        condition_key: batch key of the condition (``"y"`` by default).
        prior: ``"standard"`` N(0, I) or ``"learned"`` N(mu(c), diag var(c)) (P12's prior network).
        gsnn_weight: weight of the GSNN term in the hybrid loss (needs ``prior="learned"`` if > 0).
        input_shape: shape of one example.
        likelihood: as for ``vae`` (default ``"bernoulli"``).
    """

    renamed_state_keys = (("encoder_x.", "encoder.features."), ("encoder_head.", "encoder.head."),
                          ("enc_log_var", "encoder.head.log_var"), *VAE.renamed_state_keys)

    def __init__(
        self,
        input_shape: list[int] = (1, 32, 32),
        condition: str = "label",
        condition_dim: int = 3,
        condition_key: str = "y",
        prior: str = "standard",
        gsnn_weight: float = 0.0,
        likelihood: Union[str, Likelihood] = "bernoulli",
        **kwargs: Any,
    ) -> None:
        check_choice("condition", condition, ("label", "vector"))
        check_choice("prior", prior, ("standard", "learned"))
        check_range("condition_dim", condition_dim, 1)
        check_range("gsnn_weight", gsnn_weight, 0.0, 1.0)
        if gsnn_weight > 0 and prior != "learned":
            raise ValueError(f"gsnn_weight={gsnn_weight!r} needs prior='learned' (got prior={prior!r})")
        # plain attributes read by the default_* hooks during VAE.__init__
        self.condition_dim, self.condition_kind, self.condition_key = int(condition_dim), condition, condition_key
        super().__init__(input_shape=input_shape, likelihood=likelihood, **kwargs)
        self.save_hyperparameters()
        linear = self.architecture == "linear"
        self.prior_net = MLP(condition_dim, [] if linear else [64], 2 * self.latent_dim) if prior == "learned" else None
        self.gsnn_weight = gsnn_weight
        w = 1.0 - gsnn_weight
        self.term_weights = {name: w * v for name, v in self.term_weights.items()}
        if gsnn_weight > 0:
            self.term_weights["gsnn_recon"] = gsnn_weight

    def default_encoder(self, architecture: str, latent_dim: int, hidden_dims: list[int], channels: list[int]) -> nn.Module:
        """``q(z|x, c)``: features of ``x`` (flattened, or a conv encoder of width ``hidden_dims[-1]``) and a head on ``[features, c]``."""
        d_in, dc = math.prod(self.input_shape), self.condition_dim
        if architecture == "conv":
            if len(self.input_shape) != 3:
                raise ValueError(f"architecture='conv' needs input_shape [C, H, W]; got {list(self.input_shape)}")
            width = list(hidden_dims)[-1] if hidden_dims else 128
            return ConditionalEncoder(ConvEncoder(self.input_shape, channels, width), MLP(width + dc, [width], 2 * latent_dim))
        if architecture == "linear":
            return ConditionalEncoder(nn.Flatten(1), LinearGaussianEncoder(d_in + dc, latent_dim))
        check_choice("architecture", architecture, ("mlp", "conv", "linear"))
        return ConditionalEncoder(nn.Flatten(1), MLP(d_in + dc, hidden_dims, 2 * latent_dim))

    def default_decoder(self, architecture: str, latent_dim: int, hidden_dims: list[int], channels: list[int]) -> nn.Module:
        """``p(x|z, c)`` on ``[z, c]``."""
        return make_decoder(architecture, latent_dim + self.condition_dim, self.input_shape, hidden_dims, channels)

    # -- condition -----------------------------------------------------------------------------
    def condition_vector(self, c: Tensor) -> Tensor:
        """Validate the condition and return it as ``[B, condition_dim]`` floats (one-hot for labels)."""
        key = f"batch[{self.condition_key!r}]"
        if self.condition_kind == "label":
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

    def condition(self, batch: dict[str, Any]) -> Tensor:
        key = self.condition_key
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
        return super().encode(x, x.new_zeros(x.shape[0], self.condition_dim) if c is None else c)

    def prior(self, mu: Tensor | None, c: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """``(mu, log_var)`` of p(z|c) (``None, None`` for the standard normal prior)."""
        if self.prior_net is None:
            return None, None
        mu, log_var = self.prior_net(c).chunk(2, dim=-1)
        return mu, log_var.clamp(-10.0, 10.0)

    def decode(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        return super().decode(z, z.new_zeros(z.shape[0], self.condition_dim) if c is None else c)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        cv = None if c is None else self.condition_vector(c)
        return self.mean(self.decode(self.encode(x, cv)[0], cv))

    @torch.no_grad()
    def sample(self, n: int, condition: Tensor | list | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``n`` samples for the requested condition (a label, labels ``[n]``, or vectors ``[n, d]``).

        Without a condition, labels cycle through the classes (zeros for vector conditions).
        """
        if condition is None:
            condition = (torch.arange(n) % self.condition_dim if self.condition_kind == "label"
                         else torch.zeros(n, self.condition_dim))
        condition = torch.as_tensor(condition)
        if self.condition_kind == "label" and condition.ndim == 0:
            condition = condition.repeat(n)
        c = self.condition_vector(condition).to(self.device)
        if c.shape[0] != n:
            raise ValueError(f"condition has {c.shape[0]} rows; expected n={n} (one per sample) or a single label")
        eps = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        mu, log_var = self.prior(None, c)
        return self.mean(self.decode(eps if mu is None else mu + eps * torch.exp(0.5 * log_var), c))

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The VAE terms with p(z|c), plus the GSNN reconstruction from z ~ p(z|c) (P12, Eq. 6)."""
        out = super().objective(batch)
        if self.gsnn_weight > 0:
            x, c = batch["x"], self.condition(batch)
            p_mu, p_lv = self.prior(None, c)
            zp = p_mu + torch.randn_like(p_mu) * torch.exp(0.5 * p_lv)
            out["gsnn_recon"] = -self.observation(self.decode(zp, c)).log_prob(x).mean()
        return out
