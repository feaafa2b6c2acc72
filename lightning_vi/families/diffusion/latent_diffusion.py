"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Eq. 2): the DDPM loss on ``z = E(x) / latent_scale`` of a frozen, trained VAE; samples are
decoded by the VAE. The VAE checkpoint is given by path (``vae_checkpoint``); ``latent_dim`` must
match it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.vae_checkpoint import load_vae
from lightning_vi.registry import FAMILIES


@FAMILIES.register("latent_diffusion")
class LatentDiffusion(DDPM):
    """DDPM over the posterior means of a trained VAE (see :class:`DDPM` for the diffusion args).

    Args:
        vae_checkpoint: path of a ``VAE`` checkpoint. latent_dim: its latent size (checked).
        latent_scale: latents are divided by this before diffusion (LDM's scale factor).
        input_shape: image shape (checked against the VAE).
    """

    def __init__(self, vae_checkpoint: str = "", latent_dim: int = 8, latent_scale: float = 1.0,
                 input_shape: list[int] = (1, 8, 8), **kwargs: Any) -> None:
        self._vae = [load_vae(vae_checkpoint, latent_dim, tuple(input_shape))]  # list: not a submodule
        self._latent_dim = int(latent_dim)
        super().__init__(input_shape=input_shape, **kwargs)
        self.save_hyperparameters()

    @property
    def vae(self):
        return self._vae[0].to(self.device)

    def model_shape(self) -> tuple[int, ...]:
        return (self._latent_dim,)

    def to_model_space(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.vae.encode(x)[0] / self.hparams.latent_scale

    def from_model_space(self, z: Tensor) -> Tensor:
        with torch.no_grad():
            return self.vae.mean(self.vae.decode(z * self.hparams.latent_scale))
