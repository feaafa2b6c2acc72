"""Cauchy-Schwarz divergence information bottleneck for regression (CS-IB; Yu, Yu, Lokse, Jenssen &
Principe 2024, "Cauchy-Schwarz Divergence Information Bottleneck for Regression", Eq. 11).

An encoder gives ``t = f(x) + noise_std * eps`` and a decoder predicts ``yhat = g(t)``. The loss is::

    D_CS(p(y | t) || q(yhat | t))  +  beta * I_CS(x; t)

both estimated with Gaussian kernels of bandwidths ``sigma_y, sigma_t, sigma_x`` (no variational
approximation and no Gaussian likelihood). ``mse_weight`` optionally adds a mean-squared-error term
(0 by default, the paper's objective). Logged: ``pred`` (conditional CS), ``compression`` (I_CS),
``mse`` and ``rmse`` diagnostics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.bottleneck.cs_divergence import conditional_cs_divergence, cs_mutual_information
from lightning_vi.nn import MLP
from lightning_vi.registry import FAMILIES


@FAMILIES.register("cs_ib")
class CSIB(VIModule):
    """CS-IB regressor with kernel CS-divergence terms.

    Args:
        input_dim: features of ``x``.
        output_dim: targets of ``y``.
        hidden_dims: encoder widths.
        latent_dim: size of ``t``.
        beta: weight of the compression term ``I_CS(x; t)`` (>= 0): a Cauchy-Schwarz divergence, not a KL, so
            it keeps the paper's name (docs/concepts.md).
        sigma_x: kernel bandwidth of ``x`` (> 0).
        sigma_t: kernel bandwidth of ``t`` (> 0).
        sigma_y: kernel bandwidth of ``y`` (> 0).
        noise_std: Gaussian noise added to ``t`` in training.
        mse_weight: optional MSE term weight.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_dim: int = 5,
        output_dim: int = 1,
        hidden_dims: list[int] = (64,),
        latent_dim: int = 16,
        beta: float = 0.01,
        sigma_x: float = 2.0,
        sigma_t: float = 1.0,
        sigma_y: float = 0.5,
        noise_std: float = 0.1,
        mse_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_range("beta", beta, 0.0)
        for name, v in (("sigma_x", sigma_x), ("sigma_t", sigma_t), ("sigma_y", sigma_y)):
            check_range(name, v, 0.0, low_open=True)
        check_range("noise_std", noise_std, 0.0)
        check_range("mse_weight", mse_weight, 0.0)
        self.save_hyperparameters()
        self.input_shape = (input_dim,)
        self.encoder = MLP(input_dim, list(hidden_dims), latent_dim)
        self.decoder = MLP(latent_dim, list(hidden_dims), output_dim)
        self.beta, self.noise_std = beta, noise_std
        self.sigmas = (sigma_x, sigma_t, sigma_y)
        self.term_weights = {"pred": 1.0, "compression": beta, "mse": mse_weight}

    def forward(self, x: Tensor) -> Tensor:
        """Prediction from the noiseless code."""
        return self.decoder(self.encoder(x))

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, y = batch["x"], batch["y"]
        t = self.encoder(x)
        if self.training and self.noise_std > 0:
            t = t + self.noise_std * torch.randn_like(t)
        y_hat = self.decoder(t)
        sx, st, sy = self.sigmas
        mse = (y_hat - y).pow(2).mean()
        return {
            "pred": conditional_cs_divergence(y, y_hat, t, sy, st),
            "compression": cs_mutual_information(x, t, sx, st),
            "mse": mse, "rmse": mse.sqrt(), "z": t,
        }
