"""Variational continual learning with binary weights, trained in field space.

Li, Huang, Zou & Huang 2023, "Statistical mechanics of continual learning: variational principle and
mean-field potential", Phys. Rev. E 108, 014309 (arXiv:2212.02846), multilayer section.

Every weight is binary, ``w in {-1, +1}``, with the mean-field posterior ``q(w) = e^{h w} / (2 cosh h)``
parameterised by a real *field* ``h`` (trained by gradients, where the discrete weight has none); its
mean is ``m = tanh(h)``. For a layer ``z_i = sum_j w_ij x_j / sqrt(n_in)`` the central-limit theorem makes
the pre-activation Gaussian (the paper's Gaussian field approximation) with::

    mean_i = sum_j m_ij x_j / sqrt(n_in),    var_i = sum_j (1 - m_ij^2) x_j^2 / n_in,

sampled by reparameterization ``z = mean + sqrt(var) * eps`` (the weight uncertainty ``1 - m^2`` enters
the forward pass). Task ``t`` minimises the variational free energy
``-E_q log p(D_t | w) + KL(q_t || q_{t-1})``, where the prior is the previous task's posterior (the
uniform ``h = 0`` for the first task); between two Bernoulli fields the KL per weight is::

    KL(h || h') = m (h - h') - log cosh h + log cosh h',     m = tanh h.

Per example the loss is ``nll_mean + kl_weight * KL_sum / N`` as in ``bnn`` (``first_task_kl_weight`` on
the first task); the defaults are the ones measured on three permuted-digit tasks (tests/families/bayes/test_binary_vcl.py).
``consolidate()`` copies the posterior fields into the prior at the end of a task; :class:`~lightning_vi.callbacks.TaskSequence`
does that and switches the data module to the next task every ``epochs_per_task`` epochs, and logs the
accuracy on every seen task (``val/acc_task{k}``, ``val/acc_old_mean``, ``val/acc_seen_mean``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.bayes._common import BayesClassifierMixin
from lightning_vi.nn.mlp import activation as make_activation
from lightning_vi.registry import FAMILIES


def log_cosh(h: Tensor) -> Tensor:
    """``log cosh h`` without overflow: ``|h| + log1p(exp(-2|h|)) - log 2``."""
    a = h.abs()
    return a + torch.log1p(torch.exp(-2 * a)) - math.log(2.0)


def binary_kl(field: Tensor, prior_field: Tensor) -> Tensor:
    """Elementwise ``KL(q_h || q_h')`` between ``q_h(w) = e^{hw} / (2 cosh h)`` on ``w in {-1, +1}``:
    ``tanh(h) (h - h') - log cosh h + log cosh h'``."""
    return torch.tanh(field) * (field - prior_field) - log_cosh(field) + log_cosh(prior_field)


class BinaryLinear(nn.Module):
    """Linear layer with binary weights ``w in {-1, +1}``, ``q(w) = e^{hw}/(2 cosh h)``, no bias.

    ``forward`` samples the Gaussian pre-activation (CLT, module docstring) when ``sampling`` is on and
    returns its mean otherwise. ``prior_field`` (a buffer, 0 = uniform) is the previous task's posterior.
    """

    def __init__(self, in_features: int, out_features: int, init_field_std: float = 1.0) -> None:
        super().__init__()
        check_range("in_features", in_features, 1)
        check_range("out_features", out_features, 1)
        check_range("init_field_std", init_field_std, 0.0)
        self.in_features, self.out_features = in_features, out_features
        self.field = nn.Parameter(torch.randn(out_features, in_features) * init_field_std)
        self.register_buffer("prior_field", torch.zeros(out_features, in_features))
        #: ``True``: sample the pre-activation (training, MC prediction); ``False``: its mean.
        self.sampling = True

    @property
    def weight_mean(self) -> Tensor:
        """``m = tanh(h) = E_q[w]``."""
        return torch.tanh(self.field)

    def moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian pre-activation ``(mean, var)`` of ``x @ w.T / sqrt(n_in)`` under ``q``."""
        m = self.weight_mean
        mean = F.linear(x, m) / math.sqrt(self.in_features)
        var = F.linear(x.pow(2), 1 - m.pow(2)) / self.in_features
        return mean, var

    def forward(self, x: Tensor) -> Tensor:
        mean, var = self.moments(x)
        if not self.sampling:
            return mean
        return mean + var.clamp_min(1e-12).sqrt() * torch.randn_like(mean)

    def sample_weights(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` weight matrices ``[n, out, in]`` drawn from ``q`` (``P(w = +1) = (1 + m) / 2``)."""
        p = ((1 + self.weight_mean.detach()) / 2).expand(n, -1, -1)
        return torch.where(torch.rand(p.shape, generator=generator) < p, 1.0, -1.0)

    def kl(self) -> Tensor:
        """``sum KL(q_h || q_prior)`` over the weights."""
        return binary_kl(self.field, self.prior_field).sum()

    @torch.no_grad()
    def consolidate(self) -> None:
        """The current posterior becomes the prior of the next task."""
        self.prior_field.copy_(self.field)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, binary"


def binary_layers(module: nn.Module) -> list[BinaryLinear]:
    return [m for m in module.modules() if isinstance(m, BinaryLinear)]


@FAMILIES.register("binary_vcl")
class BinaryVCL(BayesClassifierMixin, VIModule):
    """Binary-weight MLP classifier learned in field space; each task's posterior is the next task's prior.

    Args:
        input_shape: shape of one example, e.g. ``[1, 8, 8]``.
        num_classes: number of labels.
        hidden_dims: hidden widths.
        activation: hidden non-linearity (``relu``, ``tanh``, ...).
        init_field_std: std of the initial fields (0 = all weights uniform).
        logit_scale: multiplies the output pre-activation (an O(1) quantity by the 1/sqrt(n) scaling) to give
            the logits.
        num_samples: pre-activation samples per training step.
        num_eval_samples: MC samples of the predictive.
        kl_weight: multiplies ``KL(q_t || q_{t-1}) / dataset_size`` once a task has been consolidated
            (1 = the free energy; >1 a colder posterior that holds old tasks more firmly).
        first_task_kl_weight: the same for the first task, whose prior is uniform (``None``: ``kl_weight``).
            Small but non-zero keeps the weights the first task does not need uncertain, hence plastic.
        dataset_size: N (default: from the data module).
        lr: learning rate of the default optimizer (this family's default is higher than ``VIModule``'s).
        **kwargs: the other shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden_dims: list[int] = (128,),
        activation: str = "relu",
        init_field_std: float = 1.0,
        logit_scale: float = 4.0,
        num_samples: int = 1,
        num_eval_samples: int = 8,
        kl_weight: float = 2.0,
        first_task_kl_weight: float | None = 0.1,
        dataset_size: int | None = None,
        lr: float = 3e-2,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr=lr, **kwargs)
        check_range("num_classes", num_classes, 2)
        check_range("logit_scale", logit_scale, 0.0, low_open=True)
        check_range("num_samples", num_samples, 1)
        check_range("num_eval_samples", num_eval_samples, 1)
        check_range("kl_weight", kl_weight, 0.0)
        if first_task_kl_weight is not None:
            check_range("first_task_kl_weight", first_task_kl_weight, 0.0)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_samples, self.num_eval_samples = num_samples, num_eval_samples
        self.kl_weight, self.dataset_size, self.logit_scale = kl_weight, dataset_size, logit_scale
        self.first_task_kl_weight = kl_weight if first_task_kl_weight is None else first_task_kl_weight
        dims = [math.prod(self.input_shape), *hidden_dims, num_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(BinaryLinear(a, b, init_field_std))
            if i < len(dims) - 2:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)
        #: Number of completed (consolidated) tasks.
        self.register_buffer("tasks_consolidated", torch.zeros((), dtype=torch.long))
        self.term_weights = {"nll": 1.0, "kl": 0.0}
        self._set_kl_scale()
        self.build_metrics()

    def _set_kl_scale(self) -> None:
        if self.dataset_size:
            w = self.kl_weight if int(self.tasks_consolidated) > 0 else self.first_task_kl_weight
            self.term_weights["kl"] = w / self.dataset_size

    def logits(self, x: Tensor) -> Tensor:
        """One sample of the logits (their mean when sampling is off)."""
        return self.logit_scale * self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        """Predictive probabilities (MC average over ``num_eval_samples``)."""
        return self.predict_proba(x)

    def kl(self) -> Tensor:
        """``sum KL(q || prior)`` over all binary weights (prior: the previous task's posterior)."""
        return torch.stack([layer.kl() for layer in binary_layers(self.net)]).sum()

    def consolidate(self) -> None:
        """End of a task: every layer's posterior fields become its prior fields."""
        for layer in binary_layers(self.net):
            layer.consolidate()
        self.tasks_consolidated += 1
        self._set_kl_scale()
