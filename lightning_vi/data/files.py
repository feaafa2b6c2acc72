"""File-based loaders: ``.npz`` arrays and torchvision data sets (optional ``vision`` extra).

Neither downloads anything; a missing file is a ``FileNotFoundError`` that names the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_vi.data.base import InMemoryDataModule


class NpzDataModule(InMemoryDataModule):
    """Arrays from an ``.npz`` file; ``x_key`` becomes ``x``, ``y_key`` (if given) becomes ``y``."""

    def __init__(self, path: str, x_key: str = "x", y_key: str | None = "y", batch_size: int = 128,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.path, self.x_key, self.y_key = Path(path), x_key, y_key

    def generate(self) -> dict[str, Tensor]:
        if not self.path.is_file():
            raise FileNotFoundError(f"data file {str(self.path)!r} does not exist; give data.init_args.path "
                                    "an existing .npz file (arrays named by x_key / y_key)")
        with np.load(self.path) as f:
            keys = list(f.keys())
            if self.x_key not in f:
                raise KeyError(f"x_key={self.x_key!r} is not in {str(self.path)!r}; arrays there: {keys}")
            out = {"x": torch.as_tensor(f[self.x_key]).float()}
            if self.y_key is not None:
                if self.y_key not in f:
                    raise KeyError(f"y_key={self.y_key!r} is not in {str(self.path)!r}; arrays there: {keys}")
                out["y"] = torch.as_tensor(f[self.y_key]).long()
        return out


class TorchvisionDataModule(InMemoryDataModule):
    """A torchvision image data set read from ``root`` (never downloaded): MNIST, FashionMNIST, CIFAR10."""

    names = ("MNIST", "FashionMNIST", "CIFAR10")

    def __init__(self, name: str = "MNIST", root: str = "data", batch_size: int = 128, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        if name not in self.names:
            raise ValueError(f"name={name!r} is not allowed; choose one of {list(self.names)}")
        self.name, self.root = name, root

    def generate(self) -> dict[str, Tensor]:
        try:
            import torchvision
        except Exception as err:  # ImportError, or an operator mismatch with the installed torch
            raise ImportError(f"TorchvisionDataModule needs torchvision: pip install 'lightning-vi[vision]' ({err})")
        cls = getattr(torchvision.datasets, self.name)
        try:
            ds = cls(self.root, train=True, download=False)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"{self.name} files not found under root={self.root!r} and downloads are off; "
                f"place the data set there (torchvision layout). ({err})"
            ) from None
        x = torch.as_tensor(np.asarray(ds.data)).float() / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        return {"x": x, "y": torch.as_tensor(np.asarray(ds.targets)).long()}
