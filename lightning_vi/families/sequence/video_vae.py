"""Video VAE compressing time and space, after OD-VAE (Chen et al. 2024, "OD-VAE: An Omni-dimensional Video
Compressor for Improving Latent Video Diffusion Model").

Encoder: 3D convolutions with stride 2 in time (``log2 time_factor`` times) and space (``log2 space_factor``
times) down to a Gaussian latent ``[latent_channels, T/ct, H/cs, W/cs]``. Decoder: *causal* 3D convolutions
(time padding on the left only) with nearest-neighbour up-sampling, so frame ``t`` depends on latent frames
``<= t`` only. Temporal tiling (OD-VAE Sec. 3.4): ``decode(z, chunk=k)`` decodes ``k`` latent frames at a time
and carries each causal conv's last ``kernel_t - 1`` input frames to the next chunk, so memory is bounded by
the chunk and the result equals full decoding exactly (no blending seams).
Loss: ``BCE(x, decoder(z)) + kl_weight KL(q(z|x) || N(0, I))`` (the VAE part of their objective, without the
perceptual/GAN terms).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl_per_dim
from lightning_vi.core.module import VIModule
from lightning_vi.registry import FAMILIES


def psnr(x_hat: Tensor, x: Tensor, max_value: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB over the whole tensor."""
    mse = (x_hat - x).pow(2).mean().clamp_min(1e-12)
    return 10 * torch.log10(max_value**2 / mse)


class CausalConv3d(nn.Module):
    """3D convolution padded on the left in time; ``forward(x, cache)`` returns ``(y, new_cache)``."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3) -> None:
        super().__init__()
        self.kt = kernel
        self.conv = nn.Conv3d(c_in, c_out, kernel, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: Tensor, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pad = self.kt - 1
        if cache is None:
            cache = x.new_zeros(*x.shape[:2], pad, *x.shape[3:])
        full = torch.cat([cache, x], 2)
        return self.conv(full), full[:, :, full.shape[2] - pad:]


@FAMILIES.register("video_vae")
class VideoVAE(VIModule):
    """3D-conv video VAE with time and space compression and chunked (temporal-tiling) decoding.

    Args:
        in_channels: channels ``C`` of the video ``[C, T, S, S]``.
        frames: frames ``T``.
        image_size: side ``S`` of a frame.
        time_factor: time compression factor (a power of 2 that divides ``frames``).
        space_factor: space compression factor (a power of 2 that divides ``image_size``).
        latent_channels: channels of the latent.
        channels: width of the conv blocks.
        kl_weight: weight of ``KL(q(z|x) || N(0, I))``.
        decode_chunk: latent frames per chunk in ``forward`` (0 = decode all at once).
        beta: deprecated name of ``kl_weight``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        frames: int = 8,
        image_size: int = 16,
        time_factor: int = 2,
        space_factor: int = 4,
        latent_channels: int = 4,
        channels: int = 32,
        kl_weight: float = 1e-3,
        decode_chunk: int = 0,
        beta: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, 1e-3)
        for name, f in (("time_factor", time_factor), ("space_factor", space_factor)):
            if f < 1 or f & (f - 1):
                raise ValueError(f"{name}={f!r} is not allowed; use a power of 2 (1, 2, 4, ...)")
        self.check_divisible(frames, image_size, image_size, time_factor, space_factor)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("decode_chunk", decode_chunk, 0)
        self.save_hyperparameters()
        self.input_shape = (in_channels, frames, image_size, image_size)
        self.n_t, self.n_s = int(math.log2(time_factor)), int(math.log2(space_factor))
        levels = max(self.n_t, self.n_s)
        enc: list[nn.Module] = [nn.Conv3d(in_channels, channels, 3, padding=1), nn.SiLU()]
        for i in range(levels):
            stride = (2 if i < self.n_t else 1, 2 if i < self.n_s else 1, 2 if i < self.n_s else 1)
            enc += [nn.Conv3d(channels, channels, 3, stride=stride, padding=1), nn.SiLU()]
        enc.append(nn.Conv3d(channels, 2 * latent_channels, 1))
        self.encoder = nn.Sequential(*enc)
        self.dec_in = CausalConv3d(latent_channels, channels)
        self.dec_blocks = nn.ModuleList(CausalConv3d(channels, channels) for _ in range(levels))
        self.dec_out = CausalConv3d(channels, in_channels)
        # up-sampling factors of the decoder levels (mirror of the encoder)
        self.up = [(2 if i < self.n_t else 1, 2 if i < self.n_s else 1) for i in reversed(range(levels))]
        self.term_weights = {"recon": 1.0, "kl": kl_weight}

    @staticmethod
    def check_divisible(frames: int, height: int, width: int, time_factor: int, space_factor: int) -> None:
        for name, size, f, fname in (("frames", frames, time_factor, "time_factor"),
                                     ("height", height, space_factor, "space_factor"),
                                     ("width", width, space_factor, "space_factor")):
            if size % f:
                raise ValueError(f"video {name}={size} is not divisible by {fname}={f}; allowed: multiples of {f}")

    # -- model ---------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim != 5:
            raise ValueError(f"video batch has shape {tuple(x.shape)}; expected [B, C, T, H, W]")
        self.check_divisible(x.shape[2], x.shape[3], x.shape[4], self.hparams.time_factor, self.hparams.space_factor)
        mu, log_var = self.encoder(x).chunk(2, 1)
        return mu, log_var.clamp(-12, 8)

    def _decode(self, z: Tensor, caches: list[Tensor | None]) -> tuple[Tensor, list[Tensor]]:
        new = []
        h, c = self.dec_in(z, caches[0])
        new.append(c)
        h = F.silu(h)
        for i, (block, (ft, fs)) in enumerate(zip(self.dec_blocks, self.up)):
            h = F.interpolate(h, scale_factor=(ft, fs, fs), mode="nearest")
            h, c = block(h, caches[i + 1])
            new.append(c)
            h = F.silu(h)
        h, c = self.dec_out(h, caches[-1])
        new.append(c)
        return h, new

    def decode(self, z: Tensor, chunk: int = 0) -> Tensor:
        """Logits ``[B, C, T, H, W]``; ``chunk > 0`` decodes ``chunk`` latent frames at a time (bounded memory)."""
        caches: list[Tensor | None] = [None] * (len(self.dec_blocks) + 2)
        if chunk <= 0 or chunk >= z.shape[2]:
            return self._decode(z, caches)[0]
        outs = []
        for part in z.split(chunk, dim=2):  # over time chunks, each batched
            y, caches = self._decode(part, caches)
            outs.append(y)
        return torch.cat(outs, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction (probabilities) from the posterior mean, decoded in ``decode_chunk`` chunks."""
        return torch.sigmoid(self.decode(self.encode(x)[0], self.hparams.decode_chunk))

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"] if isinstance(batch, dict) else batch
        mu, log_var = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        logits = self.decode(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
        kl = gaussian_kl_per_dim(mu, log_var).flatten(1).sum(1).mean()
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl), "psnr": psnr(torch.sigmoid(logits).detach(), x),
                "z": z}

    @property
    def compression(self) -> float:
        """Input elements per latent element."""
        c, t, h, w = self.input_shape
        lat = self.hparams.latent_channels * (t // self.hparams.time_factor) * (h // self.hparams.space_factor) ** 2
        return c * t * h * w / lat

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        c, t, h, w = self.input_shape
        shape = (n, self.hparams.latent_channels, t // self.hparams.time_factor, h // self.hparams.space_factor,
                 w // self.hparams.space_factor)
        return torch.sigmoid(self.decode(torch.randn(shape, generator=generator).to(self.device)))
