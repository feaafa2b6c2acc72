"""Example third-party lightning-vi plugin: Gaussian input-noise injection (Sietsma & Dow 1991;
Bishop 1995, "Training with Noise is Equivalent to Tikhonov Regularization").

    x~ = x + std * eps,   eps ~ N(0, I)      (training batches only, with probability ``prob``)

Defaults: ``std=0.1``, ``prob=1.0``. Registered as ``input_noise`` through the entry point group
``lightning_vi.plugins`` only (no import of this package is needed anywhere).
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_vi.core.checks import check_range
from lightning_vi.plugins.base import Plugin

__all__ = ["InputNoise"]


class InputNoise(Plugin):
    """Gaussian noise on the inputs of training batches (a third-party example plugin).

    Args:
        std: noise standard deviation, >= 0.
        prob: probability of noising a batch, in [0, 1].
    """

    order = 10

    def __init__(self, std: float = 0.1, prob: float = 1.0) -> None:
        check_range("std", std, 0.0)
        check_range("prob", prob, 0.0, 1.0)
        self.std, self.prob = float(std), float(prob)

    def transform_batch(self, batch: Any, module: Any) -> Any:
        if self.prob < 1.0 and float(torch.rand(())) >= self.prob:
            return batch
        x = batch["x"]
        return {**batch, "x": x + self.std * torch.randn_like(x)}
