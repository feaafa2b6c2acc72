"""Diffusion tests: one intra-op thread (tiny models on a shared CPU run ~30x faster than with
thread contention)."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # diffusion_fit, under --import-mode=importlib

import lightning as L
import pytest

from lightning_vi.data.digits import load_digits_tensors
from diffusion_fit import fit_full_batch


@pytest.fixture(scope="session")
def digits():
    d = load_digits_tensors(8)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(d["x"]), generator=g)
    tr, te = perm[:1500], perm[1500:]
    return {"x": d["x"][tr], "y": d["y"][tr]}, {"x": d["x"][te], "y": d["y"][te]}


@pytest.fixture(scope="session")
def digits_prior(digits):
    """Class-conditional DDPM (MLP) on 8x8 digits in [-1, 1], trained full batch."""
    from lightning_vi.families.diffusion.ddpm import DDPM

    L.seed_everything(0)
    model = DDPM(input_shape=[1, 8, 8], hidden=128, depth=3, num_classes=10, p_uncond=0.2, ema_decay=0.0,
                 data_scale=0.5, data_shift=0.5, sample_steps=50)
    return fit_full_batch(model, digits[0], 600, lr=3e-3)


@pytest.fixture(scope="session")
def vae_checkpoint(digits, tmp_path_factory):
    """A small MLP VAE on digits trained through Lightning; returns the checkpoint path."""
    from helpers import quiet_trainer
    from torch.utils.data import DataLoader

    from lightning_vi.data.base import TensorDictDataset
    from lightning_vi.families.vae.vae import VAE

    L.seed_everything(0)
    vae = VAE(input_shape=[1, 8, 8], latent_dim=8, hidden_dims=[128], obs_std=0.1, lr=3e-3)
    ds = TensorDictDataset(digits[0])
    loader = DataLoader(ds, batch_size=250, shuffle=True, collate_fn=lambda b: b)
    path = tmp_path_factory.mktemp("vae") / "vae.ckpt"
    trainer = quiet_trainer(path.parent, max_epochs=40)
    trainer.fit(vae, loader)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="session")
def digits_prior_checkpoint(digits_prior, tmp_path_factory):
    """``digits_prior`` saved as a Lightning checkpoint (for RED-Diff through ``lvi predict``)."""
    path = tmp_path_factory.mktemp("prior") / "prior.ckpt"
    torch.save({"state_dict": digits_prior.state_dict(), "hyper_parameters": dict(digits_prior.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return str(path)
