"""Continual learning over a sequence of tasks: switch the task data module, consolidate, log per-task accuracy."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_vi.core.protocols import Consolidates, require_capability


@torch.no_grad()
def task_accuracies(model: nn.Module, datamodule: Any, split: str = "val", tasks: int | None = None) -> list[float]:
    """Accuracy of ``model`` (``predict_proba(x)`` or ``softmax(model(x))``) on tasks ``0 .. tasks-1``
    (default: every task seen so far, up to the data module's current one)."""
    n = datamodule.task + 1 if tasks is None else tasks
    accs = []
    for k in range(n):
        data = datamodule.task_split(split, k)
        x, y = data["x"].to(_device(model)), data["y"].to(_device(model))
        probs = model.predict_proba(x) if hasattr(model, "predict_proba") else torch.softmax(model(x), -1)
        accs.append(float((probs.argmax(-1) == y).float().mean()))
    return accs


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class TaskSequence(L.Callback):
    """Continual learning over a task data module (``set_task``, ``task``, ``num_tasks``, ``task_split``),
    e.g. :class:`~lightning_vi.data.PermutedDigitsDataModule`.

    Every ``epochs_per_task`` epochs it calls ``model.consolidate()`` (when ``consolidate`` is on; the family
    must then have one, :class:`~lightning_vi.core.protocols.Consolidates`, checked at ``setup``) and switches
    the data module to the next task, until the last task. After each validation it logs ``val/acc_task{k}`` for every seen task, ``val/acc_old_mean`` (tasks before the
    current one) and ``val/acc_seen_mean``; ``history`` keeps ``(epoch, task, accuracies)``. Needs
    ``trainer.reload_dataloaders_every_n_epochs: 1`` so the new task's loaders are built.
    """

    def __init__(self, epochs_per_task: int = 10, consolidate: bool = True) -> None:
        super().__init__()
        if isinstance(epochs_per_task, bool) or not isinstance(epochs_per_task, int) or epochs_per_task < 1:
            raise ValueError(f"epochs_per_task={epochs_per_task!r} is out of range; allowed: an integer in [1, inf)")
        self.epochs_per_task, self.consolidate = epochs_per_task, consolidate
        self.history: list[dict[str, Any]] = []

    @staticmethod
    def _datamodule(trainer: L.Trainer) -> Any:
        dm = trainer.datamodule
        needed = ("set_task", "task", "num_tasks", "task_split")
        if dm is None or not all(hasattr(dm, a) for a in needed):
            raise TypeError(f"TaskSequence needs a task data module with {list(needed)} (e.g. "
                            f"lightning_vi.data.PermutedDigitsDataModule); got {type(dm).__name__}")
        return dm

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.consolidate:
            require_capability(pl_module, Consolidates, "TaskSequence(consolidate=True) (e.g. on binary_vcl; "
                               "set consolidate: false for a family that keeps no per-task state)")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._datamodule(trainer)
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(f"trainer.reload_dataloaders_every_n_epochs={trainer.reload_dataloaders_every_n_epochs} "
                             "but TaskSequence switches tasks between epochs; set it to 1")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = self._datamodule(trainer)
        if (trainer.current_epoch + 1) % self.epochs_per_task == 0 and dm.task < dm.num_tasks - 1:
            if self.consolidate:  # Consolidates, checked at setup
                pl_module.consolidate()
            dm.set_task(dm.task + 1)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm = self._datamodule(trainer)
        accs = task_accuracies(pl_module, dm, "val")
        for k, a in enumerate(accs):
            pl_module.log(f"val/acc_task{k}", a)
        if len(accs) > 1:
            pl_module.log("val/acc_old_mean", sum(accs[:-1]) / (len(accs) - 1))
        pl_module.log("val/acc_seen_mean", sum(accs) / len(accs))
        self.history.append({"epoch": trainer.current_epoch, "task": dm.task, "acc": accs})
