"""Token sequences for recurrent VAEs: CLUTR-style task encodings (Azad et al. 2023).

A task is a sorted set of distinct grid-cell ids (obstacle locations), so a valid sequence is strictly
increasing; ``x`` holds token ids [N, L] (long), ``t`` positions and ``mask`` ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule


def sorted_subset_tokens(n: int, length: int, vocab_size: int, generator: torch.Generator) -> dict[str, Tensor]:
    """``n`` sequences of ``length`` distinct, increasing ids in ``[0, vocab_size)`` (vectorised)."""
    check_range("length", length, 1)
    if vocab_size < length:
        raise ValueError(f"vocab_size={vocab_size!r} is out of range; allowed: [length={length}, inf)")
    keys = torch.rand(n, vocab_size, generator=generator)
    x = keys.topk(length, dim=1).indices.sort(dim=1).values
    return {"x": x, "t": torch.arange(length, dtype=torch.float32).expand(n, length).clone(),
            "mask": torch.ones(n, length)}


def is_valid_task(x: Tensor) -> Tensor:
    """``[N]`` bool: the sequence is strictly increasing (a valid sorted task encoding)."""
    return (x[:, 1:] > x[:, :-1]).all(dim=1)


class TokenSequenceDataModule(InMemoryDataModule):
    """Sorted-subset token sequences: ``x`` [N, L] long in ``[0, vocab_size)``, ``t``, ``mask``."""

    def __init__(self, n: int = 4000, length: int = 5, vocab_size: int = 16, batch_size: int = 128,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.kw = dict(n=n, length=length, vocab_size=vocab_size)

    def generate(self) -> dict[str, Tensor]:
        return sorted_subset_tokens(generator=self.generator(), **self.kw)
