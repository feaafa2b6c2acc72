"""Learned lossy image compression (Ballé et al. 2017's transform-coding VAE) with the vectorized
multivariate Gaussian mixture prior of P44 (Zhu et al. 2022) or a factorized univariate baseline.

    y = g_a(x) ; y_tilde = y + u, u ~ U(-1/2, 1/2)  (training)   y_hat = round(y)  (evaluation, coding)
    x_hat = g_s(y_tilde or y_hat)
    loss = R + lambda * D,   R = -log2 P(y) / (number of pixels)  [bits per pixel],  D = MSE(x, x_hat)

``D`` is the mean squared error of images in ``[0, 1]`` (PSNR = -10 log10 D), so ``lmbda = 100`` trades
one bit per pixel against an MSE of 0.01. Pixels are counted per image position (``H * W``), not per
channel. The latent of one image is ``num_groups`` vectors of ``group_dim`` channels; the prior's
probability mass ``P`` is defined in :mod:`lightning_vi.families.compression.priors`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range, check_shape
from lightning_vi.core.module import VIModule, resolve_part
from lightning_vi.families.compression import coder
from lightning_vi.families.compression.priors import FactorizedPrior, MVGMPrior
from lightning_vi.nn import make_decoder, make_encoder
from lightning_vi.registry import FAMILIES


@FAMILIES.register("compression_vae")
class CompressionVAE(VIModule):
    """Learned image compression (P44): MV-GMM or factorized prior, R + lambda D, range-coded bitstreams.

    Analysis/synthesis transforms, uniform-noise quantisation in training and rounding at test, and a
    constriction range coder under a vectorized MV-GMM (``prior="mvgm"``) or a factorized prior.

    Args:
        input_shape: ``[C, H, W]`` of one image, pixels in ``[0, 1]``.
        lmbda: distortion weight ``lambda`` (> 0) of ``bpp + lambda * MSE``.
        prior: ``"mvgm"`` (vectorized multivariate Gaussian mixture) or ``"factorized"``.
        num_groups: ``M``, latent vectors (codebooks) per image.
        group_dim: ``d``, channels per latent vector.
        num_components: codewords per codebook (mvgm) or mixture components per channel (factorized).
        covariance: ``"full"`` (learned Cholesky, chain-rule discretisation) or ``"diag"`` (mvgm only).
        max_abs_latent: ``R``; quantised latents are clipped to ``[-R, R]``, the coder's support.
        architecture: ``"mlp"`` or ``"conv"`` transforms (``lightning_vi.nn`` factories).
        hidden_dims: MLP widths; channels: conv channels.
        latent_gain: fixed factor on ``g_a``'s output (and ``1 / gain`` on ``g_s``'s input): the latents start
            ``gain`` times larger relative to the unit quantisation bin, so high-rate models train faster.
        code_in_test: in ``trainer.test`` also write each batch's bitstream and log its size as ``bpp_file``.
        encoder, decoder: custom ``g_a: x -> [B, M * d]`` and ``g_s: [B, M * d] -> x``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr``, ...).
    """

    requires = ("constriction",)  # the entropy coder; training and the rate estimate work without it

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        lmbda: float = 100.0,
        prior: str = "mvgm",
        num_groups: int = 2,
        group_dim: int = 4,
        num_components: int = 32,
        covariance: str = "full",
        max_abs_latent: int = 30,
        architecture: str = "mlp",
        hidden_dims: list[int] = (256, 128),
        channels: list[int] = (32, 64),
        latent_gain: float = 1.0,
        code_in_test: bool = True,
        encoder: Optional[nn.Module] = None,
        decoder: Optional[nn.Module] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("lmbda", lmbda, 0.0, low_open=True)
        check_choice("prior", prior, ("mvgm", "factorized"))
        check_choice("covariance", covariance, ("full", "diag"))
        check_choice("architecture", architecture, ("mlp", "conv"))
        check_range("max_abs_latent", max_abs_latent, 1, 65535)
        check_range("latent_gain", latent_gain, 0.0, low_open=True)
        if len(input_shape) != 3:
            raise ValueError(f"input_shape={list(input_shape)} must be [channels, height, width]")
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.lmbda, self.prior_kind, self.max_abs = float(lmbda), prior, int(max_abs_latent)
        self.code_in_test, self.latent_gain = code_in_test, float(latent_gain)
        self.num_pixels = self.input_shape[1] * self.input_shape[2]
        self.latent_dim = int(num_groups) * int(group_dim)
        self.encoder = resolve_part(encoder, "encoder")
        if self.encoder is None:
            self.encoder = make_encoder(architecture, self.input_shape, self.latent_dim, hidden_dims, channels)
        self.decoder = resolve_part(decoder, "decoder")
        if self.decoder is None:
            self.decoder = make_decoder(architecture, self.latent_dim, self.input_shape, hidden_dims, channels)
        if prior == "mvgm":
            self.prior = MVGMPrior(num_groups, group_dim, num_components, covariance)
        else:
            self.prior = FactorizedPrior(self.latent_dim, num_components)
        self.term_weights = {"bpp": 1.0, "mse": self.lmbda}

    # -- transforms and quantisation ------------------------------------------------------------
    def check_images(self, x: Tensor) -> None:
        try:
            check_shape("images", x, (None, *self.input_shape))
        except ValueError as err:
            raise ValueError(f"{err}: this model compresses images of shape {list(self.input_shape)} "
                             "(input_shape)") from None

    def analysis(self, x: Tensor) -> Tensor:
        """``g_a``: images -> continuous latents ``[B, M, d]`` (the prior's group layout)."""
        return self.latent_gain * self.encoder(x).view(x.shape[0], *self.prior.group_shape)

    def synthesis(self, y: Tensor) -> Tensor:
        """``g_s``: latents ``[B, M, d]`` -> images in ``[0, 1]`` (a sigmoid output)."""
        return torch.sigmoid(self.decoder(y.reshape(y.shape[0], -1).to(self.dtype) / self.latent_gain))

    def quantize(self, y: Tensor, noise: bool) -> Tensor:
        """Additive uniform noise ``U(-1/2, 1/2)`` (training proxy) or rounding (test), clipped to ``[-R, R]``."""
        if noise:
            return y + torch.rand_like(y) - 0.5
        return torch.round(y).clamp(-self.max_abs, self.max_abs)

    def bits(self, y: Tensor) -> Tensor:
        """``-log2 P(y)`` per image ``[B]`` under the prior."""
        return -self.prior.log_prob(y).sum(-1) / math.log(2.0)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction through rounded latents."""
        return self.synthesis(self.quantize(self.analysis(x), noise=False))

    # -- objective --------------------------------------------------------------------------------
    def objective(self, batch: Any) -> dict[str, Tensor]:
        x = batch["x"] if isinstance(batch, dict) else batch
        y = self.analysis(x)
        y_q = self.quantize(y, noise=self.training)
        x_hat = self.synthesis(y_q)
        bpp = self.bits(y_q).mean() / self.num_pixels
        mse = F.mse_loss(x_hat, x)
        psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
        return {"bpp": bpp, "mse": mse, "psnr": psnr, "rd": bpp + self.lmbda * mse, "y": y_q}

    def test_terms(self, batch: Any) -> dict[str, Tensor]:
        if not self.code_in_test:
            return {}
        x = batch["x"] if isinstance(batch, dict) else batch
        data = self.compress(x)
        return {"bpp_file": torch.tensor(8.0 * len(data) / (x.shape[0] * self.num_pixels))}

    # -- real bitstreams --------------------------------------------------------------------------
    @torch.no_grad()
    def quantized_latents(self, x: Tensor) -> Tensor:
        self.check_images(x)
        return self.quantize(self.analysis(x), noise=False).double()

    @torch.no_grad()
    def estimated_bits(self, x: Tensor) -> float:
        """Model rate of the rounded latents of ``x`` (float64), in bits, the number the file should match."""
        return float(self.bits(self.quantized_latents(x)).sum())

    @torch.no_grad()
    def compress(self, x: Tensor) -> bytes:
        """Encode images ``[B, *input_shape]`` into one bitstream (header + range-coded latents)."""
        y_hat = self.quantized_latents(x)
        words = coder.encode_latents(self.prior, y_hat, self.max_abs)
        return coder.pack(words, self.prior_kind, self.max_abs, x.shape[0])

    @torch.no_grad()
    def decompress(self, data: bytes) -> tuple[Tensor, Tensor]:
        """Decode a bitstream of :meth:`compress`: (integer latents ``[B, M, d]``, reconstructions)."""
        words, batch = coder.unpack(data, self.prior_kind, self.max_abs)
        y_hat = coder.decode_latents(self.prior, words, batch, self.max_abs, self.device)
        return y_hat, self.synthesis(y_hat)
