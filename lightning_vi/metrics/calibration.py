"""Predictive-quality metrics for classifiers: accuracy, NLL, ECE, Brier score, OOD AUROC.

All take *probabilities* ``[N, C]`` (e.g. the Monte-Carlo average of softmax outputs of a BNN) and
integer labels ``[N]``. ECE is torchmetrics' ``CalibrationError`` (L1, equal-width bins; Guo et al.
2017, Eq. 3); Brier is the multi-class Brier score ``mean_i sum_c (p_ic - 1[y_i = c])^2`` (Brier
1950). ``BrierScore`` and ``NegativeLogLikelihood`` are ``torchmetrics.Metric``s so they sync under
DDP, and :func:`classification_collection` bundles all four as the ``MetricCollection`` that the
classifier families report per stage (``lightning_vi.core.metrics_mixin``); the functional forms
compute on one tensor of predictions at once (tests, notebooks, one-shot diagnostics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError
from torchmetrics.functional.classification import binary_auroc, multiclass_calibration_error

EPS = 1e-12


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy ``-sum_c p_c log p_c`` of each row of ``probs`` (``[N, C]`` -> ``[N]``), in nats."""
    return -(probs * probs.clamp_min(EPS).log()).sum(-1)


def brier_score(probs: Tensor, y: Tensor) -> Tensor:
    """Multi-class Brier score, averaged over examples (0 = perfect, 2 = worst)."""
    onehot = F.one_hot(y, probs.shape[-1]).to(probs)
    return (probs - onehot).pow(2).sum(-1).mean()


def nll(probs: Tensor, y: Tensor) -> Tensor:
    """Mean negative log predictive probability of the true label."""
    return -probs.gather(-1, y[:, None]).clamp_min(EPS).log().mean()


def ece(probs: Tensor, y: Tensor, n_bins: int = 15) -> Tensor:
    """Expected calibration error (torchmetrics ``multiclass_calibration_error``, L1 norm)."""
    return multiclass_calibration_error(probs.float(), y, num_classes=probs.shape[-1], n_bins=n_bins, norm="l1")


def classification_metrics(probs: Tensor, y: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """``{"acc", "nll", "ece", "brier"}`` of predictive probabilities ``probs`` against labels ``y``."""
    return {
        "acc": (probs.argmax(-1) == y).float().mean(),
        "nll": nll(probs, y),
        "ece": ece(probs, y, n_bins),
        "brier": brier_score(probs, y),
    }


def ood_auroc(score_in: Tensor, score_out: Tensor) -> Tensor:
    """AUROC of telling OOD from in-distribution inputs by a score that should be *higher* on OOD
    (e.g. predictive entropy). 0.5 = chance, 1 = perfect separation."""
    scores = torch.cat([score_in, score_out]).float()
    target = torch.cat([torch.zeros(len(score_in)), torch.ones(len(score_out))]).long().to(scores.device)
    return binary_auroc(scores, target)


def reliability_bins(probs: Tensor, y: Tensor, n_bins: int = 10) -> tuple[Tensor, Tensor, Tensor]:
    """Per confidence bin: mean confidence, accuracy and count (for reliability diagrams)."""
    conf, pred = probs.max(-1)
    correct = (pred == y).float()
    idx = (conf * n_bins).long().clamp(max=n_bins - 1)
    count = torch.zeros(n_bins).index_add_(0, idx.cpu(), torch.ones_like(conf).cpu())
    conf_sum = torch.zeros(n_bins).index_add_(0, idx.cpu(), conf.float().cpu())
    acc_sum = torch.zeros(n_bins).index_add_(0, idx.cpu(), correct.cpu())
    denom = count.clamp_min(1)
    return conf_sum / denom, acc_sum / denom, count


def _check_probs(probs: Tensor, y: Tensor) -> None:
    if probs.ndim != 2 or y.ndim != 1 or probs.shape[0] != y.shape[0]:
        raise ValueError(f"probs/y have shapes {tuple(probs.shape)}/{tuple(y.shape)}; expected (N, C) and (N,)")


class _ExampleMean(Metric):
    """Mean over *examples* (not batches) of a per-example score: the per-example sum and the number of
    examples are ``sum`` states (float64), so the epoch value under unequal batches and under DDP is the
    mean over the whole split. Subclasses define ``per_example(probs, y) -> [N]``."""

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @staticmethod
    def per_example(probs: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError("subclasses of _ExampleMean define per_example(probs, y) -> [N]")

    def update(self, probs: Tensor, y: Tensor) -> None:
        _check_probs(probs, y)
        # Out of place: states made under inference mode (trainer.validate) stay usable in a later fit.
        self.total = self.total + self.per_example(probs.detach().double(), y.long()).sum()
        self.count = self.count + y.shape[0]

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class BrierScore(_ExampleMean):
    """Multi-class Brier score ``mean_i sum_c (p_ic - 1[y_i = c])^2`` as a ``torchmetrics.Metric``."""

    @staticmethod
    def per_example(probs: Tensor, y: Tensor) -> Tensor:
        return (probs - F.one_hot(y, probs.shape[-1]).to(probs)).pow(2).sum(-1)


class NegativeLogLikelihood(_ExampleMean):
    """Mean negative log predictive probability of the true label, as a ``torchmetrics.Metric``."""

    @staticmethod
    def per_example(probs: Tensor, y: Tensor) -> Tensor:
        return -probs.gather(-1, y[:, None]).squeeze(-1).clamp_min(EPS).log()


#: Default names of :func:`classification_collection`'s metrics (the keys of ``classification_metrics``).
CLASSIFICATION_NAMES = {"acc": "acc", "nll": "nll", "ece": "ece", "brier": "brier"}


def classification_collection(num_classes: int, n_bins: int = 15, names: dict[str, str] | None = None) -> MetricCollection:
    """Epoch-level ``{acc, nll, ece, brier}`` of predictive probabilities as one ``MetricCollection``.

    The ``Metric`` counterpart of :func:`classification_metrics`: accuracy (torchmetrics
    ``MulticlassAccuracy``, micro average = fraction correct), NLL and Brier (:class:`NegativeLogLikelihood`,
    :class:`BrierScore`) and ECE (torchmetrics ``MulticlassCalibrationError``, L1, ``n_bins`` equal-width
    bins; Guo et al. 2017, Eq. 3). ``names`` renames entries, e.g. ``{"acc": "pred_acc"}``.
    Update with ``(probs [N, C], y [N])``.
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes={num_classes!r} is out of range; allowed: [2, inf)")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins={n_bins!r} is out of range; allowed: [1, inf)")
    unknown = sorted(set(names or {}) - set(CLASSIFICATION_NAMES))
    if unknown:
        raise ValueError(f"names has unknown keys {unknown}; allowed: {sorted(CLASSIFICATION_NAMES)}")
    rename = {**CLASSIFICATION_NAMES, **(names or {})}
    metrics = {
        rename["acc"]: MulticlassAccuracy(num_classes=int(num_classes), average="micro"),
        rename["nll"]: NegativeLogLikelihood(),
        rename["ece"]: MulticlassCalibrationError(num_classes=int(num_classes), n_bins=int(n_bins), norm="l1"),
        rename["brier"]: BrierScore(),
    }
    # compute_groups would merge NLL and Brier (same state names) whenever their states happen to be equal
    return MetricCollection(metrics, compute_groups=False)
