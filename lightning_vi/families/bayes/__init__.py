"""Bayesian families: mean-field BNN, SSVI, binary VCL, NIW few-shot; Bayesian layers and MC dropout."""

from lightning_vi.families.bayes.binary_vcl import BinaryLinear, BinaryVCL, binary_kl
from lightning_vi.families.bayes.bnn import BNN
from lightning_vi.families.bayes.layers import (BayesConv2d, BayesLinear, bayesianize, kl_divergence,
                                                 mc_dropout_predict, set_sampling)

__all__ = ["BinaryLinear", "BinaryVCL", "binary_kl",
           "BNN", "BayesLinear", "BayesConv2d", "bayesianize", "kl_divergence", "mc_dropout_predict", "set_sampling"]
