"""Convolutional encoder/decoder pair: stride-2 4x4 convolutions halve (double) the resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_vi.nn.mlp import activation


def _check_divisible(shape: Sequence[int], n_down: int) -> None:
    f = 2**n_down
    if shape[1] % f or shape[2] % f:
        raise ValueError(
            f"input_shape={list(shape)}: height and width must be divisible by 2**len(channels)={f}; "
            "change the image size or the number of conv channels"
        )


class ConvEncoder(nn.Module):
    """``[B, C, H, W] -> [B, out_dim]`` with ``len(channels)`` stride-2 conv blocks and a linear head."""

    def __init__(self, in_shape: Sequence[int], channels: Sequence[int], out_dim: int, act: str = "relu") -> None:
        super().__init__()
        _check_divisible(in_shape, len(channels))
        layers: list[nn.Module] = []
        c = in_shape[0]
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), activation(act)]
            c = ch
        self.conv = nn.Sequential(*layers)
        f = 2 ** len(channels)
        self.flat = c * (in_shape[1] // f) * (in_shape[2] // f)
        self.head = nn.Linear(self.flat, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.conv(x), 1))


class ConvDecoder(nn.Module):
    """``[B, in_dim] -> [B, C, H, W]``, the mirror of :class:`ConvEncoder`."""

    def __init__(self, in_dim: int, channels: Sequence[int], out_shape: Sequence[int], act: str = "relu") -> None:
        super().__init__()
        _check_divisible(out_shape, len(channels))
        chans = list(channels)[::-1]
        f = 2 ** len(chans)
        self.start = (chans[0], out_shape[1] // f, out_shape[2] // f)
        self.fc = nn.Linear(in_dim, chans[0] * self.start[1] * self.start[2])
        layers: list[nn.Module] = [activation(act)]
        outs = chans[1:] + [out_shape[0]]
        for i, (a, b) in enumerate(zip(chans, outs)):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(activation(act))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(-1, *self.start))
