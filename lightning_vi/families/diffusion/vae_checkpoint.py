"""Loading a trained VAE checkpoint (by path) for latent diffusion, DiffuseVAE and LMD, with clear
errors for a missing file or a latent size that does not match the config."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_vi.families.vae.vae import VAE


def load_vae(path: str, latent_dim: int | None = None, input_shape: tuple[int, ...] | None = None) -> VAE:
    """``VAE.load_from_checkpoint(path)`` on CPU, frozen, in eval mode; validates the latent size."""
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"vae_checkpoint={path!r} does not exist; train a VAE first (e.g. `lvi fit --config "
            "configs/quickstart.yaml`) and pass its .ckpt path")
    vae = VAE.load_from_checkpoint(path, map_location="cpu")
    # When called inside another module's __init__, Lightning's save_hyperparameters may pick up the
    # caller's frame; restore the VAE's own hyper-parameters from the checkpoint.
    hp = torch.load(path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    vae._set_hparams(dict(hp))
    if latent_dim is not None and vae.latent_dim != latent_dim:
        raise ValueError(f"latent_dim={latent_dim!r} does not match the VAE checkpoint {path!r}, whose "
                         f"latent_dim is {vae.latent_dim}; set latent_dim to {vae.latent_dim}")
    if input_shape is not None and tuple(vae.input_shape) != tuple(input_shape):
        raise ValueError(f"input_shape={list(input_shape)} does not match the VAE checkpoint {path!r}, "
                         f"whose input_shape is {list(vae.input_shape)}")
    vae.eval().requires_grad_(False)
    return vae
