"""Base data module for in-memory data: deterministic split, batched indexing (no per-example Python)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_vi.core.checks import check_range


class TensorDictDataset(Dataset):
    """A dict of equally long tensors; ``__getitems__`` gathers a whole batch with one index op."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors must have the same length; got {lengths}")
        self.tensors = tensors
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}


def _identity(batch: Any) -> Any:
    return batch


class InMemoryDataModule(L.LightningDataModule):
    """Generates (or loads) a dict of tensors once, splits it train/val/test with a seeded permutation.

    Batches are dicts: ``x`` (inputs) and, where the data has them, ``y`` (labels) and more.
    Subclasses implement ``generate() -> dict[str, Tensor]``.
    """

    def __init__(self, batch_size: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 seed: int = 0, num_workers: int = 0, eval_batch_size: int | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is out of range; allowed: [1, inf)")
        check_range("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
        check_range("test_fraction", test_fraction, 0.0, 1.0, high_open=True)
        check_range("val_fraction + test_fraction", val_fraction + test_fraction, 0.0, 1.0, high_open=True)
        self.batch_size, self.val_fraction, self.test_fraction = batch_size, val_fraction, test_fraction
        self.seed, self.num_workers = seed, num_workers
        self.eval_batch_size = eval_batch_size or max(batch_size, 256)
        self.splits: dict[str, dict[str, Tensor]] = {}

    def generate(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.generate()
        n = len(next(iter(data.values())))
        perm = torch.randperm(n, generator=self.generator(10_007))
        n_val, n_test = int(round(n * self.val_fraction)), int(round(n * self.test_fraction))
        parts = {"val": perm[:n_val], "test": perm[n_val:n_val + n_test], "train": perm[n_val + n_test:]}
        self.splits = {s: {k: v[i] for k, v in data.items()} for s, i in parts.items()}

    @property
    def example_shape(self) -> tuple[int, ...]:
        """Shape of one ``x`` (generates the data if needed)."""
        self.setup()
        return tuple(self.splits["train"]["x"].shape[1:])

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ds = TensorDictDataset(self.splits[split])
        bs = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, collate_fn=_identity,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
