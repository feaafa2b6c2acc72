"""Neural-collapse diagnostics (Papyan et al. 2020; Tirer et al. 2023; Dang et al. 2023) logged per validation epoch.

At the end of every ``every_n_epochs``-th validation epoch, :class:`NeuralCollapse` runs the model in eval mode
over the validation (or training) data twice: the first pass accumulates the per-class sums of the penultimate features
(NC1-NC3), the second compares the nearest-class-centre prediction with the network's (NC4, which needs the
class means of the whole split). The metrics are ``torchmetrics.Metric``s, so under DDP each process sees its
share of the data and the values are those of the whole split. Logged: ``val/nc1``, ``val/nc2`` (ETF
distance), ``val/nc2_equinorm``, ``val/nc2_equiangle``, ``val/nc2_angle_std``, ``val/nc3``, ``val/nc4``;
definitions in :mod:`lightning_vi.metrics.neural_collapse`.
"""

from __future__ import annotations

from typing import Any, Iterator

import lightning as L
import torch
from torch import Tensor

from lightning_vi.core.protocols import HasPenultimate, require_capability
from lightning_vi.metrics.neural_collapse import NC1, NC2, NC3, NC4, ClassMeans


class NeuralCollapse(L.Callback):
    """Log NC1-NC4 of the validation (or training) split every ``every_n_epochs`` validation epochs.

    Needs a family with ``features(x) -> [B, d]`` and ``head_weight`` [C, d]
    (:class:`~lightning_vi.core.protocols.HasPenultimate`, checked at ``setup``; e.g. the ``classifier`` family)
    and validation batches that are dicts with ``x`` and ``y``. ``history`` keeps one dict of values per logged
    epoch (with its ``epoch``).

    Neural collapse is a property of the *training* features in the terminal phase of training (Papyan et al.
    2020); ``split="train"`` measures on ``trainer.train_dataloader`` instead (without the plugins' batch
    transforms), still at validation epoch end.

    Args:
        every_n_epochs: log every n-th validation epoch, >= 1.
        split: ``"val"`` (the validation dataloaders) or ``"train"`` (the training dataloader).
        prefix: metric-name prefix; default ``"<split>/"``.
    """

    def __init__(self, every_n_epochs: int = 1, split: str = "val", prefix: str | None = None) -> None:
        if int(every_n_epochs) != every_n_epochs or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r} is out of range; allowed: integers in [1, inf)")
        if split not in ("val", "train"):
            raise ValueError(f"split={split!r} is not allowed; allowed: 'val', 'train'")
        self.every_n_epochs, self.split = int(every_n_epochs), split
        self.prefix = f"{split}/" if prefix is None else str(prefix)
        self.history: list[dict[str, float]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, HasPenultimate, "NeuralCollapse")
        c, d = pl_module.head_weight.shape
        self.means = ClassMeans(c, d)
        self.nc1, self.nc2, self.nc3, self.nc4 = NC1(c, d), NC2(c, d), NC3(c, d), NC4()

    def _batches(self, trainer: L.Trainer, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        loaders = trainer.val_dataloaders if self.split == "val" else trainer.train_dataloader
        for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
            for batch in loader:
                if not isinstance(batch, dict) or "x" not in batch or "y" not in batch:
                    got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
                    raise TypeError(f"NeuralCollapse needs {self.split} batches as dicts with 'x' and 'y'; got {got}")
                yield batch["x"].to(device), batch["y"].to(device)

    @torch.no_grad()
    def compute(self, trainer: L.Trainer, pl_module: Any) -> dict[str, float]:
        """The two passes over the validation data; returns ``{"nc1", "nc2", ..., "nc4"}`` of the whole split."""
        device = pl_module.device
        metrics = [self.means, self.nc1, self.nc2, self.nc3, self.nc4]
        for m in metrics:
            m.to(device).reset()
        was_training = pl_module.training
        pl_module.eval()
        try:
            weight = pl_module.head_weight
            for x, y in self._batches(trainer, device):
                h = pl_module.features(x)
                self.means.update(h, y)
                self.nc1.update(h, y)
                self.nc2.update(h, y)
                self.nc3.update(h, y, weight)
            means = self.means.compute()  # class means of the whole split (synced across processes)
            for x, _ in self._batches(trainer, device):
                self.nc4.update(pl_module.features(x), pl_module(x), means)
            nc2 = self.nc2.compute()
            values = {"nc1": self.nc1.compute(), "nc2": nc2["etf"], "nc2_equinorm": nc2["equinorm"],
                      "nc2_equiangle": nc2["equiangle"], "nc2_angle_std": nc2["angle_std"],
                      "nc3": self.nc3.compute(), "nc4": self.nc4.compute()}
        finally:
            pl_module.train(was_training)
        return {k: float(v) for k, v in values.items()}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        values = self.compute(trainer, pl_module)
        for k, v in values.items():  # already the whole split's values on every process: no further sync
            pl_module.log(self.prefix + k, v, on_epoch=True, sync_dist=False, rank_zero_only=False)
        self.history.append({"epoch": trainer.current_epoch, **values})
