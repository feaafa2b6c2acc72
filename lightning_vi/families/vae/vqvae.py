"""VQ-VAE (van den Oord et al. 2017, "Neural Discrete Representation Learning") with EMA codebook
updates (App. A.1, Eq. 6-8), commitment weight (Eq. 3) and dead-code restart; plus the quantized-latent
purification filter of P35 (VI with latent space quantization for adversarial resilience).

Loss (Eq. 3, codebook term replaced by the EMA update): ``recon + commitment * ||z_e - sg(e)||^2``.
EMA update for code k with assignments ``n_k`` and sums ``s_k`` of the encoder outputs assigned to it::

    N_k <- decay * N_k + (1 - decay) * n_k ;  m_k <- decay * m_k + (1 - decay) * s_k ;  e_k = m_k / N_k

(``N_k`` Laplace-smoothed with ``eps``). A code whose EMA count falls below ``dead_threshold`` is
restarted at a random encoder output of the current batch.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import Likelihood, make_likelihood
from lightning_vi.core.module import VIModule, resolve_part
from lightning_vi.nn import make_decoder, make_encoder
from lightning_vi.registry import FAMILIES


class VectorQuantizerEMA(nn.Module):
    """Nearest-neighbour quantizer with an EMA-updated codebook ``[codebook_size, dim]``."""

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_threshold: float = 1e-3) -> None:
        super().__init__()
        check_range("codebook_size", codebook_size, 1)
        check_range("embedding_dim", dim, 1)
        check_range("decay", decay, 0.0, 1.0, high_open=True)
        self.codebook_size, self.dim, self.decay, self.eps = int(codebook_size), int(dim), decay, eps
        self.dead_threshold = dead_threshold
        init = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", init.clone())
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", init.clone())

    def assign(self, z: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``z`` ``[N, dim]``."""
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.codebook.T + self.codebook.pow(2).sum(1)
        return d.argmin(1)

    @torch.no_grad()
    def ema_update(self, z: Tensor, idx: Tensor) -> Tensor:
        """One EMA step from encoder outputs ``z`` ``[N, dim]`` and their codes; returns restarted codes."""
        onehot = F.one_hot(idx, self.codebook_size).type_as(z)
        n, s = onehot.sum(0), onehot.T @ z
        self.ema_count.mul_(self.decay).add_((1 - self.decay) * n)
        self.ema_sum.mul_(self.decay).add_((1 - self.decay) * s)
        total = self.ema_count.sum()
        count = (self.ema_count + self.eps) / (total + self.codebook_size * self.eps) * total
        self.codebook.copy_(self.ema_sum / count.unsqueeze(1))
        dead = (self.ema_count < self.dead_threshold).nonzero().flatten()
        if len(dead):
            pick = torch.randint(0, z.shape[0], (len(dead),), device=z.device)
            self.codebook[dead] = z[pick]
            self.ema_sum[dead] = z[pick]
            self.ema_count[dead] = 1.0
        return dead

    def forward(self, z: Tensor, update: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize ``z`` ``[..., dim]``; returns (straight-through quantized, codes, commitment loss)."""
        flat = z.reshape(-1, self.dim)
        idx = self.assign(flat)
        if update:
            self.ema_update(flat.detach(), idx)
        q = self.codebook[idx].view_as(z)
        commit = F.mse_loss(z, q.detach())
        return z + (q - z).detach(), idx.view(z.shape[:-1]), commit


@FAMILIES.register("vqvae")
class VQVAE(VIModule):
    """VQ-VAE with ``num_latents`` code vectors per example, EMA codebook and dead-code restart.

    Args:
        input_shape: shape of one example.
        architecture: ``"mlp"`` or ``"conv"`` (default encoder/decoder).
        hidden_dims: MLP hidden widths.
        channels: channels of the stride-2 conv blocks.
        num_latents: discrete latents per example.
        embedding_dim: code vector size.
        codebook_size: number of codes (>= 1).
        commitment: weight of ``||z_e - sg(e)||^2``.
        decay: EMA decay.
        dead_threshold: EMA count under which a code is restarted.
        likelihood: ``"gaussian"`` (fixed std ``obs_std``), ``"bernoulli"`` or a ``Likelihood`` part.
        obs_std: std of the Gaussian likelihood.
        encoder: module ``x -> [B, num_latents * embedding_dim]`` (None = built from ``architecture``).
        decoder: module ``[B, num_latents * embedding_dim] -> [B, *input_shape]`` (None = built).
        conv_channels: deprecated name of ``channels``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    #: the fixed observation std was a persistent buffer before it moved into the likelihood part
    renamed_state_keys = (("log_obs_std", None),)

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        architecture: str = "mlp",
        hidden_dims: list[int] = (256, 128),
        channels: list[int] = (32, 64),
        num_latents: int = 4,
        embedding_dim: int = 8,
        codebook_size: int = 32,
        commitment: float = 0.25,
        decay: float = 0.99,
        dead_threshold: float = 1e-3,
        likelihood: Union[str, Likelihood] = "gaussian",
        obs_std: float = 0.1,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        conv_channels: Optional[list[int]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        channels = self.rename_argument("conv_channels", conv_channels, "channels", channels, (32, 64))
        check_choice("architecture", architecture, ("mlp", "conv"))
        check_range("codebook_size", codebook_size, 1)
        check_range("num_latents", num_latents, 1)
        check_range("embedding_dim", embedding_dim, 1)
        check_range("decay", decay, 0.0, 1.0, high_open=True)
        check_range("commitment", commitment, 0.0)
        check_range("obs_std", obs_std, 0.0, low_open=True)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.event_dims = len(self.input_shape)
        self.num_latents, self.embedding_dim, self.codebook_size = num_latents, embedding_dim, codebook_size
        dz = num_latents * embedding_dim
        self.encoder = resolve_part(encoder, "encoder")
        if self.encoder is None:
            self.encoder = make_encoder(architecture, self.input_shape, dz, hidden_dims, channels)
        self.decoder = resolve_part(decoder, "decoder")
        if self.decoder is None:
            self.decoder = make_decoder(architecture, dz, self.input_shape, hidden_dims, channels)
        self.quantizer = VectorQuantizerEMA(codebook_size, embedding_dim, decay, dead_threshold=dead_threshold)
        self.likelihood = (make_likelihood(likelihood, obs_std) if isinstance(likelihood, str)
                           else resolve_part(likelihood, "likelihood"))
        self.term_weights = {"recon": 1.0, "commitment": commitment}

    def encode_continuous(self, x: Tensor) -> Tensor:
        return self.encoder(x).view(x.shape[0], self.num_latents, self.embedding_dim)

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Quantized latents ``[B, num_latents, dim]`` and codes ``[B, num_latents]``."""
        q, idx, _ = self.quantizer(self.encode_continuous(x))
        return q, idx

    def decode(self, q: Tensor) -> Tensor:
        return self.decoder(q.flatten(1))

    def mean(self, params: Tensor) -> Tensor:
        return self.likelihood.mean(params)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction through the quantized latent (the purification map of P35)."""
        return self.mean(self.decode(self.quantize(x)[0]))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Decodes uniformly drawn codes (no learned prior)."""
        idx = torch.randint(0, self.codebook_size, (n, self.num_latents), generator=generator)
        return self.mean(self.decode(self.quantizer.codebook[idx.to(self.device)]))

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        z = self.encode_continuous(x)
        q, idx, commit = self.quantizer(z, update=self.training)
        params = self.decode(q)
        log_px = Independent(self.likelihood(params), self.event_dims).log_prob(x)
        usage = torch.bincount(idx.flatten(), minlength=self.codebook_size).float()
        p = usage / usage.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return {"recon": -log_px.mean(), "commitment": commit, "perplexity": perplexity, "codes": idx}


class VQPurifier(nn.Module):
    """Purification filter (P35): ``classifier(vqvae(x))`` -- project inputs onto the quantized latent's
    reconstructions before any trained classifier, removing small adversarial perturbations.

    Gradients pass the quantizer straight through, so a white-box attacker differentiating this module
    runs BPDA (Athalye et al. 2018). On sklearn digits it beats the bare classifier under L-inf PGD/FGSM
    at eps 0.10 and 0.15, not at 0.05 (numbers in ``docs/vae.md``)."""

    def __init__(self, vqvae: VQVAE, classifier: nn.Module) -> None:
        super().__init__()
        self.vqvae, self.classifier = vqvae, classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.vqvae(x))
