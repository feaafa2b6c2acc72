"""User-written parts plugged into the VAE family by class_path (no family subclass): used by test_vae_parts."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TinyEncoder(nn.Module):
    """``x -> [mu, log_var]`` through one tanh layer; counts its calls, so a test can see it ran."""

    def __init__(self, input_shape: list[int], latent_dim: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(1), nn.Linear(math.prod(input_shape), width), nn.Tanh(),
                                 nn.Linear(width, 2 * latent_dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.net(x)
