"""Deep variational information bottleneck classifier (Alemi et al. 2017, "Deep Variational
Information Bottleneck", Eq. 7).

``L = E_x [ E_{z ~ q(z|x)} -log q(y|z) + kl_weight * KL(q(z|x) || r(z)) ]`` with a Gaussian encoder
``q(z|x) = N(mu(x), diag sigma^2(x))``, a standard-normal marginal ``r(z)`` and a linear softmax
decoder. The KL term is the *rate* (an upper bound on I(X; Z)); the cross-entropy bounds -I(Z; Y).
Logged: ``train/ce``, ``train/rate``, ``acc``. Prediction averages ``num_eval_samples`` decoder softmaxes.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl_per_dim
from lightning_vi.core.metrics_mixin import PredictiveMetricsMixin
from lightning_vi.core.module import VIModule
from lightning_vi.nn import MLP
from lightning_vi.registry import FAMILIES


@FAMILIES.register("vib")
class VIB(PredictiveMetricsMixin, VIModule):
    """Variational information bottleneck classifier with a Gaussian stochastic code.

    Args:
        input_shape: shape of one example.
        num_classes: number of labels.
        hidden_dims: encoder MLP widths.
        latent_dim: code size K.
        kl_weight: weight of the rate term ``KL(q(z|x) || r(z))`` (>= 0; the paper's beta).
        num_samples: code samples per example in training.
        num_eval_samples: code samples of the predictive.
        beta: deprecated name of ``kl_weight``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden_dims: list[int] = (128,),
        latent_dim: int = 16,
        kl_weight: float = 1e-3,
        num_samples: int = 1,
        num_eval_samples: int = 12,
        beta: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, 1e-3)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("latent_dim", latent_dim, 1)
        check_range("num_samples", num_samples, 1)
        check_range("num_eval_samples", num_eval_samples, 1)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.kl_weight, self.num_samples, self.num_eval_samples = kl_weight, num_samples, num_eval_samples
        self.encoder = MLP(math.prod(self.input_shape), list(hidden_dims), 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, num_classes)
        self.term_weights = {"ce": 1.0, "rate": kl_weight}
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
