"""Reliability diagram (accuracy vs confidence per bin, with the ECE in the title) on the dashboard."""

from __future__ import annotations

import lightning as L
import torch

from lightning_vi.callbacks.media import figure_to_array, log_image
from lightning_vi.core.protocols import Classifies, require_capability
from lightning_vi.metrics.calibration import ece, reliability_bins


def reliability_figure(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 10, title: str = ""):
    """Matplotlib figure: per-bin accuracy bars against the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    conf, acc, count = reliability_bins(probs, y, n_bins)
    centers = (torch.arange(n_bins) + 0.5) / n_bins
    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=80)
    ax.bar(centers, acc, width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "r--", lw=1, label="perfect")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} ECE={float(ece(probs, y)):.3f}".strip(), fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


class ReliabilityDiagram(L.Callback):
    """Every ``every_n_epochs`` validation epochs, log ``media/reliability`` for the validation split.

    Needs ``pl_module.predict_proba(x) -> [N, C]`` (:class:`~lightning_vi.core.protocols.Classifies`, checked
    at ``setup``) and a data module with in-memory ``splits`` (or the first validation batch is used).
    """

    def __init__(self, every_n_epochs: int = 1, n_bins: int = 10, max_examples: int = 2000) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r} is out of range; allowed: [1, inf)")
        if n_bins < 2:
            raise ValueError(f"n_bins={n_bins!r} is out of range; allowed: [2, inf)")
        self.every_n_epochs, self.n_bins, self.max_examples = every_n_epochs, n_bins, max_examples
        self.logged: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, Classifies, "ReliabilityDiagram")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "splits", None):
            batch = dm.splits["val"]
        else:
            batch = next(iter(trainer.val_dataloaders))
        x, y = batch["x"][: self.max_examples].to(pl_module.device), batch["y"][: self.max_examples].to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            probs = pl_module.predict_proba(x)
        pl_module.train(was_training)
        fig = reliability_figure(probs.cpu(), y.cpu(), self.n_bins, title=f"epoch {trainer.current_epoch}")
        self.logged += log_image(trainer, "media/reliability", figure_to_array(fig))
