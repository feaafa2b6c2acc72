"""Image callbacks log through whatever logger is active: CSV/files, TensorBoard, none."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from helpers import quiet_trainer
from lightning_vi.callbacks import LatentTraversal, Reconstructions, SampleGrid, make_grid
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.vae import VAE


def _fit(tmp_path, logger):
    L.seed_everything(0)
    model = VAE(input_shape=[1, 8, 8], latent_dim=3, hidden_dims=[32], likelihood="bernoulli")
    cbs = [SampleGrid(n=16), Reconstructions(n=8), LatentTraversal(steps=5)]
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=logger,
                            callbacks=cbs)
    trainer.fit(model, DigitsDataModule(batch_size=32))
    return trainer


def test_csv_logger_gets_png_files(tmp_path):
    _fit(tmp_path, CSVLogger(tmp_path))
    names = sorted(p.name for p in tmp_path.rglob("*.png"))
    assert [n.split("_step")[0] for n in names] == ["media_reconstructions", "media_samples", "media_traversal"]


def test_no_logger_still_saves_media(tmp_path):
    _fit(tmp_path, False)
    assert len(list((tmp_path / "media").glob("*.png"))) == 3


def test_tensorboard_logger_gets_images(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _fit(tmp_path, TensorBoardLogger(tmp_path))
    acc = EventAccumulator(trainer.logger.log_dir)
    acc.Reload()
    assert {"media/samples", "media/reconstructions", "media/traversal"} <= set(acc.Tags()["images"])


def test_make_grid_places_images_in_order():
    imgs = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 1, 2, 2) / 5
    grid = make_grid(imgs, nrow=3, pad=1)
    assert grid.shape == (1, 7, 10)
    assert grid[0, 1, 1] == 0 and grid[0, 1, 4] == pytest.approx(0.2) and grid[0, 4, 7] == pytest.approx(1.0)


def test_traversal_changes_one_latent_per_row(tmp_path):
    """Each traversal row decodes z that differs from the posterior mean in exactly one coordinate."""
    model = VAE(input_shape=[1, 8, 8], latent_dim=3, hidden_dims=[32])
    seen = []
    model.decode = lambda z: (seen.append(z.clone()), torch.zeros(len(z), 1, 8, 8))[1]
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                            callbacks=[LatentTraversal(steps=4, span=2.0)])
    trainer.fit(model, DigitsDataModule(batch_size=16))
    z = seen[-1]
    assert z.shape == (12, 3)
    mu = model.encode(trainer.datamodule.splits["val"]["x"][:1])[0][0]
    changed = (z - mu).abs() > 1e-6
    assert (changed.sum(1) <= 1).all()
    assert torch.allclose(z[:4, 0], torch.linspace(-2, 2, 4))
