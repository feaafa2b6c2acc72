"""DDMI (Park et al. 2024, "DDMI: Domain-agnostic latent diffusion models for synthesizing high-quality
implicit neural representations"), for images.

Two stages, as in the paper (Sec. 3):

1. The **discrete-to-continuous VAE** (:class:`D2CVAE`, family ``d2c_vae``, Sec. 3.1). A conv encoder maps
   the pixel grid ``x [B, C, H, W]`` to a Gaussian latent *grid* ``z [B, c, H / 2^d, W / 2^d]``. The decoder
   maps ``z`` to *hierarchical positional embeddings* (HPE): ``L`` feature grids (the "hierarchically
   decomposed basis fields"), level ``l`` at resolution ``2^l`` times the latent grid. An image is the
   continuous function

       ``f(p) = MLP([gamma(p), e_0(p), ..., e_{L-1}(p)])``,  ``p in [-1, 1]^2``,

   where ``e_l(p)`` is level ``l`` bilinearly interpolated at ``p`` and ``gamma`` are Fourier features of
   ``p``. Coordinates are ``(x, y)`` with ``(-1, -1)`` the top-left corner *of the image* (not of its first
   pixel): the pixel centres of an ``S x S`` grid are ``(2 j + 1) / S - 1`` (``grid_sample`` with
   ``align_corners=False``), so one function is queried at any resolution. Loss: the negative beta-ELBO
   ``recon + kl_weight * kl`` with a Bernoulli (binary cross-entropy) likelihood of the pixel values in
   [0, 1] at the training grid and the analytic Gaussian KL (the paper's Eq. 4 with a small KL weight).

   ``positional="fixed"`` is the paper's baseline (Sec. 4.4, "fixed PE"): the same MLP, fed fixed Fourier
   features of ``p`` only, with the latent as a *global* code that modulates every hidden layer (FiLM);
   :func:`fixed_baseline_kwargs` sizes it to the adaptive model's parameter count.

2. **Latent diffusion** over the D2C-VAE's latents (:class:`DDMI`, family ``ddmi``, Sec. 3.2): the package's
   :class:`~lightning_vi.families.diffusion.latent_diffusion.LatentDiffusion` with the D2C-VAE as its frozen
   producer (read from ``vae_checkpoint`` at the first build); samples decode to continuous functions,
   rendered at any ``resolution``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.latent_diffusion import LatentDiffusion
from lightning_vi.registry import FAMILIES

__all__ = ["D2CVAE", "DDMI", "pixel_coords", "check_coords", "fourier_features", "fixed_baseline_kwargs", "psnr",
           "POSITIONAL"]

POSITIONAL = ("adaptive", "fixed")
DOMAIN = (-1.0, 1.0)


def pixel_coords(height: int, width: int | None = None, device=None) -> Tensor:
    """``[H * W, 2]`` ``(x, y)`` coordinates of the pixel centres of an ``H x W`` grid on [-1, 1]^2 (row-major)."""
    width = height if width is None else width
    ys = (2 * torch.arange(height, device=device, dtype=torch.float32) + 1) / height - 1
    xs = (2 * torch.arange(width, device=device, dtype=torch.float32) + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


def check_coords(coords: Tensor) -> None:
    """``ValueError`` unless ``coords [..., 2]`` lie in the function's domain [-1, 1]^2."""
    if coords.shape[-1] != 2:
        raise ValueError(f"query coordinates have shape {tuple(coords.shape)}; expected (..., 2) (x, y) pairs")
    lo, hi = DOMAIN
    if not bool(torch.isfinite(coords).all()) or bool((coords < lo).any() or (coords > hi).any()):
        bad = coords[~((coords >= lo) & (coords <= hi)).all(-1)]
        raise ValueError(f"query coordinates must lie in [{lo}, {hi}]^2 (x, y; pixel centres of an S x S grid are "
                         f"(2j + 1) / S - 1); got {bad.shape[0]} outside, e.g. {bad[0].tolist()}, range "
                         f"[{float(coords.min()):.4g}, {float(coords.max()):.4g}]")


def fourier_features(coords: Tensor, num_frequencies: int) -> Tensor:
    """``[p, sin(2^k pi p), cos(2^k pi p)]_{k < K}`` of ``coords [..., 2]``: ``[..., 2 + 4 K]`` (NeRF's gamma)."""
    if num_frequencies == 0:
        return coords
    freqs = math.pi * 2.0 ** torch.arange(num_frequencies, device=coords.device, dtype=coords.dtype)
    arg = (coords[..., None, :] * freqs[:, None]).flatten(-2)
    return torch.cat([coords, torch.sin(arg), torch.cos(arg)], -1)


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1] (``[B, ...]`` -> ``[B]``)."""
    mse = (pred - target).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


class _Encoder(nn.Module):
    """Pixel grid ``[B, C, H, W]`` -> ``[B, 2 c, H / 2^d, W / 2^d]`` (mean and log-variance of the latent grid)."""

    def __init__(self, in_channels: int, channels: list[int], latent_channels: int) -> None:
        super().__init__()
        layers, c = [nn.Conv2d(in_channels, channels[0], 3, padding=1), nn.SiLU()], channels[0]
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, 4, stride=2, padding=1), nn.SiLU()]
            c = c_out
        layers.append(nn.Conv2d(c, 2 * latent_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _HierarchicalEmbeddings(nn.Module):
    """Latent grid -> ``levels`` feature grids (HPE, DDMI Sec. 3.1): level ``l`` at ``2^l`` x the latent resolution."""

    def __init__(self, latent_channels: int, width: int, levels: int, embed_channels: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(latent_channels, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.ups = nn.ModuleList(nn.Sequential(nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.SiLU(),
                                               nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
                                 for _ in range(levels - 1))
        self.heads = nn.ModuleList(nn.Conv2d(width, embed_channels, 1) for _ in range(levels))

    def forward(self, z: Tensor) -> list[Tensor]:
        h = self.stem(z)
        grids = [self.heads[0](h)]
        for up, head in zip(self.ups, self.heads[1:]):
            h = up(h)
            grids.append(head(h))
        return grids


class _GlobalCode(nn.Module):
    """Fixed-PE baseline: the flattened latent -> FiLM scales and shifts of every MLP hidden layer."""

    def __init__(self, latent_dim: int, width: int, mlp_hidden: int, mlp_depth: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2 * mlp_hidden * mlp_depth))
        self.mlp_hidden, self.mlp_depth = mlp_hidden, mlp_depth

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.flatten(1)).view(z.shape[0], self.mlp_depth, 2, self.mlp_hidden)


@FAMILIES.register("d2c_vae")
class D2CVAE(VIModule):
    """Discrete-to-continuous VAE: pixel grid -> latent grid -> continuous function on [-1, 1]^2 (DDMI Sec. 3.1).

    Args:
        input_shape: ``[C, H, W]`` of the training images (values in [0, 1]).
        latent_channels: channels ``c`` of the latent grid.
        encoder_channels: widths of the stride-2 conv blocks; their number ``d`` sets the latent grid size
            ``H / 2^d``. The flat latent (``encode``/``decode``, the diffusion's space) has
            ``latent_dim = c * (H / 2^d) * (W / 2^d)`` entries.
        positional: ``adaptive`` (the HPE of DDMI) or ``fixed`` (baseline: Fourier features + a global FiLM code).
        levels: HPE levels ``L`` (>= 1), from the latent resolution up by factors of 2.
        embed_channels: channels of each HPE level.
        decoder_width: conv width of the HPE decoder (``adaptive``) or of the global-code MLP (``fixed``).
        num_frequencies: Fourier frequencies ``K`` of the coordinate features (``2^k pi``, ``k < K``; 0 = the raw
            coordinates only, the default: the embeddings carry the detail, and frequencies near the grid's
            Nyquist rate alias between pixel centres). The fixed baseline needs them (``log2(H)`` octaves).
        mlp_hidden: width of the coordinate MLP. mlp_depth: its hidden layers.
        kl_weight: weight (> 0) of the KL term.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(self, input_shape: list[int] = (1, 16, 16), latent_channels: int = 4,
                 encoder_channels: list[int] = (32, 64), positional: str = "adaptive", levels: int = 3,
                 embed_channels: int = 16, decoder_width: int = 32, num_frequencies: int = 0, mlp_hidden: int = 64,
                 mlp_depth: int = 3, kl_weight: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        check_choice("positional", positional, POSITIONAL)
        check_range("kl_weight", kl_weight, 0.0, low_open=True)
        check_range("levels", levels, 1)
        for name, v in (("latent_channels", latent_channels), ("embed_channels", embed_channels),
                        ("decoder_width", decoder_width), ("mlp_hidden", mlp_hidden), ("mlp_depth", mlp_depth)):
            check_range(name, v, 1)
        check_range("num_frequencies", num_frequencies, 0)
        self.input_shape = tuple(int(s) for s in input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape={list(input_shape)!r} must be [C, H, W]")
        c, h, w = self.input_shape
        down = 2 ** len(encoder_channels)
        if h % down or w % down:
            raise ValueError(f"input_shape={list(input_shape)!r}: H and W must be multiples of 2^{len(encoder_channels)} "
                             f"= {down} (one halving per encoder_channels entry {list(encoder_channels)})")
        self.latent_shape = (int(latent_channels), h // down, w // down)
        self.latent_dim = math.prod(self.latent_shape)
        self.positional, self.num_frequencies = positional, int(num_frequencies)
        self.kl_weight = float(kl_weight)
        self.encoder = _Encoder(c, list(encoder_channels), latent_channels)
        n_in = 2 + 4 * self.num_frequencies
        if positional == "adaptive":
            self.embeddings = _HierarchicalEmbeddings(latent_channels, decoder_width, levels, embed_channels)
            n_in += levels * embed_channels
        else:
            self.code = _GlobalCode(self.latent_dim, decoder_width, mlp_hidden, mlp_depth)
        self.hidden = nn.ModuleList([nn.Linear(n_in, mlp_hidden)] +
                                    [nn.Linear(mlp_hidden, mlp_hidden) for _ in range(mlp_depth - 1)])
        self.out = nn.Linear(mlp_hidden, c)
        self.term_weights = {"recon": 1.0, "kl": self.kl_weight}

    # -- the VAE interface (what latent_diffusion calls) -------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior ``(mu, log_var)`` of the latent grid, flattened to ``[B, latent_dim]`` each."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu.flatten(1), log_var.clamp(-30.0, 20.0).flatten(1)

    def decode(self, z: Tensor) -> Tensor:
        """Logits ``[B, C, H, W]`` of the function of flat latents ``z`` at the training grid's pixel centres."""
        _, h, w = self.input_shape
        return self.decode_grid(z, h, w)

    def mean(self, params: Tensor) -> Tensor:
        """Pixel values (the Bernoulli means) of decoder logits."""
        return torch.sigmoid(params)

    # -- the continuous decoder ----------------------------------------------------------------
    def positional_embeddings(self, z: Tensor) -> list[Tensor]:
        """The HPE feature grids ``[B, embed_channels, 2^l h, 2^l w]`` of flat latents ``z`` (``adaptive`` only)."""
        return self.embeddings(z.view(-1, *self.latent_shape))

    def query(self, z: Tensor, coords: Tensor) -> Tensor:
        """Logits ``[B, N, C]`` of the functions of ``z [B, latent_dim]`` at ``coords`` (``[N, 2]`` shared or
        ``[B, N, 2]``) in [-1, 1]^2 (``x`` right, ``y`` down)."""
        check_coords(coords)
        b = z.shape[0]
        coords = coords.to(z).expand(b, -1, -1) if coords.ndim == 2 else coords.to(z)
        feats = [fourier_features(coords, self.num_frequencies)]
        film = None
        if self.positional == "adaptive":
            grid = coords.unsqueeze(1)  # [B, 1, N, 2] for grid_sample
            for g in self.positional_embeddings(z):
                e = F.grid_sample(g, grid, mode="bilinear", padding_mode="border", align_corners=False)
                feats.append(e.squeeze(2).transpose(1, 2))  # [B, N, E]
        else:
            film = self.code(z)  # [B, depth, 2, hidden]
        h = torch.cat(feats, -1)
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if film is not None:
                h = h * (1 + film[:, i, 0, None]) + film[:, i, 1, None]
            h = F.silu(h)
        return self.out(h)

    def decode_grid(self, z: Tensor, height: int, width: int | None = None) -> Tensor:
        """Logits ``[B, C, height, width]`` of the functions of ``z`` at the pixel centres of that grid."""
        width = height if width is None else width
        out = self.query(z, pixel_coords(height, width, device=z.device))
        return out.transpose(1, 2).reshape(z.shape[0], -1, height, width)

    @torch.no_grad()
    def render(self, z: Tensor, resolution: int) -> Tensor:
        """Images ``[B, C, r, r]`` in [0, 1]: the functions of ``z`` at any resolution ``r``."""
        check_range("resolution", resolution, 1)
        return self.mean(self.decode_grid(z, int(resolution)))

    def forward(self, x: Tensor, resolution: int | None = None) -> Tensor:
        """Reconstruction (at ``E[z|x]``) rendered at ``resolution`` (default: the training grid)."""
        mu = self.encode(x)[0]
        return self.mean(self.decode(mu) if resolution is None else self.decode_grid(mu, int(resolution)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images from the VAE prior ``z ~ N(0, I)`` (DDMI draws latents from the diffusion model instead)."""
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.mean(self.decode(z))

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        mu, log_var = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        logits = self.decode(z)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
        kl = gaussian_kl(mu, log_var).sum(-1).mean()
        with torch.no_grad():
            quality = psnr(torch.sigmoid(logits), x).mean()
        return {"recon": recon, "kl": kl, "psnr": quality, "z": z}


def fixed_baseline_kwargs(adaptive: D2CVAE, num_frequencies: int | None = None, **overrides: Any) -> dict[str, Any]:
    """Arguments of the ``positional="fixed"`` baseline with the same encoder and MLP as ``adaptive``, Fourier
    features of ``num_frequencies`` octaves (default ``log2(H)``: up to the training grid's Nyquist rate) and
    the global-code width chosen so that its parameter count is the closest to ``adaptive``'s."""
    hp = {k: v for k, v in adaptive.hparams.items() if not k.startswith("_")}
    k = int(math.log2(adaptive.input_shape[-1])) if num_frequencies is None else num_frequencies
    hp.update(positional="fixed", num_frequencies=k, **overrides)
    target = sum(p.numel() for p in adaptive.parameters())

    def size(width: int) -> int:
        return sum(p.numel() for p in D2CVAE(**{**hp, "decoder_width": width}).parameters())

    lo, hi = 1, 4096
    while lo < hi:  # smallest width with at least the target count (the count grows with the width)
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if size(mid) < target else (lo, mid)
    best = min((lo, max(lo - 1, 1)), key=lambda w: abs(size(w) - target))
    return {**hp, "decoder_width": best}


@FAMILIES.register("ddmi")
class DDMI(LatentDiffusion):
    """Latent diffusion over a frozen :class:`D2CVAE` (DDMI Sec. 3.2): ``latent_diffusion`` with the D2C-VAE
    as the producer, whose samples are continuous functions.

    Args:
        vae_checkpoint: path of a ``d2c_vae`` checkpoint (read at the first build; make one with
            ``lvi fit --config configs/diffusion/ddmi_sprites.yaml``). latent_dim, input_shape: checked
            against it. See :class:`LatentDiffusion` and :class:`DDPM` for the other arguments.
    """

    producer_families = ("d2c_vae",)

    @staticmethod
    def producer_make_command(input_shape, latent_dim) -> str:
        cmd = "lvi fit --config configs/diffusion/ddmi_sprites.yaml"
        if [int(s) for s in input_shape] != [1, 16, 16]:
            cmd += f" --model.init_args.input_shape '{[int(s) for s in input_shape]}' --data.init_args.image_size {int(input_shape[-1])}"
        return cmd

    def __init__(self, vae_checkpoint: str = "", latent_dim: int = 64, input_shape: list[int] = (1, 16, 16),
                 **kwargs: Any) -> None:
        super().__init__(vae_checkpoint=vae_checkpoint, latent_dim=latent_dim, input_shape=input_shape, **kwargs)

    @torch.no_grad()
    def sample_latents(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
                       guidance_scale: float | None = None, sampler: str | None = None, steps: int | None = None,
                       eta: float | None = None, use_ema: bool | None = True) -> Tensor:
        """``n`` D2C-VAE latents ``[n, latent_dim]`` from the reverse diffusion (arguments: see :meth:`DDPM.sample`)."""
        if self.num_classes > 0 and y is None:
            y = torch.arange(n, device=self.device) % self.num_classes
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        fn = self.model_fn(y, scale, use_ema=use_ema)
        return self.run_sampler(fn, (n, *self.data_shape), sampler, steps, generator, eta) * self.hparams.latent_scale

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, resolution: int | None = None,
               **kwargs: Any) -> Tensor:
        """``n`` images in [0, 1]: diffusion latents decoded as continuous functions and rendered at
        ``resolution`` (default: the training grid); ``kwargs`` go to :meth:`sample_latents`."""
        z = self.sample_latents(n, generator, **kwargs)
        return self.vae.render(z, self.input_shape[-1] if resolution is None else resolution)
