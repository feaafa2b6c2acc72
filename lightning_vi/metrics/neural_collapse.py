"""Neural-collapse metrics NC1-NC4 (Papyan, Han & Donoho 2020; as used by Tirer, Huang & Niles-Weed 2023,
"Perturbation analysis of neural collapse", and Dang et al. 2023, "Neural collapse in deep linear networks").

Notation: penultimate features ``h_i`` [d] with labels ``y_i`` in ``0..C-1``; ``n_c`` examples of class c;
class means ``mu_c = 1/n_c sum_{y_i=c} h_i``; global mean ``mu_G = 1/N sum_i h_i`` (the mean of *all* features,
Papyan et al. Sec. 2; it equals the mean of the class means when the classes are balanced); centred means
``M_c = mu_c - mu_G`` (rows of ``M`` [C, d]); head weights ``W`` [C, d].

* **NC1** (within-class variability): ``tr(Sigma_W Sigma_B^+) / C`` with
  ``Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T`` and ``Sigma_B = 1/C sum_c M_c M_c^T``,
  ``^+`` the Moore-Penrose pseudo-inverse (``Sigma_B`` has rank <= C-1).
* **NC2** (simplex ETF): ``equinorm = std_c ||M_c|| / mean_c ||M_c||`` (population std);
  ``equiangle = mean_{c != c'} |cos(M_c, M_c') + 1/(C-1)|``; ``angle_std = std_{c != c'} cos(M_c, M_c')``;
  and the ETF distance (the reported NC2)
  ``|| M M^T / ||M M^T||_F - E / ||E||_F ||_F`` with the simplex-ETF Gram ``E = C/(C-1) (I - 11^T/C)``
  (``||E/||E||_F|| = (I - 11^T/C)/sqrt(C-1)``; Zhu et al. 2021, Eq. NC2). 0 for an ETF of any scale, <= 2.
* **NC3** (self-duality): ``|| W/||W||_F - M/||M||_F ||_F^2`` (0 when the head is the centred means up to
  scale; <= 4).
* **NC4** (nearest class centre): fraction of examples whose NCC prediction
  ``argmin_c ||h_i - mu_c||`` differs from the network's prediction ``argmax logits_i``.

The metrics keep per-class feature sums ``[C, d]``, per-class counts ``[C]`` and (NC1) the summed outer product
``sum_i h_i h_i^T`` [d, d], all float64 ``sum`` states, and compute from them: the value is the one of the whole
split, exact under unequal batches and under DDP (``Sigma_W = 1/N (sum_i h_i h_i^T - sum_c n_c mu_c mu_c^T)``).
NC4 needs the class means of the whole split first, so it takes them as an argument (two passes; see
:class:`~lightning_vi.callbacks.neural_collapse.NeuralCollapse`). Each class needs at least one example.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def _check_features(features: Tensor, y: Tensor, num_classes: int, num_features: int) -> None:
    if features.ndim != 2 or y.ndim != 1 or features.shape[0] != y.shape[0]:
        raise ValueError(f"features/y have shapes {tuple(features.shape)}/{tuple(y.shape)}; expected (N, d) and (N,)")
    if features.shape[1] != num_features:
        raise ValueError(f"features have d={features.shape[1]}; this metric was built for num_features={num_features}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels span [{int(y.min())}, {int(y.max())}]; allowed: 0..{num_classes - 1}")


def _check_sizes(num_classes: int, num_features: int) -> None:
    if int(num_classes) != num_classes or int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes!r} is out of range; allowed: integers in [2, inf)")
    if int(num_features) != num_features or int(num_features) < 1:
        raise ValueError(f"num_features={num_features!r} is out of range; allowed: integers in [1, inf)")


def class_means(count: Tensor, sums: Tensor) -> tuple[Tensor, Tensor]:
    """``(mu [C, d], mu_G [d])`` from per-class counts and sums; every class needs an example."""
    empty = (count == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty} have no examples; the neural-collapse metrics need every class "
                         f"(counts per class: {count.long().tolist()})")
    return sums / count[:, None], sums.sum(0) / count.sum()


def nc1_from_sums(count: Tensor, sums: Tensor, outer: Tensor) -> Tensor:
    """``tr(Sigma_W Sigma_B^+) / C`` from counts [C], class sums [C, d] and ``sum_i h_i h_i^T`` [d, d]."""
    mu, mu_g = class_means(count, sums)
    n, c = count.sum(), count.shape[0]
    sigma_w = (outer - (count[:, None] * mu).T @ mu) / n
    centred = mu - mu_g
    sigma_b = centred.T @ centred / c
    return torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / c


def simplex_etf_gram(num_classes: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Gram matrix ``C/(C-1) (I - 11^T/C)`` of a unit-norm simplex ETF with ``C`` vertices."""
    c = int(num_classes)
    return c / (c - 1) * (torch.eye(c, dtype=dtype) - torch.full((c, c), 1.0 / c, dtype=dtype))


def nc2_from_means(centred: Tensor) -> dict[str, Tensor]:
    """``equinorm``, ``equiangle``, ``angle_std`` and ``etf`` (the ETF distance) of centred means [C, d]."""
    c = centred.shape[0]
    norms = centred.norm(dim=1)
    unit = centred / norms.clamp_min(1e-300)[:, None]
    off = ~torch.eye(c, dtype=torch.bool, device=centred.device)
    cos = (unit @ unit.T)[off]
    gram = centred @ centred.T
    etf = simplex_etf_gram(c).to(gram)
    return {
        "equinorm": norms.std(correction=0) / norms.mean(),
        "equiangle": (cos + 1.0 / (c - 1)).abs().mean(),
        "angle_std": cos.std(correction=0),
        "etf": (gram / gram.norm() - etf / etf.norm()).norm(),
    }


def nc3_from_means(weight: Tensor, centred: Tensor) -> Tensor:
    """``|| W/||W||_F - M/||M||_F ||_F^2`` of head weights [C, d] and centred class means [C, d]."""
    if weight.shape != centred.shape:
        raise ValueError(f"head weight has shape {tuple(weight.shape)}; expected [C, d] = {tuple(centred.shape)}")
    weight = weight.to(centred)
    return (weight / weight.norm() - centred / centred.norm()).pow(2).sum()


class ClassMeans(Metric):
    """Per-class counts [C] and feature sums [C, d] (float64, ``sum`` states); ``compute`` -> ``mu`` [C, d].

    Update with ``(features [N, d], y [N])``. ``centred()`` gives ``mu_c - mu_G`` (``mu_G`` the global mean).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, num_classes: int, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        _check_sizes(num_classes, num_features)
        self.num_classes, self.num_features = int(num_classes), int(num_features)
        self.add_state("count", default=torch.zeros(self.num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sums", default=torch.zeros(self.num_classes, self.num_features, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def _accumulate(self, features: Tensor, y: Tensor) -> Tensor:
        _check_features(features, y, self.num_classes, self.num_features)
        h, y = features.detach().to(self.sums.device, torch.float64), y.to(self.sums.device).long()
        self.count += torch.bincount(y, minlength=self.num_classes).to(torch.float64)
        self.sums.index_add_(0, y, h)
        return h

    def update(self, features: Tensor, y: Tensor) -> None:
        self._accumulate(features, y)

    def compute(self) -> Tensor:
        return class_means(self.count, self.sums)[0]

    def centred(self) -> Tensor:
        """Centred class means ``mu_c - mu_G`` [C, d] of the (synced) states."""
        mu, mu_g = class_means(self.count, self.sums)
        return mu - mu_g


class NC1(ClassMeans):
    """NC1 ``tr(Sigma_W Sigma_B^+) / C`` (Papyan et al. 2020, Sec. 3 Fig. 6) over all updates. Lower = more
    collapsed (0 at exact collapse). Update with ``(features [N, d], y [N])``."""

    higher_is_better = False

    def __init__(self, num_classes: int, num_features: int, **kwargs) -> None:
        super().__init__(num_classes, num_features, **kwargs)
        self.add_state("outer", default=torch.zeros(self.num_features, self.num_features, dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, features: Tensor, y: Tensor) -> None:
        h = self._accumulate(features, y)
        self.outer += h.T @ h

    def compute(self) -> Tensor:
        return nc1_from_sums(self.count, self.sums, self.outer)


class NC2(ClassMeans):
    """NC2: ``{"etf", "equinorm", "equiangle", "angle_std"}`` of the centred class means (definitions in the
    module docstring); ``etf`` is the reported NC2. Update with ``(features [N, d], y [N])``."""

    higher_is_better = False

    def compute(self) -> dict[str, Tensor]:
        return nc2_from_means(self.centred())


class NC3(ClassMeans):
    """NC3 self-duality ``|| W/||W||_F - M/||M||_F ||_F^2`` of the head weights ``W`` [C, d] and the centred
    class means ``M``. Update with ``(features [N, d], y [N], weight [C, d])``; the last weight given is used
    (it is the same on every process, so its DDP reduction is the mean)."""

    higher_is_better = False

    def __init__(self, num_classes: int, num_features: int, **kwargs) -> None:
        super().__init__(num_classes, num_features, **kwargs)
        self.add_state("weight", default=torch.zeros(self.num_classes, self.num_features, dtype=torch.float64),
                       dist_reduce_fx="mean")

    def update(self, features: Tensor, y: Tensor, weight: Tensor) -> None:
        if tuple(weight.shape) != (self.num_classes, self.num_features):
            raise ValueError(f"weight has shape {tuple(weight.shape)}; expected [C, d] = "
                             f"{(self.num_classes, self.num_features)}")
        self._accumulate(features, y)
        self.weight = weight.detach().to(self.sums.device, torch.float64).clone()

    def compute(self) -> Tensor:
        if not bool(self.weight.abs().sum() > 0):
            raise ValueError("NC3 has no head weight (all zeros): update(features, y, weight) with the head's [C, d]")
        return nc3_from_means(self.weight, self.centred())


class NC4(Metric):
    """NC4: fraction of examples whose nearest-class-centre prediction ``argmin_c ||h - mu_c||`` differs from
    the network's ``argmax logits``. Update with ``(features [N, d], logits [N, C], means [C, d])``, ``means``
    the class means of the split (e.g. ``ClassMeans.compute()`` after a first pass)."""

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("mismatch", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, features: Tensor, logits: Tensor, means: Tensor) -> None:
        if features.ndim != 2 or logits.ndim != 2 or means.ndim != 2 or features.shape[0] != logits.shape[0] \
                or means.shape != (logits.shape[1], features.shape[1]):
            raise ValueError(f"features/logits/means have shapes {tuple(features.shape)}/{tuple(logits.shape)}/"
                             f"{tuple(means.shape)}; expected (N, d), (N, C) and (C, d)")
        h = features.detach().to(torch.float64)
        ncc = torch.cdist(h, means.detach().to(h)).argmin(1)
        self.mismatch += (ncc != logits.detach().argmax(1)).sum().to(self.mismatch)
        self.total += h.shape[0]

    def compute(self) -> Tensor:
        if not bool(self.total > 0):
            raise ValueError("NC4 has no examples: call update(features, logits, means) before compute()")
        return self.mismatch / self.total


__all__ = ["ClassMeans", "NC1", "NC2", "NC3", "NC4", "class_means", "nc1_from_sums", "nc2_from_means",
           "nc3_from_means", "simplex_etf_gram"]
