"""Learned image compression (P44): a transform-coding VAE with a vectorized multivariate Gaussian mixture
prior or a factorized baseline, and a range coder (constriction) that writes real bitstreams."""

from lightning_vi.families.compression.model import CompressionVAE
from lightning_vi.families.compression.priors import FactorizedPrior, MVGMPrior, VectorPrior

__all__ = ["CompressionVAE", "MVGMPrior", "FactorizedPrior", "VectorPrior"]
