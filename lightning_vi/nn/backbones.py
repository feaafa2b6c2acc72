"""Feature extractors ("backbones") for classifiers: ``[B, *input_shape] -> [B, feature_dim]``.

* :class:`MLPBackbone` flattens and applies an MLP with an activation after the last layer;
* :class:`ConvBackbone` stride-2 3x3 conv blocks, global average pooling, a linear feature layer;
* :class:`ResNetBackbone` a small pre-activation-free ResNet (He et al. 2016): a stem conv, one
  BasicBlock per stage (stride 2 from the second stage on), global average pooling, a linear layer.

Every backbone ends in a ReLU'd feature vector, the "feature layer" that plugins such as
``nested_dropout`` truncate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_vi.nn.mlp import MLP, activation

BACKBONES = ("mlp", "conv", "resnet")


class MLPBackbone(nn.Module):
    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int], feature_dim: int, act: str = "relu") -> None:
        super().__init__()
        self.net = MLP(math.prod(input_shape), hidden, feature_dim, act)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.net(x))


class ConvBackbone(nn.Module):
    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], feature_dim: int, act: str = "relu") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = input_shape[0]
        for i, ch in enumerate(channels):
            layers += [nn.Conv2d(c, ch, 3, stride=1 if i == 0 else 2, padding=1), activation(act)]
            c = ch
        self.conv = nn.Sequential(*layers)
        self.fc = nn.Linear(c, feature_dim)
        self.act = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.fc(self.conv(x).mean(dim=(2, 3))))


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (nn.Identity() if stride == 1 and c_in == c_out else
                      nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNetBackbone(nn.Module):
    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], feature_dim: int) -> None:
        super().__init__()
        c = channels[0]
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        blocks = []
        for i, ch in enumerate(channels):
            blocks.append(BasicBlock(c, ch, 1 if i == 0 else 2))
            c = ch
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3))))


def build_backbone(name: str, input_shape: Sequence[int], feature_dim: int, hidden_dims: Sequence[int] = (256,),
                   channels: Sequence[int] = (32, 64), act: str = "relu") -> nn.Module:
    """Backbone ``name`` (one of :data:`BACKBONES`) mapping ``input_shape`` to ``feature_dim`` features."""
    if name not in BACKBONES:
        raise ValueError(f"backbone={name!r} is not allowed; choose one of {list(BACKBONES)}")
    if name == "mlp":
        return MLPBackbone(input_shape, hidden_dims, feature_dim, act)
    if len(input_shape) != 3:
        raise ValueError(f"backbone={name!r} needs input_shape [C, H, W], got {list(input_shape)}; use backbone='mlp'")
    if not channels:
        raise ValueError(f"channels={list(channels)!r} must name at least one conv stage")
    if name == "conv":
        return ConvBackbone(input_shape, channels, feature_dim, act)
    return ResNetBackbone(input_shape, channels, feature_dim)
