"""Each diffusion family trains through a Lightning Trainer and reloads from its checkpoint."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import quiet_trainer
from lightning_vi.data.base import TensorDictDataset
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.diffusevae import DiffuseVAE
from lightning_vi.families.diffusion.flow_matching import FlowMatching
from lightning_vi.registry import FAMILIES


def _fit_and_reload(model, data, tmp_path):
    loader = DataLoader(TensorDictDataset(data), batch_size=64, collate_fn=lambda b: b)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3)
    trainer.fit(model, loader)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    return type(model).load_from_checkpoint(path)


@pytest.mark.parametrize("kind", ["ddpm_unet_cond", "ddpm_mlp", "fm_noise", "fm_cross"])
def test_fit_and_reload(kind, tmp_path):
    L.seed_everything(0)
    imgs = {"x": torch.rand(192, 1, 8, 8), "y": torch.randint(0, 10, (192,))}
    if kind == "ddpm_unet_cond":
        model, data = DDPM(input_shape=[1, 8, 8], architecture="unet", channels=[8, 16], num_classes=10,
                           prediction_type="v", beta_schedule="squaredcos_cap_v2", sample_steps=5, guidance_scale=2.0,
                           plugins=["ema"]), imgs
    elif kind == "ddpm_mlp":
        model, data = DDPM(hidden=32, sample_steps=5, sampler="ddpm", plugins=[{"ema": {"decay": 0.9}}]), {"x": torch.randn(192, 2)}
    elif kind == "fm_noise":
        model, data = FlowMatching(hidden=32, ema_decay=0.9, sample_steps=4), {"x": torch.randn(192, 2)}  # deprecated arg
    else:
        model, data = FlowMatching(input_shape=[1, 8, 8], mode="cross", source_key="y", source_dim=10,
                                   hidden=32, sample_steps=4, guidance_scale=2.0), imgs
    again = _fit_and_reload(model, data, tmp_path)
    g = lambda: torch.Generator().manual_seed(0)
    model.eval()
    again.eval()
    torch.manual_seed(0)
    a = model.sample(6, generator=g())
    torch.manual_seed(0)
    b = again.sample(6, generator=g())
    assert torch.equal(a, b)
    assert (model.ema_net is not None) == (kind != "fm_cross")
    if model.ema_net is not None:
        assert not torch.equal(model.ema_net.state_dict()[next(iter(model.ema_net.state_dict()))],
                               model.net.state_dict()[next(iter(model.net.state_dict()))])


def test_diffusevae_fit_and_reload(vae_checkpoint, tmp_path):
    L.seed_everything(0)
    model = DiffuseVAE(vae_checkpoint=vae_checkpoint, formulation=2, hidden=32, sample_steps=4, p_cond_drop=0.1,
                       cond_guidance_scale=1.5, data_scale=0.5, data_shift=0.5)
    again = _fit_and_reload(model, {"x": torch.rand(192, 1, 8, 8)}, tmp_path)
    g = lambda: torch.Generator().manual_seed(0)
    assert torch.equal(model.eval().sample(5, generator=g()), again.eval().sample(5, generator=g()))


def test_registered_names_and_bad_input():
    for name in ("ddpm", "latent_diffusion", "diffusevae", "flow_matching", "lmd"):
        assert FAMILIES.get(name) is not None
    with pytest.raises(ValueError, match="beta_schedule='quadratic'"):
        DDPM(beta_schedule="quadratic")
    with pytest.raises(ValueError, match="prediction_type='score'"):
        DDPM(prediction_type="score")
    with pytest.raises(ValueError, match="num_train_timesteps=0"):
        DDPM(num_train_timesteps=0)
    with pytest.raises(ValueError, match="formulation=3"):
        DiffuseVAE(formulation=3)
    with pytest.raises(FileNotFoundError, match="vae_checkpoint='missing.ckpt'"):
        DiffuseVAE(vae_checkpoint="missing.ckpt")
