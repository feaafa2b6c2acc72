"""Dashboard images of the sequence family are logged (PNG files when no logger is configured)."""

from __future__ import annotations

import lightning as L

from helpers import quiet_trainer
from lightning_vi.callbacks.sequence import ForecastPlot, KoopmanEigenPlot, SamplePathsPlot, VideoReconstructions
from lightning_vi.data.fbm import FBMDataModule
from lightning_vi.data.sequences import SineSequenceDataModule
from lightning_vi.data.videos import MovingSpritesDataModule
from lightning_vi.families.sequence import FBMSDE, PVRNN, KoopmanVAE, VideoVAE


def _run(tmp_path, model, dm, callbacks):
    L.seed_everything(0)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=callbacks, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, dm)
    return sorted(p.name.split("_step")[0] for p in (tmp_path / "media").glob("*.png"))


def test_kvae_forecast_and_eigenvalue_images(tmp_path):
    names = _run(tmp_path, KoopmanVAE(hidden=8), SineSequenceDataModule(n=20, length=10, batch_size=16),
                 [ForecastPlot(n=2, n_samples=4), KoopmanEigenPlot()])
    assert names == ["media_forecast", "media_koopman_eigenvalues"]


def test_pvrnn_forecast_image(tmp_path):
    model = PVRNN(n_sequences=20, max_length=10, d_sizes=[4], z_sizes=[1], taus=[2.0], er_steps=2)
    names = _run(tmp_path, model, SineSequenceDataModule(n=20, length=10, with_index=True, batch_size=16),
                 [ForecastPlot(n=2)])
    assert names == ["media_forecast"]


def test_fbm_paths_and_video_images(tmp_path):
    assert _run(tmp_path / "a", FBMSDE(dt=0.125, gamma_max=8.0), FBMDataModule(n=20, length=8, batch_size=16),
                [SamplePathsPlot(n=3)]) == ["media_sample_paths"]
    video = VideoVAE(frames=4, image_size=8, space_factor=2, channels=4)
    assert _run(tmp_path / "b", video, MovingSpritesDataModule(n=20, frames=4, image_size=8, batch_size=8),
                [VideoReconstructions(n=2)]) == ["media_video_reconstructions"]
