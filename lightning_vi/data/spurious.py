"""Digits with a planted spurious feature, and a shifted test split where the shortcut breaks.

Each image gets one bright "marker" pixel on its top or bottom border row whose position encodes a
class: in train/val the marker names the true label with probability ``correlation`` (otherwise a
random class); in the test split it names the true label with probability ``test_correlation``
(default 0: a random marker, so a classifier that relies on the shortcut fails there).

``mode="distractor"`` plants a rich, only partly predictive pattern instead (the "superfluous patterns" of
CVIB, Chang et al.): each input is the target digit with a second digit image of the same split beside it,
``x`` [N, 1, 8, 16]. The distractor's class equals the label with probability ``correlation`` (train/val)
or ``test_correlation`` (test) and is otherwise a uniformly random *other* class, so
``test_correlation=0`` makes the distractor anti-correlated with the label.
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


def attach_distractor(x: Tensor, y: Tensor, correlation: float,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Return ``(x | distractor image side by side, distractor class)``; class == ``y`` w.p. ``correlation``.

    The distractor is a uniformly drawn image of its class from ``x`` itself (vectorised, no Python loop).
    """
    n, num_classes = len(y), 10
    agree = torch.rand(n, generator=generator) < correlation
    other = (y + torch.randint(1, num_classes, (n,), generator=generator)) % num_classes
    cls = torch.where(agree, y, other)
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=num_classes)
    if bool((counts[cls] == 0).any()):
        raise ValueError(f"distractor classes {sorted(set(cls[counts[cls] == 0].tolist()))} have no images")
    start = torch.cumsum(counts, 0) - counts
    pick = start[cls] + (torch.rand(n, generator=generator) * counts[cls]).long().clamp_max(counts[cls] - 1)
    return torch.cat([x, x[order[pick]]], dim=-1), cls


class SpuriousDigitsDataModule(InMemoryDataModule):
    """8x8 digits ``x`` [N, 1, 8, 8] with a label-correlated marker pixel; batches also carry ``marker``
    (the marker's class, or the distractor digit's class in ``mode="distractor"``, where ``x`` is [N, 1, 8, 16]).

    Args:
        mode: ``"marker"`` (one marker pixel) or ``"distractor"`` (a second, label-correlated digit).
        correlation: probability that the marker names the label in train and val (in [0, 1]).
        test_correlation: the same for the (shifted) test split; 0 = random marker.
        strength: marker pixel value (marker mode).
    """

    num_classes = 10

    modes = ("marker", "distractor")

    def __init__(self, correlation: float = 0.9, test_correlation: float = 0.0, strength: float = 1.0,
                 batch_size: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 num_workers: int = 0, mode: str = "marker") -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if mode not in self.modes:
            raise ValueError(f"mode={mode!r} is not one of {self.modes}")
        self.mode = mode
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
            if self.mode == "distractor":
                split["x"], split["marker"] = attach_distractor(split["x"], split["y"], corr, self.generator(i + 1))
            else:
                split["x"], split["marker"] = plant_marker(split["x"], split["y"], corr, self.generator(i + 1),
                                                           self.strength)
