"""PSNR / SSIM for image restoration (via torchmetrics), with an SSIM window that fits tiny images."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    return float(peak_signal_noise_ratio(pred.clamp(0, data_range), target, data_range=data_range))


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> float:
    k = min(11, min(target.shape[-2:]) - (1 - min(target.shape[-2:]) % 2))  # largest odd window <= size
    return float(structural_similarity_index_measure(pred.clamp(0, data_range), target, data_range=data_range,
                                                      kernel_size=k, sigma=1.5 * k / 11))
