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

Noisy validation split. With ``noisy_val_fraction=f`` a seeded fraction ``f`` of the (already corrupted)
train split becomes the validation split: its batches carry the *noisy* ``y`` only (no ``y_clean``), as a
practitioner without clean data would have (Chen et al. 2021 choose the truncation K on such a split); the
model trains on the rest, and the base module's clean validation split is not used. The test split stays
clean. The labels of an example do not depend on ``f`` (corruption happens before the split).
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

    def __init__(self, base: Dataset, noisy: Tensor, clean: Tensor, indices: Tensor | None = None,
                 with_clean: bool = True) -> None:
        """``indices``: the examples of ``base`` in this subset (default all); ``with_clean=False`` leaves
        ``y_clean`` out of the items (a noisy validation split)."""
        self.base, self.noisy, self.clean = base, noisy, clean
        self.indices = torch.arange(len(noisy)) if indices is None else indices.long()
        self.with_clean = with_clean

    def __len__(self) -> int:
        return len(self.indices)

    def _labels(self, index: Any) -> dict[str, Tensor]:
        out = {"y": self.noisy[index]}
        if self.with_clean:
            out["y_clean"] = self.clean[index]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = int(self.indices[i])
        return {**self.base[j], **self._labels(j)}

    def __getitems__(self, idx: list[int]) -> Any:
        if not hasattr(self.base, "__getitems__"):
            return [self[i] for i in idx]
        index = self.indices[torch.as_tensor(idx, dtype=torch.long)]
        batch = self.base.__getitems__(index.tolist())
        return {**batch, **self._labels(index)}


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
        noisy_val_fraction: fraction in (0, 1) of the noisy train split held out as a noisy validation
            split (replacing the base's clean one); None keeps the base's validation split.
    """

    def __init__(self, base: L.LightningDataModule, noise: str = "symmetric", rate: float = 0.2, seed: int = 0,
                 num_classes: int | None = None, noisy_val_fraction: float | None = None) -> None:
        super().__init__()
        check_choice("noise", noise, NOISE_TYPES)
        if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"rate={rate!r} is out of range; allowed: [0, 1)")
        if noisy_val_fraction is not None and (
                isinstance(noisy_val_fraction, bool) or not isinstance(noisy_val_fraction, (int, float))
                or not 0.0 < noisy_val_fraction < 1.0):
            raise ValueError(f"noisy_val_fraction={noisy_val_fraction!r} is out of range; allowed: (0, 1) "
                             "(the fraction of the noisy train split held out for validation) or null")
        self.base, self.noise, self.rate, self.seed = base, noise, float(rate), int(seed)
        self.noisy_val_fraction = None if noisy_val_fraction is None else float(noisy_val_fraction)
        self.num_classes = num_classes or getattr(base, "num_classes", None)
        self.train_set: NoisyLabelDataset | None = None
        #: the noisy validation split (``noisy_val_fraction``), noisy ``y`` only.
        self.val_set: NoisyLabelDataset | None = None
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
            train_idx = torch.arange(len(clean))
            if self.noisy_val_fraction is not None:
                n_val = int(round(self.noisy_val_fraction * len(clean)))
                if not 1 <= n_val < len(clean):
                    raise ValueError(f"noisy_val_fraction={self.noisy_val_fraction!r} leaves {n_val} of the "
                                     f"{len(clean)} training examples for validation; allowed: at least one "
                                     "example in each of the two parts")
                perm = torch.randperm(len(clean), generator=torch.Generator().manual_seed(self.seed + 1))
                train_idx, val_idx = perm[n_val:].sort().values, perm[:n_val].sort().values
                self.val_set = NoisyLabelDataset(ds, noisy, clean, val_idx, with_clean=False)
            self.train_set = NoisyLabelDataset(ds, noisy, clean, train_idx)
            self.actual_rate = float((noisy[train_idx] != clean[train_idx]).float().mean())
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
        if self.noisy_val_fraction is None:
            return self.base.val_dataloader()
        self.setup("fit")
        loader = self.base.train_dataloader()
        return DataLoader(self.val_set, batch_size=loader.batch_size, shuffle=False, collate_fn=loader.collate_fn,
                          num_workers=loader.num_workers, persistent_workers=loader.num_workers > 0)

    def test_dataloader(self) -> Any:
        return self.base.test_dataloader()

    def predict_dataloader(self) -> Any:
        return self.base.predict_dataloader()
