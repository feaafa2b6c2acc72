"""Mean-field variational Bayesian neural network classifier ("Bayes by Backprop").

Blundell et al. 2015, "Weight Uncertainty in Neural Networks", Eq. 2: minimise
``KL(q(w) || p(w)) - E_q log p(D | w)``; per example ``nll_mean + kl_weight * KL / N``. The expectation
uses ``num_samples`` local-reparameterization samples (Kingma et al. 2015, Eq. 6); prediction averages
``num_eval_samples`` softmax outputs. Test metrics: accuracy, NLL, ECE, Brier of the predictive.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.bayes._common import BayesClassifierMixin
from lightning_vi.families.bayes.layers import BayesConv2d, BayesLinear, kl_divergence
from lightning_vi.nn.mlp import activation
from lightning_vi.registry import FAMILIES


def bayes_mlp(d_in: int, hidden: list[int], d_out: int, prior_std: float, init_std: float, act: str = "relu") -> nn.Sequential:
    dims = [d_in, *hidden, d_out]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(BayesLinear(a, b, prior_std=prior_std, init_std=init_std))
        if i < len(dims) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


def bayes_convnet(input_shape: tuple[int, ...], channels: list[int], d_out: int, prior_std: float,
                  init_std: float) -> nn.Sequential:
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for ch in channels:
        layers += [BayesConv2d(c, ch, 3, stride=2, padding=1, prior_std=prior_std, init_std=init_std), nn.ReLU()]
        c, h, w = ch, (h + 1) // 2, (w + 1) // 2
    layers += [nn.Flatten(), BayesLinear(c * h * w, d_out, prior_std=prior_std, init_std=init_std)]
    return nn.Sequential(*layers)


@FAMILIES.register("bnn")
class BNN(BayesClassifierMixin, VIModule):
    """Mean-field Gaussian BNN classifier (MLP or conv) trained by Bayes by Backprop.

    Args:
        input_shape: shape of one example, e.g. ``[1, 8, 8]``.
        num_classes: number of labels.
        architecture: ``"mlp"`` (``hidden_dims``) or ``"conv"`` (stride-2 convs with ``channels``).
        hidden_dims: MLP hidden widths.
        channels: channels of the stride-2 conv blocks (``architecture="conv"``).
        prior_std: std of the zero-mean Gaussian prior (> 0).
        init_std: initial posterior std.
        num_samples: MC samples of the expected log-likelihood per step.
        num_eval_samples: MC samples of the predictive.
        kl_weight: multiplies ``KL / dataset_size`` (1 = the ELBO).
        dataset_size: N (default: from the data module).
        conv_channels: deprecated name of ``channels``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        num_classes: int = 10,
        architecture: str = "mlp",
        hidden_dims: list[int] = (128,),
        channels: list[int] = (16, 32),
        prior_std: float = 1.0,
        init_std: float = 1e-3,
        num_samples: int = 1,
        num_eval_samples: int = 16,
        kl_weight: float = 1.0,
        dataset_size: int | None = None,
        conv_channels: Optional[list[int]] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        channels = self.rename_argument("conv_channels", conv_channels, "channels", channels, (16, 32))
        check_range("prior_std", prior_std, 0.0, low_open=True)
        check_range("init_std", init_std, 0.0, low_open=True)
        check_choice("architecture", architecture, ("mlp", "conv"))
        check_range("num_samples", num_samples, 1)
        check_range("num_eval_samples", num_eval_samples, 1)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("num_classes", num_classes, 2)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_samples, self.num_eval_samples = num_samples, num_eval_samples
        self.kl_weight, self.dataset_size = kl_weight, dataset_size
        self.prior_std, self.init_std = prior_std, init_std
        if architecture == "mlp":
            self.net = bayes_mlp(math.prod(self.input_shape), list(hidden_dims), num_classes, prior_std, init_std)
        else:
            self.net = bayes_convnet(self.input_shape, list(channels), num_classes, prior_std, init_std)
        self.term_weights = {"nll": 1.0, "kl": 0.0}
        self._set_kl_scale()
        self.build_metrics()

    def logits(self, x: Tensor) -> Tensor:
        """One posterior sample of the logits (posterior mean when sampling is switched off)."""
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        """Predictive probabilities (MC average over ``num_eval_samples``)."""
        return self.predict_proba(x)

    def kl(self) -> Tensor:
        return kl_divergence(self.net)
