"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models", Eq. 2): the DDPM loss on ``z = E(x) / latent_scale`` of a frozen, trained VAE; samples are
decoded by the VAE. The VAE checkpoint is read by path (``vae_checkpoint``) at the first build only;
the VAE is then a frozen submodule (see :mod:`producer`), so the model's own checkpoint is complete.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.producer import FrozenProducers, build_producer, read_producer, vae_make_command
from lightning_vi.registry import FAMILIES


def producer_vae(consumer: str, vae_checkpoint: str, vae_config: dict | None, input_shape, latent_dim: int | None,
                 families: tuple[str, ...] = ("vae",), make: str | None = None):
    """``(frozen VAE, spec)``: rebuilt from ``vae_config`` (a stored spec) or read from ``vae_checkpoint``
    (written by one of ``families``; ``make``: the command that writes one, default a ``vae`` config's)."""
    if vae_config:
        return build_producer(vae_config), dict(vae_config)
    shapes = {"input_shape": list(input_shape)} | ({} if latent_dim is None else {"latent_dim": int(latent_dim)})
    return read_producer(vae_checkpoint, arg="vae_checkpoint", consumer=consumer, families=families,
                         make=make or vae_make_command(input_shape, latent_dim), shapes=shapes)


@FAMILIES.register("latent_diffusion")
class LatentDiffusion(FrozenProducers, DDPM):
    """DDPM over the posterior means of a trained VAE (see :class:`DDPM` for the diffusion args).

    Args:
        vae_checkpoint: path of a ``vae`` checkpoint (read at the first build). latent_dim: its latent
            size (checked). input_shape: image shape (checked).
        latent_scale: latents are divided by this before diffusion (LDM's scale factor).
        vae_config: written at the first build (the VAE's family, class path and hyper-parameters);
            leave it unset. With it the VAE is rebuilt without ``vae_checkpoint``.
    """

    producers = ("vae",)
    #: Families whose checkpoints can be the producer (a subclass such as ``ddmi`` names its own VAE family).
    producer_families: tuple[str, ...] = ("vae",)

    @staticmethod
    def producer_make_command(input_shape, latent_dim: int) -> str:
        """The command that writes a producer checkpoint of this shape (named in the missing-file error)."""
        return vae_make_command(input_shape, latent_dim)

    def __init__(self, vae_checkpoint: str = "", latent_dim: int = 8, latent_scale: float = 1.0,
                 input_shape: list[int] = (1, 8, 8), vae_config: dict | None = None, **kwargs: Any) -> None:
        vae, spec = producer_vae(FAMILIES.name_of(type(self)) or "latent_diffusion", vae_checkpoint, vae_config, input_shape, latent_dim,
                                 self.producer_families, self.producer_make_command(input_shape, latent_dim))
        self._latent_dim = int(latent_dim)
        super().__init__(input_shape=input_shape, **kwargs)
        self.save_hyperparameters()
        self.hparams["vae_config"] = spec
        self.vae = vae

    def model_shape(self) -> tuple[int, ...]:
        return (self._latent_dim,)

    def to_model_space(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.vae.encode(x)[0] / self.hparams.latent_scale

    def from_model_space(self, z: Tensor) -> Tensor:
        with torch.no_grad():
            return self.vae.mean(self.vae.decode(z * self.hparams.latent_scale))
