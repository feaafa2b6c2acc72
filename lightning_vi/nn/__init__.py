"""Reusable building blocks: MLPs and conv encoders/decoders."""

from lightning_vi.nn.conv import ConvDecoder, ConvEncoder
from lightning_vi.nn.mlp import MLP

__all__ = ["MLP", "ConvEncoder", "ConvDecoder"]
