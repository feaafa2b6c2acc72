"""Variational autoencoders."""

from lightning_vi.families.vae.vae import VAE

__all__ = ["VAE"]
