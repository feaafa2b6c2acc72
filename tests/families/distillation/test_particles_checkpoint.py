"""score_distillation through Lightning: a checkpoint teacher is stored in the model's checkpoint (the
teacher's file is not needed to reload), a teacher of the wrong family is refused by name."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import quiet_trainer
from lightning_vi.data.base import TensorDictDataset
from lightning_vi.families.distillation.particles import DistillationSteps, ScoreDistillation


def _save(model, path, tmp_path):
    ds = TensorDictDataset({"x": torch.randn(16, 2)})
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, DataLoader(ds, batch_size=16, collate_fn=lambda b: b))
    trainer.save_checkpoint(path)
    return str(path)


def test_checkpoint_teacher_round_trip_and_metrics(tmp_path):
    from lightning_vi.families.diffusion.ddpm import DDPM

    L.seed_everything(0)
    teacher_path = _save(DDPM(input_shape=[2], hidden=16, depth=1), tmp_path / "ddpm.ckpt", tmp_path)
    model = ScoreDistillation(method="vsd", teacher=teacher_path, n_particles=32, hidden=[16], phi_warmup=1)
    trainer = quiet_trainer(tmp_path, max_steps=4, limit_val_batches=1)
    trainer.fit(model, datamodule=DistillationSteps(steps_per_epoch=4))
    assert model.particles.grad is None or torch.isfinite(model.particles.grad).all()
    assert "val/entropy" in trainer.callback_metrics and "train/dsm" in trainer.callback_metrics
    ckpt = tmp_path / "sd.ckpt"
    trainer.save_checkpoint(ckpt)
    (tmp_path / "ddpm.ckpt").unlink()  # the spec in the checkpoint rebuilds the teacher
    again = ScoreDistillation.load_from_checkpoint(ckpt)
    torch.testing.assert_close(again.particles, model.particles)
    x, t = torch.randn(5, 2), torch.randint(0, 1000, (5,))
    torch.testing.assert_close(again.teacher.eps(x, t), model.teacher.eps(x, t))


def test_ring_run_logs_mode_metrics(tmp_path):
    model = ScoreDistillation(method="esd", n_particles=32, hidden=[16], phi_warmup=1, esd_lambda=0.5)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=1)
    trainer.fit(model, datamodule=DistillationSteps(steps_per_epoch=3))
    for k in ("val/modes_covered", "val/std_ratio", "val/on_mode", "val/entropy", "val/log_prob", "train/distill"):
        assert k in trainer.callback_metrics, sorted(trainer.callback_metrics)


def test_wrong_teacher_family_is_refused(tmp_path):
    from lightning_vi.families.vae.vae import VAE

    bad = _save(VAE(input_shape=[2], latent_dim=2, hidden_dims=[8]), tmp_path / "vae.ckpt", tmp_path)
    with pytest.raises(ValueError, match=r"teacher='.*vae.ckpt' was written by 'vae'; score_distillation needs a "
                                         r"'ddpm' or 'flow_matching' checkpoint; make one with: lvi fit"):
        ScoreDistillation(teacher=bad)
