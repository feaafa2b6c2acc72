"""Class agreement of generated images under an independent classifier (conditional generation
quality, as in CVAE/CFG evaluations): the fraction of samples generated for class ``k`` that the
classifier labels ``k``. ``fit_digits_classifier`` trains a logistic regression (scikit-learn) on
the digits data, independent of any generative model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torchmetrics import Metric


class ClassAgreement(Metric):
    """``update(predicted_labels_or_logits, requested_labels)``; ``compute()`` = agreement in [0, 1]."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, pred: Tensor, requested: Tensor) -> None:
        labels = pred.argmax(-1) if pred.ndim > 1 else pred
        self.hits += (labels.to(requested.device) == requested).sum().float()
        self.total += requested.numel()

    def compute(self) -> Tensor:
        return self.hits / self.total.clamp(min=1)


def fit_digits_classifier(x: Tensor, y: Tensor) -> Callable[[Tensor], Tensor]:
    """A logistic-regression classifier on flattened images; returns ``images -> labels``."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(x.flatten(1).cpu().numpy(), y.cpu().numpy())
    return lambda imgs: torch.as_tensor(clf.predict(imgs.flatten(1).detach().cpu().numpy()))


def class_agreement(classify: Callable[[Tensor], Tensor], images: Tensor, requested: Tensor) -> float:
    m = ClassAgreement()
    m.update(classify(images), requested.cpu())
    return float(m.compute())
