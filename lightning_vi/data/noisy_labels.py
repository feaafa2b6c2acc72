"""Noisy training labels over any labelled data module (Han et al. 2018, Sec. 4; Xia et al. 2020).

:class:`NoisyLabelDataModule` wraps a ``LightningDataModule`` whose batches are dicts with ``x`` and ``y``.
Only the train split is corrupted, deterministically from ``seed`` (the same seed gives the same noisy
labels, whatever the global RNG state). Training batches carry the noisy label ``y`` and the true label
``y_clean`` (for evaluation only: label precision of sample selection); validation and test batches are the
base module's, with clean ``y``. Noise models (transition matrix ``T_ij = P(noisy=j | clean=i)``, C classes):

* ``symmetric``: ``T_ii = 1 - rate``, ``T_ij = rate / (C - 1)`` (Han et al. 2018, Eq. 5 left);
* ``pairflip``: ``T_ii = 1 - rate``, ``T_i,(i+1) mod C = rate`` (Han et al. 2018, Eq. 5 right);
* ``instance``: instance-dependent flips (Xia et al. 2020, Alg. 2): ``q_i ~ N(rate, 0.1^2)`` truncated to
  [0, 1]; ``p = q_i softmax(x_i W_{y_i})`` over the other classes, ``p_{y_i} = 1 - q_i``, with a random
  projection ``W`` [C, D, C].

The realised fraction of corrupted training labels is :attr:`NoisyLabelDataModule.actual_rate`; it is
logged at setup (``data/actual_noise_rate`` to the trainer's loggers, and to the Python log).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_vi.core.checks import check_choice

log = logging.getLogger(__name__)

NOISE_TYPES = ("symmetric", "pairflip", "instance")


def corrupt_labels(y: Tensor, num_classes: int, noise: str, rate: float, generator: torch.Generator,
                   x: Tensor | None = None) -> Tensor:
    """Noisy copy of the labels ``y`` [N] under ``noise`` at ``rate`` (see the module docstring)."""
    check_choice("noise", noise, NOISE_TYPES)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate={rate!r} is out of range; allowed: [0, 1)")
    y = y.long()
    n = len(y)
    if noise == "symmetric":
        flip = torch.rand(n, generator=generator) < rate
        shift = torch.randint(1, num_classes, (n,), generator=generator)  # uniform over the C - 1 other classes
        return torch.where(flip, (y + shift) % num_classes, y)
    if noise == "pairflip":
        flip = torch.rand(n, generator=generator) < rate
        return torch.where(flip, (y + 1) % num_classes, y)
    if x is None:
        raise ValueError("noise='instance' needs the inputs x of the train split")
    feats = x.reshape(n, -1).float()
    q = torch.empty(n)
    todo = torch.arange(n)
    while len(todo):  # truncated normal on [0, 1] by rejection
        draw = rate + 0.1 * torch.randn(len(todo), generator=generator)
        ok = (draw >= 0) & (draw <= 1)
        q[todo[ok]] = draw[ok]
        todo = todo[~ok]
    w = torch.randn(num_classes, feats.shape[1], num_classes, generator=generator)
    scores = torch.einsum("nd,ndc->nc", feats, w[y])
    scores[torch.arange(n), y] = float("-inf")
    p = q[:, None] * torch.softmax(scores, dim=-1)
    p[torch.arange(n), y] = 1 - q
    return torch.multinomial(p, 1, generator=generator).squeeze(1)


class NoisyLabelDataset(Dataset):
    """A labelled dataset with its ``y`` replaced by ``noisy`` and the original kept as ``y_clean``."""

    def __init__(self, base: Dataset, noisy: Tensor, clean: Tensor) -> None:
        self.base, self.noisy, self.clean = base, noisy, clean

    def __len__(self) -> int:
        return len(self.noisy)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.base[i], "y": self.noisy[i], "y_clean": self.clean[i]}

    def __getitems__(self, idx: list[int]) -> Any:
        if not hasattr(self.base, "__getitems__"):
            return [self[i] for i in idx]
        batch = self.base.__getitems__(idx)
        index = torch.as_tensor(idx, dtype=torch.long)
        return {**batch, "y": self.noisy[index], "y_clean": self.clean[index]}


def _dataset_tensor(ds: Dataset, key: str) -> Tensor:
    tensors = getattr(ds, "tensors", None)
    if isinstance(tensors, dict) and key in tensors:
        return tensors[key]
    return torch.stack([torch.as_tensor(ds[i][key]) for i in range(len(ds))])


class NoisyLabelDataModule(L.LightningDataModule):
    """Corrupt the train labels of ``base`` with ``noise`` at ``rate``, deterministically from ``seed``.

    Args:
        base: a labelled data module (dict batches with ``x`` and ``y``), e.g. ``DigitsDataModule``.
        noise: ``"symmetric"``, ``"pairflip"`` or ``"instance"``.
        rate: noise rate in [0, 1) (the probability that a training label is corrupted).
        seed: seed of the corruption.
        num_classes: number of classes C; default ``base.num_classes`` or ``max(y) + 1``.
    """

    def __init__(self, base: L.LightningDataModule, noise: str = "symmetric", rate: float = 0.2, seed: int = 0,
                 num_classes: int | None = None) -> None:
        super().__init__()
        check_choice("noise", noise, NOISE_TYPES)
        if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"rate={rate!r} is out of range; allowed: [0, 1)")
        self.base, self.noise, self.rate, self.seed = base, noise, float(rate), int(seed)
        self.num_classes = num_classes or getattr(base, "num_classes", None)
        self.train_set: NoisyLabelDataset | None = None
        #: realised fraction of training labels that differ from the clean ones (after ``setup``).
        self.actual_rate: float | None = None

    def prepare_data(self) -> None:
        self.base.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.base.setup(stage)
        if self.train_set is None:
            self.base.setup("fit")
            ds = self.base.train_dataloader().dataset
            clean = _dataset_tensor(ds, "y").long()
            c = int(self.num_classes or int(clean.max()) + 1)
            self.num_classes = c
            x = _dataset_tensor(ds, "x") if self.noise == "instance" else None
            noisy = corrupt_labels(clean, c, self.noise, self.rate, torch.Generator().manual_seed(self.seed), x)
            self.train_set = NoisyLabelDataset(ds, noisy, clean)
            self.actual_rate = float((noisy != clean).float().mean())
            log.info("NoisyLabelDataModule: %s noise, rate %.3f requested, %.4f realised on %d training labels",
                     self.noise, self.rate, self.actual_rate, len(clean))
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"data/actual_noise_rate": self.actual_rate}, step=0)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.base.example_shape)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        loader = self.base.train_dataloader()
        return DataLoader(self.train_set, batch_size=loader.batch_size, shuffle=True, collate_fn=loader.collate_fn,
                          num_workers=loader.num_workers, persistent_workers=loader.num_workers > 0)

    def val_dataloader(self) -> Any:
        return self.base.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.base.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.base.predict_dataloader()
