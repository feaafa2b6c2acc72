"""Sample-based distances between generated samples and data: entropic Sinkhorn and kernel MMD.

``sinkhorn_distance``: the entropic OT cost ``<P, C>`` (Cuturi 2013) with squared Euclidean cost
``C``, uniform marginals and log-domain iterations (``optimal_transport.sinkhorn``), reported as
``sqrt(<P, C>)`` (a W2-like number in data units). ``mmd``: the biased squared MMD (Gretton et al. 2012, Eq. 5) with a sum of RBF kernels.
The ``Metric`` classes accumulate samples (DDP-safe via torchmetrics' cat states).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_vi.metrics.optimal_transport import sinkhorn


def sinkhorn_distance(x: Tensor, y: Tensor, epsilon: float = 0.01, iters: int = 200) -> Tensor:
    """``sqrt(<P, C>)`` of the entropic transport plan between point clouds ``x`` [n, d] and ``y`` [m, d].

    ``epsilon`` is relative to the mean cost (so the result is scale-free in the regularization); exactly
    ``iters`` log-domain Sinkhorn iterations of :func:`lightning_vi.metrics.optimal_transport.sinkhorn`
    (differentiable by unrolling)."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    C = torch.cdist(x, y) ** 2
    eps = float(epsilon * C.mean())
    return sinkhorn(C, reg=eps, max_iter=iters, tol=0.0).cost.sqrt().float()


def mmd(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0)) -> Tensor:
    """Biased squared MMD with ``sum_h exp(-||a - b||^2 / (2 h^2))``."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z) ** 2
    k = sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
    n = x.shape[0]
    return (k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()).float()


class _TwoSampleMetric(Metric):
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("samples", default=[], dist_reduce_fx="cat")
        self.add_state("data", default=[], dist_reduce_fx="cat")

    def update(self, samples: Tensor, data: Tensor) -> None:
        self.samples.append(samples.detach().flatten(1))
        self.data.append(data.detach().flatten(1))

    def _cat(self) -> tuple[Tensor, Tensor]:
        s = torch.cat(self.samples) if isinstance(self.samples, list) else self.samples
        d = torch.cat(self.data) if isinstance(self.data, list) else self.data
        return s, d


class SinkhornDistance(_TwoSampleMetric):
    """Accumulates ``(samples, data)`` and computes :func:`sinkhorn_distance`."""

    def __init__(self, epsilon: float = 0.01, iters: int = 200, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon, self.iters = epsilon, iters

    def compute(self) -> Tensor:
        return sinkhorn_distance(*self._cat(), self.epsilon, self.iters)


class MMD(_TwoSampleMetric):
    """Accumulates ``(samples, data)`` and computes :func:`mmd`."""

    def __init__(self, bandwidths: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0), **kwargs) -> None:
        super().__init__(**kwargs)
        self.bandwidths = tuple(bandwidths)

    def compute(self) -> Tensor:
        return mmd(*self._cat(), self.bandwidths)
