"""Permuted digits: a sequence of tasks, each scikit-learn's 8x8 digits under its own fixed pixel permutation.

The continual-learning benchmark of Goodfellow et al. 2013 / Kirkpatrick et al. 2017 (permuted MNIST)
on the digits shipped with scikit-learn. Task ``t`` permutes the 64 pixels of every image with one
permutation drawn from ``seed`` and ``t`` (task 0 is the identity when ``identity_first``); labels and
the train/val/test split are shared by all tasks. ``set_task(t)`` switches the loaders to task ``t``
(use ``trainer.reload_dataloaders_every_n_epochs: 1`` so Lightning picks the switch up); the current
task is saved in checkpoints (``state_dict``), so a resumed run continues on the right task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_vi.data.base import InMemoryDataModule, TensorDictDataset, _identity
from lightning_vi.data.digits import load_digits_tensors


class PermutedDigitsDataModule(InMemoryDataModule):
    """``num_tasks`` permuted-digit tasks; batches are ``x`` [N, 1, 8, 8] of the current task and ``y``.

    Args:
        num_tasks: number of tasks (>= 1). task: the task the loaders start on, in [0, num_tasks).
        identity_first: task 0 keeps the original pixel order.
    """

    num_classes = 10

    def __init__(self, num_tasks: int = 3, task: int = 0, identity_first: bool = True, batch_size: int = 128,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks!r} is out of range; allowed: an integer in [1, inf)")
        self.num_tasks, self.identity_first = num_tasks, identity_first
        self.task = self._check_task(task)
        #: ``[num_tasks, 64]``: task ``t`` shows pixel ``permutations[t, i]`` at position ``i``.
        self.permutations = torch.stack([
            torch.arange(64) if (t == 0 and identity_first) else torch.randperm(64, generator=self.generator(1_000 + t))
            for t in range(num_tasks)
        ])

    def _check_task(self, task: Any) -> int:
        if isinstance(task, bool) or not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise ValueError(f"task={task!r} is out of range; allowed: an integer in [0, {self.num_tasks - 1}] "
                             f"(num_tasks={self.num_tasks})")
        return task

    def generate(self) -> dict[str, Tensor]:
        return load_digits_tensors(8)

    def set_task(self, task: int) -> None:
        """Switch the train/val/test/predict loaders to task ``task``."""
        self.task = self._check_task(task)

    def task_split(self, split: str, task: int | None = None) -> dict[str, Tensor]:
        """The ``split`` (``"train"``, ``"val"``, ``"test"``) of task ``task`` (default: the current one)."""
        self.setup()
        if split not in self.splits:
            raise ValueError(f"split={split!r} is not allowed; choose one of {sorted(self.splits)}")
        t = self.task if task is None else self._check_task(task)
        data = self.splits[split]
        x = data["x"].flatten(1)[:, self.permutations[t]].view_as(data["x"])
        return {**data, "x": x}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = TensorDictDataset(self.task_split(split))
        bs = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, collate_fn=_identity,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.set_task(int(state_dict["task"]))
