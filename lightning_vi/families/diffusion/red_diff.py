"""RED-Diff as a registered family, so that ``lvi predict`` restores images with a trained DDPM prior
(Mardani et al. 2024; the solver, Eq. 11 and the SNR weighting are in :mod:`red_diff_solver`).

Each predict batch of clean images ``x`` is degraded, ``y = A(x) + sigma_y * noise``, and restored;
``predict_step`` returns ``{"restored", "degraded", "clean"}`` (``degraded`` is the operator's
back-projection of ``y``, the baseline a restoration must beat). Write them with
``lightning_vi.callbacks.NpzPredictionWriter``::

    lvi predict --config configs/diffusion/red_diff_digits.yaml --model.init_args.prior_checkpoint PRIOR.ckpt
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.producer import FrozenProducers, build_producer, read_producer
from lightning_vi.families.diffusion.red_diff_solver import OPERATORS, REDDiff, make_operator
from lightning_vi.registry import FAMILIES

__all__ = ["REDDiffRestorer", "REDDiff", "make_operator", "load_prior"]

MAKE_PRIOR = "lvi fit --config configs/diffusion/ddpm_digits8.yaml"


def load_prior(path: str, prior_config: dict | None = None) -> tuple[DDPM, dict]:
    """``(frozen image DDPM, spec)`` from ``prior_config`` (stored spec) or ``prior_checkpoint``; clear
    errors for a missing file, a checkpoint of another family, or a prior that is not on images."""
    if prior_config:
        return build_producer(prior_config), dict(prior_config)
    prior, spec = read_producer(path, arg="prior_checkpoint", consumer="red_diff", families=("ddpm",), make=MAKE_PRIOR)
    if len(prior.input_shape) != 3:
        raise ValueError(f"prior_checkpoint={path!r} has input_shape {list(prior.input_shape)}; RED-Diff's "
                         f"operators need an image prior with input_shape [C, H, W]; make one with: {MAKE_PRIOR}")
    return prior, spec


@FAMILIES.register("red_diff")
class REDDiffRestorer(FrozenProducers, VIModule):
    """Restore degraded images with RED-Diff (``lvi predict``); nothing to train.

    Args:
        prior_checkpoint: path of a trained ``ddpm`` checkpoint on the same images (read at the first
            build; the prior is then a frozen submodule). prior_config: written at the first build.
        operator: ``inpainting``, ``super_resolution`` or ``denoising``.
        factor: super-resolution factor. observed_fraction, mask_seed: the fixed random inpainting
            mask (fraction of pixels observed, and its seed).
        sigma_y: measurement noise std added to ``A(x)`` (data space).
        lam, steps, weighting, t_max, t_min: see :class:`REDDiff` (``sqrt_inv_snr`` = the paper's SNR weighting).
        lr: Adam learning rate on the mean ``mu``. seed: measurement noise and solver noise (per batch: seed + index).
    """

    producers = ("prior",)

    def __init__(self, prior_checkpoint: str = "", operator: str = "inpainting", factor: int = 2,
                 observed_fraction: float = 0.5, mask_seed: int = 1, sigma_y: float = 0.01, lam: float = 0.25,
                 steps: int = 150, lr: float = 0.2, weighting: str = "sqrt_inv_snr", t_max: int | None = None,
                 t_min: int = 0, seed: int = 0, prior_config: dict | None = None) -> None:
        super().__init__(lr=lr)
        if operator not in OPERATORS:
            raise ValueError(f"operator={operator!r} is not allowed; choose one of {list(OPERATORS)}")
        check_range("observed_fraction", observed_fraction, 0.0, 1.0)
        prior, spec = load_prior(prior_checkpoint, prior_config)
        self.save_hyperparameters()
        self.hparams["prior_config"] = spec
        self.prior = prior
        c, h, w = self.prior.input_shape
        if operator == "super_resolution" and (h % factor or w % factor):
            raise ValueError(f"factor={factor!r} must divide the prior's image size {h}x{w}")
        mask = (torch.rand(1, h, w, generator=torch.Generator().manual_seed(mask_seed)) < observed_fraction).float()
        self.register_buffer("mask", mask, persistent=False)
        self.operator = make_operator(operator, factor=factor, mask=self.mask if operator == "inpainting" else None)
        self.solver = REDDiff(self.prior, self.operator, sigma_y=sigma_y, lam=lam, steps=steps, lr=lr,
                              t_max=t_max, t_min=t_min, weighting=weighting)

    def objective(self, batch: Any) -> dict[str, Tensor]:
        raise RuntimeError("red_diff has nothing to train; run `lvi predict` (train the prior with `lvi fit` on `ddpm`)")

    def degrade(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The measurement ``y = A(x) + sigma_y * noise``."""
        ax = self.operator(x)
        return ax + self.hparams.sigma_y * torch.randn(ax.shape, generator=generator).to(ax)

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x = batch["x"] if isinstance(batch, dict) else batch
        if tuple(x.shape[1:]) != tuple(self.prior.input_shape):
            raise ValueError(
                f"batch['x'] has shape {tuple(x.shape)}, but prior_checkpoint={self.hparams.prior_checkpoint!r} "
                f"was trained on images {list(self.prior.input_shape)}; use data of that size "
                f"(e.g. --data.init_args.image_size {self.prior.input_shape[-1]})")
        # Lightning predicts under inference mode; RED-Diff needs gradients with respect to the mean.
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone()
            g = torch.Generator().manual_seed(self.hparams.seed + batch_idx)
            y = self.degrade(x, g)
            restored = self.solver.restore(y, generator=g)
            return {"restored": restored.detach(), "degraded": self.operator.initial(y).detach(), "clean": x}
