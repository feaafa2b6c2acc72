"""Digits with a planted spurious feature, and a shifted test split where the shortcut breaks.

Each image gets one bright "marker" pixel on its top or bottom border row whose position encodes a
class: in train/val the marker names the true label with probability ``correlation`` (otherwise a
random class); in the test split it names the true label with probability ``test_correlation``
(default 0: a random marker, so a classifier that relies on the shortcut fails there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule
from lightning_vi.data.digits import load_digits_tensors


def plant_marker(x: Tensor, y: Tensor, correlation: float, generator: torch.Generator,
                 strength: float = 1.0) -> tuple[Tensor, Tensor]:
    """Return ``(x with a marker pixel, marker class)``; the marker equals ``y`` with prob. ``correlation``."""
    n, num_classes = len(y), 10
    agree = torch.rand(n, generator=generator) < correlation
    rand = torch.randint(0, num_classes, (n,), generator=generator)
    marker = torch.where(agree, y, rand)
    rows = torch.where(marker < 8, 0, x.shape[-2] - 1)
    cols = torch.where(marker < 8, marker, marker - 8 + (x.shape[-1] - 2) // 2)
    x = x.clone()
    x[torch.arange(n), 0, rows, cols] = strength
    return x, marker


class SpuriousDigitsDataModule(InMemoryDataModule):
    """8x8 digits ``x`` [N, 1, 8, 8] with a label-correlated marker pixel; batches also carry ``marker``.

    Args:
        correlation: probability that the marker names the label in train and val (in [0, 1]).
        test_correlation: the same for the (shifted) test split; 0 = random marker.
        strength: marker pixel value.
    """

    num_classes = 10

    def __init__(self, correlation: float = 0.9, test_correlation: float = 0.0, strength: float = 1.0,
                 batch_size: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        check_range("correlation", correlation, 0.0, 1.0)
        check_range("test_correlation", test_correlation, 0.0, 1.0)
        self.correlation, self.test_correlation, self.strength = correlation, test_correlation, strength

    def generate(self) -> dict[str, Tensor]:
        return load_digits_tensors(8)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        for i, (name, split) in enumerate(sorted(self.splits.items())):
            corr = self.test_correlation if name == "test" else self.correlation
            split["x"], split["marker"] = plant_marker(split["x"], split["y"], corr, self.generator(i + 1),
                                                       self.strength)
