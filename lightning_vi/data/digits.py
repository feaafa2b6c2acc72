"""scikit-learn's 8x8 digits (1,797 images shipped inside the package), optionally resized."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vi.data.base import InMemoryDataModule


def load_digits_tensors(image_size: int = 8) -> dict[str, Tensor]:
    """Images in [0, 1] as ``[N, 1, S, S]`` and labels ``[N]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
    return {"x": x, "y": torch.tensor(d.target, dtype=torch.long)}


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn digits: ``x`` [N, 1, S, S] in [0, 1], ``y`` in 0..9.

    Args:
        image_size: 8 (native) or any size to resize to (e.g. 16, 32 for conv models).
        binarize: threshold at 0.5 (for Bernoulli likelihoods).
    """

    num_classes = 10

    def __init__(self, image_size: int = 8, binarize: bool = False, batch_size: int = 128,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if image_size < 1:
            raise ValueError(f"image_size={image_size!r} is out of range; allowed: [1, inf)")
        self.image_size, self.binarize = image_size, binarize

    def generate(self) -> dict[str, Tensor]:
        data = load_digits_tensors(self.image_size)
        if self.binarize:
            data["x"] = (data["x"] > 0.5).float()
        return data
