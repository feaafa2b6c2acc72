"""Self-contained consumer checkpoints (issue 13), producer checks (issue 20) and checkpoints written by
the code before the change (fixtures/, made by that code: a DDPM with EMA 0.9, a VAE, a latent
diffusion model over it, and their samples for seed 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import ROOT, quiet_trainer
from lightning_vi.cli import build_cli, main
from lightning_vi.data.base import TensorDictDataset
from lightning_vi.families.diffusion import DDPM, LMD, DiffuseVAE, LatentDiffusion
from lightning_vi.families.vae.vae import VAE

FIX = Path(__file__).parent / "fixtures"
MAKE_VAE = "make one with: lvi fit --config configs/vae/vae_iwae.yaml"


class ProducerStaysEval(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        vae = getattr(pl_module, "vae", None)
        assert vae is None or (not vae.training and not any(m.training for m in vae.modules()))


def _fit(model, tmp_path, name, steps=3):
    L.seed_everything(0)
    data = {"x": torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(0))}
    trainer = quiet_trainer(tmp_path, max_steps=steps, callbacks=[ProducerStaysEval()])
    trainer.fit(model, DataLoader(TensorDictDataset(data), batch_size=32, collate_fn=lambda b: b))
    trainer.save_checkpoint(tmp_path / name)
    return tmp_path / name


def _outputs(model):
    g = lambda: torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=g())
    if isinstance(model, LMD):
        return model.eval().reconstruct(x, 0.5, g())
    return model.eval().sample(5, generator=g())


def test_consumers_reload_without_the_producer_file(tmp_path):
    L.seed_everything(0)
    vae_path = _fit(VAE(input_shape=[1, 8, 8], latent_dim=4, hidden_dims=[16]), tmp_path, "vae.ckpt")
    consumers = {
        "ldm": LatentDiffusion(vae_checkpoint=str(vae_path), latent_dim=4, hidden=16, depth=1, sample_steps=3,
                               num_train_timesteps=50, plugins=[{"ema": {"decay": 0.5}}]),
        "lmd": LMD(vae_checkpoint=str(vae_path), latent_dim=4, hidden_dims=[16], total_steps=10),
        "dvae": DiffuseVAE(vae_checkpoint=str(vae_path), formulation=2, hidden=16, depth=1, sample_steps=3,
                           num_train_timesteps=50),
    }
    vae_before = {k: v.clone() for k, v in consumers["ldm"].vae.state_dict().items()}
    paths, before = {}, {}
    for name, model in consumers.items():
        paths[name] = _fit(model, tmp_path, f"{name}.ckpt")
        assert not model.vae.training and not any(p.requires_grad for p in model.vae.parameters())
        assert model.train().training and not model.vae.training  # model.train() (plain loops) keeps it frozen
        assert not any(k.startswith("vae.") for k in [n for n, _ in model.named_parameters() if _.requires_grad])
        before[name] = _outputs(model)
    assert all(torch.equal(v, consumers["ldm"].vae.state_dict()[k]) for k, v in vae_before.items())  # frozen
    vae_path.unlink()
    for name, model in consumers.items():
        sd = torch.load(paths[name], weights_only=True)
        assert any(k.startswith("vae.") for k in sd["state_dict"]) and sd["hyper_parameters"]["vae_config"]["family"] == "vae"
        again = type(model).load_from_checkpoint(paths[name])
        assert torch.equal(before[name], _outputs(again)), name


def test_lvi_test_of_a_consumer_after_its_producer_is_gone(tmp_path, monkeypatch):
    """The documented chain (vae_iwae -> latent_diffusion_digits), then ``lvi test --ckpt_path`` of the
    consumer with and without the producer's checkpoint: the same test metrics."""
    monkeypatch.chdir(tmp_path)
    short = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--smoke", "false"]
    build_cli(["fit", "--config", str(ROOT / "configs/vae/vae_iwae.yaml"), *short])
    cfg = str(ROOT / "configs/diffusion/latent_diffusion_digits.yaml")
    build_cli(["fit", "--config", cfg, *short])
    ckpt = "outputs/ldm/checkpoints/last.ckpt"
    test = ["test", "--config", cfg, "--ckpt_path", ckpt, "--trainer.limit_test_batches", "2",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    with_producer = dict(build_cli(test).trainer.callback_metrics)
    shutil.rmtree("outputs/vae_iwae")
    without = dict(build_cli(test).trainer.callback_metrics)
    assert "test/loss" in without and all(torch.equal(with_producer[k], without[k]) for k in with_producer)


def test_producer_checks_name_the_family_and_the_command(tmp_path, capsys):
    ddpm = str(FIX / "old_ddpm.ckpt")
    with pytest.raises(ValueError, match=f"vae_checkpoint='{ddpm}' was written by 'ddpm'; latent_diffusion needs a "
                                         f"'vae' checkpoint; {MAKE_VAE}$"):
        LatentDiffusion(vae_checkpoint=ddpm, latent_dim=8)
    with pytest.raises(ValueError, match="lmd needs a 'vae' checkpoint"):
        LMD(vae_checkpoint=ddpm, latent_dim=2)
    vae = str(FIX / "old_vae.ckpt")  # a VAE on [1, 8, 8] with latent_dim 2
    with pytest.raises(ValueError, match=r"input_shape=\[1, 16, 16\] does not match .* make a matching checkpoint with: "
                       r"lvi fit --config configs/vae/vae_iwae.yaml --model.init_args.input_shape '\[1, 16, 16\]' "
                       r"--data.init_args.image_size 16 --model.init_args.latent_dim 2"):
        LatentDiffusion(vae_checkpoint=vae, latent_dim=2, input_shape=[1, 16, 16])
    with pytest.raises(FileNotFoundError, match=f"vae_checkpoint='nope.ckpt' does not exist; diffusevae needs a 'vae' "
                                                f"checkpoint; {MAKE_VAE}"):
        DiffuseVAE(vae_checkpoint="nope.ckpt")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="is not a Lightning checkpoint"):
        LMD(vae_checkpoint=str(tmp_path / "junk.ckpt"))


def test_checkpoints_written_by_the_old_code(tmp_path):
    old = torch.load(FIX / "old_samples.pt")
    ddpm = DDPM.load_from_checkpoint(FIX / "old_ddpm.ckpt").eval()  # ema_decay=0.9 -> the ema plugin
    assert [p.name for p in ddpm.plugins] == ["ema"]
    for sampler in ("ddpm", "ddim"):
        assert torch.allclose(ddpm.sample(6, generator=torch.Generator().manual_seed(3), sampler=sampler), old[sampler], atol=1e-5)
    assert torch.allclose(ddpm.sample(6, generator=torch.Generator().manual_seed(3), use_ema=False), old["raw"], atol=1e-5)
    assert not torch.allclose(old["raw"], old["ddim"], atol=1e-3)
    # The old latent diffusion checkpoint kept its VAE outside: it names the missing file and the fix ...
    with pytest.raises(FileNotFoundError, match=r"written before the 'vae' was kept inside it also needs this file: "
                                                r"load_from_checkpoint\(ckpt, vae_checkpoint=PATH\)"):
        LatentDiffusion.load_from_checkpoint(FIX / "old_latent_diffusion.ckpt", vae_checkpoint=str(tmp_path / "gone.ckpt"))
    # ... and loads (same samples as the old code) given it; saved again, it is self-contained.
    shutil.copy(FIX / "old_vae.ckpt", tmp_path / "vae.ckpt")
    ldm = LatentDiffusion.load_from_checkpoint(FIX / "old_latent_diffusion.ckpt", vae_checkpoint=str(tmp_path / "vae.ckpt"))
    assert torch.allclose(ldm.eval().sample(6, generator=torch.Generator().manual_seed(3)), old["ldm"], atol=1e-5)
    trainer = quiet_trainer(tmp_path)
    trainer.strategy.connect(ldm)
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    (tmp_path / "vae.ckpt").unlink()
    again = LatentDiffusion.load_from_checkpoint(tmp_path / "new.ckpt")
    assert torch.allclose(again.eval().sample(6, generator=torch.Generator().manual_seed(3)), old["ldm"], atol=1e-5)
