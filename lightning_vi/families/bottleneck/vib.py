"""Deep variational information bottleneck classifier (Alemi et al. 2017, "Deep Variational
Information Bottleneck", Eq. 7).

``L = E_x [ E_{z ~ q(z|x)} -log q(y|z) + beta * KL(q(z|x) || r(z)) ]`` with a Gaussian encoder
``q(z|x) = N(mu(x), diag sigma^2(x))``, a standard-normal marginal ``r(z)`` and a linear softmax
decoder. The KL term is the *rate* (an upper bound on I(X; Z)); the cross-entropy bounds -I(Z; Y).
Logged: ``train/ce``, ``train/rate``, ``acc``. Prediction averages ``num_eval_samples`` decoder softmaxes.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl_per_dim
from lightning_vi.core.metrics_mixin import PredictiveMetricsMixin
from lightning_vi.core.module import VIModule
from lightning_vi.nn import MLP
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES


@FAMILIES.register("vib")
class VIB(PredictiveMetricsMixin, VIModule):
    """Variational information bottleneck classifier with a Gaussian stochastic code.

    Args:
        input_shape: shape of one example. num_classes: labels. hidden_dims: encoder MLP widths.
        latent_dim: code size K. beta: weight of the rate term (>= 0).
        num_samples: code samples per example in training. num_eval_samples: for prediction.
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden_dims: list[int] = (128,),
        latent_dim: int = 16,
        beta: float = 1e-3,
        num_samples: int = 1,
        num_eval_samples: int = 12,
        plugins: list[Union[Plugin, str, dict]] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr: float = 1e-3,
        check_finite: bool = True,
    ) -> None:
        super().__init__(plugins=plugins, optimizer=optimizer, lr_scheduler=lr_scheduler, lr=lr,
                         check_finite=check_finite)
        check_range("beta", beta, 0.0)
        check_range("latent_dim", latent_dim, 1)
        check_range("num_samples", num_samples, 1)
        check_range("num_eval_samples", num_eval_samples, 1)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.beta, self.num_samples, self.num_eval_samples = beta, num_samples, num_eval_samples
        self.encoder = MLP(math.prod(self.input_shape), list(hidden_dims), 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, num_classes)
        self.term_weights = {"ce": 1.0, "rate": beta}
        self.build_metrics()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, log_var = self.encoder(x).chunk(2, dim=-1)
        return mu, log_var.clamp(-20.0, 10.0)

    @torch.no_grad()
    def predict_proba(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        mu, log_var = self.encode(x)
        s = num_samples or self.num_eval_samples
        z = mu + torch.randn(s, *mu.shape, device=mu.device) * (0.5 * log_var).exp()
        return self.decoder(z).softmax(-1).mean(0)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict_proba(x)

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, y = batch["x"], batch["y"]
        mu, log_var = self.encode(x)
        z = mu + torch.randn(self.num_samples, *mu.shape, device=mu.device) * (0.5 * log_var).exp()
        logits = self.decoder(z)
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(self.num_samples))
        rate = gaussian_kl_per_dim(mu, log_var).sum(-1).mean()
        acc = (logits.mean(0).argmax(-1) == y).float().mean()
        return {"ce": ce, "rate": rate, "acc": acc, "z": z[0], "logits": logits[0]}
