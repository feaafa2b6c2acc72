"""Default parts of the autoencoder families, built by name when a family is not given its own.

Contracts (what a user-written ``nn.Module`` given by ``class_path`` must do):

* encoder of a Gaussian-latent family (``vae``, ``cevae``): ``x [B, *input_shape] -> [B, 2 * latent_dim]``,
  the posterior mean followed by the log-variance; ``cvae``'s encoder is called as ``encoder(x, c)``.
* decoder: ``z [B, in_dim] -> [B, *output_shape]`` likelihood parameters (Gaussian mean or Bernoulli logits).

Kinds: ``"mlp"`` (hidden widths ``hidden_dims``, mirrored in the decoder), ``"conv"`` (images; stride-2
conv blocks with ``channels``) and ``"linear"`` (no hidden layer; the Gaussian encoder then has a learned,
data-independent diagonal variance: probabilistic PCA, Lucas et al. 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice
from lightning_vi.nn.conv import ConvDecoder, ConvEncoder
from lightning_vi.nn.mlp import MLP

ARCHITECTURES = ("mlp", "conv", "linear")


class LinearGaussianEncoder(MLP):
    """Linear posterior mean and a learned data-independent log-variance (``log_var``, init 0);
    returns ``[mu, log_var]`` concatenated, ``[B, 2 * latent_dim]``."""

    def __init__(self, in_dim: int, latent_dim: int) -> None:
        super().__init__(in_dim, [], latent_dim)
        self.log_var = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x: Tensor) -> Tensor:
        mu = super().forward(x)
        return torch.cat([mu, self.log_var.expand_as(mu)], -1)


class ConditionalEncoder(nn.Module):
    """``encoder(x, c) = head([features(x), c])``: the recognition network q(z|x, c) of a CVAE."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        return self.head(torch.cat([self.features(x), c], dim=1))


def _check(kind: str, input_shape: Sequence[int]) -> None:
    check_choice("architecture", kind, ARCHITECTURES)
    if kind == "conv" and len(input_shape) != 3:
        raise ValueError(f"architecture='conv' needs input_shape [C, H, W]; got {list(input_shape)}")


def make_encoder(kind: str, input_shape: Sequence[int], out_dim: int, hidden_dims: Sequence[int] = (256, 128),
                 channels: Sequence[int] = (32, 64)) -> nn.Module:
    """Deterministic encoder ``x [B, *input_shape] -> [B, out_dim]`` of the given kind."""
    _check(kind, input_shape)
    if kind == "conv":
        return ConvEncoder(input_shape, channels, out_dim)
    return MLP(math.prod(input_shape), [] if kind == "linear" else hidden_dims, out_dim)


def make_gaussian_encoder(kind: str, input_shape: Sequence[int], latent_dim: int,
                          hidden_dims: Sequence[int] = (256, 128), channels: Sequence[int] = (32, 64)) -> nn.Module:
    """Encoder ``x -> [mu, log_var]`` (``[B, 2 * latent_dim]``) of a diagonal-Gaussian posterior."""
    _check(kind, input_shape)
    if kind == "linear":
        return LinearGaussianEncoder(math.prod(input_shape), latent_dim)
    return make_encoder(kind, input_shape, 2 * latent_dim, hidden_dims, channels)


def make_decoder(kind: str, in_dim: int, output_shape: Sequence[int], hidden_dims: Sequence[int] = (256, 128),
                 channels: Sequence[int] = (32, 64)) -> nn.Module:
    """Decoder ``z [B, in_dim] -> [B, *output_shape]``, the mirror of :func:`make_encoder`."""
    _check(kind, output_shape)
    output_shape = tuple(int(s) for s in output_shape)
    if kind == "conv":
        return ConvDecoder(in_dim, channels, output_shape)
    hidden = [] if kind == "linear" else list(hidden_dims)[::-1]
    return nn.Sequential(MLP(in_dim, hidden, math.prod(output_shape)), nn.Unflatten(1, output_shape))
