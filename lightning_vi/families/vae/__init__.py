"""Variational autoencoders: VAE, conditional (CVAE), hierarchical (HVAE), VQ-VAE, context-encoding (ceVAE)."""

from lightning_vi.families.vae.cevae import CEVAE
from lightning_vi.families.vae.cvae import CVAE
from lightning_vi.families.vae.hvae import HVAE
from lightning_vi.families.vae.vae import VAE
from lightning_vi.families.vae.vqvae import VQPurifier, VQVAE

__all__ = ["VAE", "CVAE", "HVAE", "VQVAE", "VQPurifier", "CEVAE"]
