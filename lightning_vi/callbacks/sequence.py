"""Dashboard images for the sequence family, logged through :func:`log_image` (any logger).

* ``ForecastPlot``: context + sampled forecasts with a mean and a 5-95% band (kvae ``forecast``; pvrnn error
  regression). * ``KoopmanEigenPlot``: kvae operator eigenvalues against the unit circle.
* ``SamplePathsPlot``: prior sample paths (fbm_sde ``sample_paths``, with the learned Hurst index).
* ``VideoReconstructions``: input frames above reconstructed frames (video_vae).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from lightning_vi.callbacks.images import _EveryNEpochs
from lightning_vi.callbacks.media import figure_to_array, log_image, make_grid
from lightning_vi.core.protocols import Forecasts, HasEigenvalues, RegressesErrors, SamplesPaths, require_capability


def _val_batch(trainer: L.Trainer, n: int, device: torch.device) -> dict:
    dm = trainer.datamodule
    if dm is not None and getattr(dm, "splits", None):
        split = dm.splits["val"]
    else:
        split = next(iter(trainer.val_dataloaders))
    return {k: v[:n].to(device) for k, v in split.items() if isinstance(v, torch.Tensor)}


def _figure(ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(3.2 * ncols, 2.6), squeeze=False)


class ForecastPlot(_EveryNEpochs):
    """Forecast ``horizon`` steps from the first half of ``n`` validation sequences, with uncertainty bands."""

    def __init__(self, n: int = 3, n_samples: int = 32, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.n, self.n_samples = n, n_samples

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, (Forecasts, RegressesErrors), "ForecastPlot (e.g. on kvae, pvrnn)")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        batch = _val_batch(trainer, self.n, pl_module.device)
        x = batch["x"]
        n_obs = x.shape[1] // 2
        ctx = {k: v[:, :n_obs] for k, v in batch.items() if v.ndim >= 2 and v.shape[1] == x.shape[1]}
        if isinstance(pl_module, Forecasts):
            samples = pl_module.forecast(ctx, x.shape[1] - n_obs, self.n_samples)  # [S, B, H, C]
        else:  # RegressesErrors, checked at setup
            samples = pl_module.error_regression(x[:, :n_obs], x.shape[1] - n_obs)[None, :, n_obs:]
        samples = samples[..., 0].cpu().numpy()
        fig, axes = _figure(len(x))
        steps = np.arange(x.shape[1])
        for i, ax in enumerate(axes[0]):
            ax.plot(steps, x[i, :, 0].cpu().numpy(), "k.", ms=3, label="data")
            fut = steps[n_obs:]
            lo, hi = np.percentile(samples[:, i], [5, 95], axis=0)
            ax.fill_between(fut, lo, hi, alpha=0.3, label="5-95%")
            ax.plot(fut, samples[:, i].mean(0), "C1", label="mean")
            ax.axvline(n_obs - 0.5, color="grey", lw=0.5)
        axes[0][0].legend(fontsize=6)
        log_image(trainer, "media/forecast", figure_to_array(fig))


class KoopmanEigenPlot(_EveryNEpochs):
    """Eigenvalues of the Koopman operator solved on a validation batch, with the unit circle."""

    def __init__(self, n: int = 64, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.n = n

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, HasEigenvalues, "KoopmanEigenPlot (e.g. on kvae)")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        ev = pl_module.eigenvalues(_val_batch(trainer, self.n, pl_module.device)).cpu().numpy()
        fig, axes = _figure(1)
        ax = axes[0][0]
        th = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(th), np.sin(th), "k-", lw=0.5)
        ax.plot(ev.real, ev.imag, "C3x")
        ax.set_aspect("equal")
        ax.set_title("Koopman eigenvalues", fontsize=8)
        log_image(trainer, "media/koopman_eigenvalues", figure_to_array(fig))


class SamplePathsPlot(_EveryNEpochs):
    """``n`` prior sample paths of an fbm_sde model on the validation time grid."""

    def __init__(self, n: int = 8, every_n_epochs: int = 1, seed: int = 0) -> None:
        super().__init__(every_n_epochs)
        self.n, self.seed = n, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, SamplesPaths, "SamplePathsPlot (e.g. on fbm_sde)")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        t = _val_batch(trainer, 1, pl_module.device)["t"][0]
        paths = pl_module.sample_paths(self.n, t, torch.Generator().manual_seed(self.seed))[..., 0].cpu().numpy()
        fig, axes = _figure(1)
        axes[0][0].plot(t.cpu().numpy(), paths.T, lw=0.8)
        axes[0][0].set_title(f"prior paths, H = {float(pl_module.hurst.detach()):.3f}", fontsize=8)
        log_image(trainer, "media/sample_paths", figure_to_array(fig))


class VideoReconstructions(_EveryNEpochs):
    """Frames of ``n`` validation videos (rows: input, reconstruction, alternating)."""

    def __init__(self, n: int = 4, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.n = n

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        x = _val_batch(trainer, self.n, pl_module.device)["x"]
        with torch.no_grad():
            rec = pl_module(x)
        if x.ndim != 5 or not isinstance(rec, torch.Tensor) or rec.shape != x.shape:
            got = tuple(rec.shape) if isinstance(rec, torch.Tensor) else type(rec).__name__
            raise TypeError(f"VideoReconstructions needs videos x [B, C, T, H, W] and {type(pl_module).__name__}(x) "
                            f"of the same shape; got x {tuple(x.shape)}, reconstruction {got}")
        pairs = torch.stack([x, rec], 1).flatten(0, 1)  # [2n, C, T, H, W]
        frames = pairs.transpose(1, 2).flatten(0, 1)  # [2n*T, C, H, W]
        log_image(trainer, "media/video_reconstructions", make_grid(frames, nrow=x.shape[2]))
