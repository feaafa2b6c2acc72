"""Mean-field Gaussian Bayesian layers with local reparameterization, and helpers.

Each weight has ``q(w) = N(mu, sigma^2)`` with ``sigma = softplus(rho)`` (Blundell et al. 2015,
"Weight Uncertainty in Neural Networks", Sec. 3.2) and prior ``p(w) = N(0, prior_std^2)``. The forward
pass samples *pre-activations* instead of weights (local reparameterization, Kingma, Salimans &
Welling 2015, Eq. 6): for a linear layer ``b_j ~ N(sum_i x_i mu_ij, sum_i x_i^2 sigma_ij^2)``, which
has the same distribution per example as sampling the weights but much lower gradient variance.
``kl()`` is the closed-form KL summed (not averaged) over every weight and bias; a family scales it by
the training-set size (``loss = NLL_mean + KL / N``).

Optional ``weight_mask`` (a 0/1 buffer) restricts the posterior to a sparse subspace (SSVI): masked
weights are exactly zero and carry no KL.

Helpers: :func:`bayesianize` turns a deterministic network's ``nn.Linear``/``nn.Conv2d`` into Bayesian
layers (means copied); :func:`kl_divergence` sums the KL of every Bayesian layer in a module;
:func:`mc_dropout_predict` is Monte-Carlo dropout (Gal & Ghahramani 2016) for any model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class _BayesLayer(nn.Module):
    """Shared parameters and KL of mean-field Gaussian layers."""

    def _init_bayes(self, weight_shape: tuple[int, ...], bias: bool, prior_std: float, init_std: float,
                    local_reparam: bool) -> None:
        check_range("prior_std", prior_std, 0.0, low_open=True)
        check_range("init_std", init_std, 0.0, low_open=True)
        self.prior_std, self.local_reparam = float(prior_std), local_reparam
        #: ``True``: sample (training and MC prediction); ``False``: use the posterior mean.
        self.sampling = True
        fan_in = math.prod(weight_shape[1:])
        self.weight_mu = nn.Parameter(torch.empty(weight_shape).uniform_(-1, 1) / math.sqrt(fan_in))
        self.weight_rho = nn.Parameter(torch.full(weight_shape, _inv_softplus(init_std)))
        if bias:
            self.bias_mu = nn.Parameter(torch.zeros(weight_shape[0]))
            self.bias_rho = nn.Parameter(torch.full((weight_shape[0],), _inv_softplus(init_std)))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        self.register_buffer("weight_mask", None)

    # -- posterior --------------------------------------------------------------------------------
    @property
    def weight_std(self) -> Tensor:
        return F.softplus(self.weight_rho)

    @property
    def bias_std(self) -> Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def weight_moments(self) -> tuple[Tensor, Tensor]:
        """Posterior mean and variance of the (masked) weights."""
        mu, var = self.weight_mu, self.weight_std.pow(2)
        if self.weight_mask is not None:
            mu, var = mu * self.weight_mask, var * self.weight_mask
        return mu, var

    def set_mask(self, mask: Tensor | None) -> None:
        """Restrict the posterior to ``mask == 1`` (a 0/1 tensor shaped like the weight)."""
        self.weight_mask = None if mask is None else mask.to(self.weight_mu).detach()

    def kl(self) -> Tensor:
        """``sum KL(N(mu, sigma^2) || N(0, prior_std^2))`` over weights (in the mask) and biases."""
        kl = gaussian_kl(self.weight_mu, 2 * torch.log(self.weight_std), 0.0, 2 * math.log(self.prior_std))
        if self.weight_mask is not None:
            kl = kl * self.weight_mask
        total = kl.sum()
        if self.bias_mu is not None:
            total = total + gaussian_kl(self.bias_mu, 2 * torch.log(self.bias_std), 0.0, 2 * math.log(self.prior_std)).sum()
        return total

    def num_active(self) -> int:
        return int(self.weight_mu.numel() if self.weight_mask is None else self.weight_mask.sum().item())

    # -- forward ----------------------------------------------------------------------------------
    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        w_mu, w_var = self.weight_moments()
        if not self.sampling:
            return self._op(x, w_mu, self.bias_mu)
        if not self.local_reparam:  # sample one weight matrix for the whole batch
            w = w_mu + w_var.sqrt() * torch.randn_like(w_mu)
            b = None if self.bias_mu is None else self.bias_mu + self.bias_std * torch.randn_like(self.bias_mu)
            return self._op(x, w, b)
        mean = self._op(x, w_mu, self.bias_mu)
        b_var = None if self.bias_mu is None else self.bias_std.pow(2)
        var = self._op(x.pow(2), w_var, b_var)
        return mean + var.clamp_min(1e-16).sqrt() * torch.randn_like(mean)


class BayesLinear(_BayesLayer):
    """Mean-field Gaussian ``nn.Linear`` with local reparameterization."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, prior_std: float = 1.0,
                 init_std: float = 1e-3, local_reparam: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_bayes((out_features, in_features), bias, prior_std, init_std, local_reparam)

    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, prior_std={self.prior_std}"


class BayesConv2d(_BayesLayer):
    """Mean-field Gaussian ``nn.Conv2d`` with local reparameterization (variance through ``conv(x^2, sigma^2)``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True, prior_std: float = 1.0, init_std: float = 1e-3, local_reparam: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self._init_bayes((out_channels, in_channels, kernel_size, kernel_size), bias, prior_std, init_std,
                         local_reparam)

    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.conv2d(x, w, b, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, prior_std={self.prior_std}")


def bayes_layers(module: nn.Module) -> list[_BayesLayer]:
    return [m for m in module.modules() if isinstance(m, _BayesLayer)]


def kl_divergence(module: nn.Module) -> Tensor:
    """Summed KL of every Bayesian layer inside ``module``."""
    layers = bayes_layers(module)
    if not layers:
        raise ValueError(f"{type(module).__name__} has no Bayesian layers; use bayesianize() first")
    return torch.stack([layer.kl() for layer in layers]).sum()


def set_sampling(module: nn.Module, sampling: bool) -> None:
    """Switch every Bayesian layer between sampling (``True``) and posterior-mean (``False``) mode."""
    for layer in bayes_layers(module):
        layer.sampling = sampling


def bayesianize(module: nn.Module, prior_std: float = 1.0, init_std: float = 1e-3,
                local_reparam: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` in ``module`` (in place) by its mean-field Gaussian
    counterpart; posterior means start at the deterministic weights. Returns ``module``."""
    check_range("prior_std", prior_std, 0.0, low_open=True)
    for name, child in list(module.named_children()):
        new: nn.Module | None = None
        if isinstance(child, nn.Linear):
            new = BayesLinear(child.in_features, child.out_features, child.bias is not None, prior_std, init_std,
                              local_reparam)
        elif isinstance(child, nn.Conv2d):
            if child.groups != 1 or child.dilation != (1, 1) or child.kernel_size[0] != child.kernel_size[1] \
                    or child.stride[0] != child.stride[1] or not isinstance(child.padding, tuple) \
                    or child.padding[0] != child.padding[1]:
                raise ValueError(f"bayesianize supports square, ungrouped, undilated Conv2d; got {child}")
            new = BayesConv2d(child.in_channels, child.out_channels, child.kernel_size[0], child.stride[0],
                              child.padding[0], child.bias is not None, prior_std, init_std, local_reparam)
        else:
            bayesianize(child, prior_std, init_std, local_reparam)
        if new is not None:
            with torch.no_grad():
                new.weight_mu.copy_(child.weight)
                if child.bias is not None:
                    new.bias_mu.copy_(child.bias)
            new.to(child.weight.device)
            setattr(module, name, new)
    return module


@torch.no_grad()
def mc_dropout_predict(model: nn.Module | Callable[[Tensor], Tensor], x: Tensor, num_samples: int = 20,
                       softmax: bool = True) -> tuple[Tensor, Tensor]:
    """Monte-Carlo dropout prediction (Gal & Ghahramani 2016, Eq. 8): dropout layers stay active at
    evaluation, everything else (batch norm, ...) is in eval mode. Returns the mean and the standard
    deviation over ``num_samples`` stochastic passes (of softmax probabilities if ``softmax``)."""
    check_range("num_samples", num_samples, 1)
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    was_training = {m: m.training for m in modules}
    try:
        for m in modules:
            m.train(isinstance(m, nn.modules.dropout._DropoutNd))
        outs = []
        for _ in range(num_samples):  # samples, not batch elements
            out = model(x)
            outs.append(out.softmax(-1) if softmax else out)
        stack = torch.stack(outs)
    finally:
        for m, t in was_training.items():
            m.training = t
    return stack.mean(0), stack.std(0, unbiased=False)
