"""Reusable building blocks: MLPs, conv encoders/decoders and the factories of the families' default parts."""

from lightning_vi.nn.conv import ConvDecoder, ConvEncoder
from lightning_vi.nn.factories import (ConditionalEncoder, LinearGaussianEncoder, make_decoder, make_encoder,
                                       make_gaussian_encoder)
from lightning_vi.nn.mlp import MLP

__all__ = ["MLP", "ConvEncoder", "ConvDecoder", "ConditionalEncoder", "LinearGaussianEncoder", "make_encoder",
           "make_gaussian_encoder", "make_decoder"]
