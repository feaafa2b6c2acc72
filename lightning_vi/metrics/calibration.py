"""Predictive-quality metrics for classifiers: accuracy, NLL, ECE, Brier score, OOD AUROC.

All take *probabilities* ``[N, C]`` (e.g. the Monte-Carlo average of softmax outputs of a BNN) and
integer labels ``[N]``. ECE is torchmetrics' ``CalibrationError`` (L1, equal-width bins; Guo et al.
2017, Eq. 3); Brier is the multi-class Brier score ``mean_i sum_c (p_ic - 1[y_i = c])^2`` (Brier
1950). ``BrierScore`` and ``NegativeLogLikelihood`` are ``torchmetrics.Metric``s so they sync under
DDP; the functional forms are handy in tests and notebooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
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


class _ExampleMean(Metric):
    """Mean of a per-batch score over all examples; sums are synced across processes."""

    higher_is_better = False
    full_state_update = False
    score = staticmethod(lambda probs, y: probs.new_zeros(()))

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, probs: Tensor, y: Tensor) -> None:
        self.total += self.score(probs, y) * len(y)
        self.count += len(y)

    def compute(self) -> Tensor:
        return self.total / self.count.clamp_min(1)


class BrierScore(_ExampleMean):
    """Multi-class Brier score as a ``torchmetrics.Metric``."""

    score = staticmethod(brier_score)


class NegativeLogLikelihood(_ExampleMean):
    """Mean negative log predictive probability of the true label, as a ``torchmetrics.Metric``."""

    score = staticmethod(nll)
