"""Image/feature classifier: ``logits = head(dropout(backbone(x)))``.

Loss: cross-entropy ``ce = -1/B sum_i sum_c t_ic log softmax(f(x_i))_c`` with one-hot targets
``t = onehot(y)`` (optionally label-smoothed) or, when a plugin such as ``cutmix``/``mixup`` put soft
targets ``y_soft`` [B, C] into the batch, those (soft cross-entropy, Zhang et al. 2018 Eq. 1;
Yun et al. 2019 Eq. 1). When the head returns ``K`` samples ``[K, B, C]`` (``multisample_dropout``,
Inoue 2019) the loss is the mean of the K per-sample losses. Diagnostics: ``acc``, ``nll`` (hard-label
NLL of the averaged prediction); in validation and test these, the expected calibration error ``ece``
(Guo et al. 2017, 15 bins, torchmetrics) and the Brier score ``brier`` are epoch-level metrics over the
whole split (:func:`~lightning_vi.metrics.calibration.classification_collection`).

Plugin targets: ``self.backbone`` (produces ``[B, feature_dim]`` features), ``self.feature_dim``,
``self.dropout`` (an ``nn.Dropout``) and ``self.head`` (``nn.Linear(feature_dim, num_classes)``); neural-collapse
diagnostics read ``features(x)`` and ``head_weight`` (:class:`~lightning_vi.core.protocols.HasPenultimate`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.metrics_mixin import StageMetricsMixin
from lightning_vi.core.module import VIModule
from lightning_vi.metrics.calibration import classification_collection
from lightning_vi.nn.backbones import BACKBONES, build_backbone
from lightning_vi.registry import FAMILIES


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-example ``-sum_c target_c log softmax(logits)_c`` (``logits`` [..., C], ``target`` [..., C])."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1)


@FAMILIES.register("classifier")
class Classifier(StageMetricsMixin, VIModule):
    """Classifier with an MLP / small ConvNet / small ResNet backbone, a feature layer and a linear head.

    Args:
        input_shape: shape of one example, e.g. ``[1, 8, 8]`` (digits) or ``[64]`` (vectors).
        num_classes: number of classes C.
        backbone: ``"mlp"``, ``"conv"`` or ``"resnet"``.
        feature_dim: width of the feature layer handed to the head.
        hidden_dims: MLP hidden widths.
        channels: conv/resnet stage widths.
        dropout: dropout probability before the head (0 = off).
        label_smoothing: epsilon of label smoothing for hard labels.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        num_classes: int = 10,
        backbone: str = "conv",
        feature_dim: int = 64,
        hidden_dims: list[int] = (256,),
        channels: list[int] = (32, 64),
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("backbone", backbone, BACKBONES)
        check_range("num_classes", num_classes, 2)
        check_range("feature_dim", feature_dim, 1)
        check_range("dropout", dropout, 0.0, 1.0, high_open=True)
        check_range("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes, self.feature_dim, self.label_smoothing = int(num_classes), int(feature_dim), label_smoothing
        self.backbone = build_backbone(backbone, self.input_shape, feature_dim, hidden_dims, channels)
        self.dropout = nn.Dropout(dropout)
        self.head: nn.Module = nn.Linear(feature_dim, num_classes)
        self.term_weights = {"ce": 1.0}
        self.build_metrics()

    def metrics(self) -> MetricCollection:
        """``acc``, ``nll``, ``ece`` (15 bins), ``brier`` of ``probs`` (``val/...``, ``test/...``)."""
        return classification_collection(self.num_classes, n_bins=15)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[B, feature_dim]`` (the head's input, before dropout)."""
        return self.backbone(x)

    @property
    def head_weight(self) -> Tensor:
        """Weight ``[C, feature_dim]`` of the linear head (inside a plugin's wrapper such as ``MultiSampleHead``)."""
        head = self.head
        while not isinstance(head, nn.Linear) and isinstance(getattr(head, "head", None), nn.Module):
            head = head.head
        if not isinstance(head, nn.Linear):
            raise TypeError(f"Classifier.head_weight needs an nn.Linear head (possibly wrapped); head is {type(head).__name__}")
        return head.weight

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, C]`` (a single pass; in eval mode dropout is off)."""
        logits = self.head(self.dropout(self.backbone(x)))
        return logits.mean(0) if logits.ndim == 3 else logits

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        return torch.softmax(self(x), dim=-1)

    def targets(self, batch: dict[str, Any]) -> Tensor:
        """Soft targets [B, C]: ``y_soft`` if present, else (smoothed) one-hot ``y``."""
        if "y_soft" in batch:
            return batch["y_soft"].to(torch.float32)
        t = F.one_hot(batch["y"].long(), self.num_classes).to(torch.float32)
        if self.label_smoothing:
            t = t * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return t

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if "y" not in batch:
            raise KeyError("Classifier needs labels: the batch has no 'y' (keys: %s)" % sorted(batch))
        features = self.backbone(batch["x"])
        logits = self.head(self.dropout(features))
        target = self.targets(batch)
        y = batch["y"].long()
        if logits.ndim == 3:  # K samples [K, B, C]: mean of the per-sample losses
            ce = soft_cross_entropy(logits.float(), target.unsqueeze(0)).mean()
            probs = torch.softmax(logits.float(), -1).mean(0)
            logits = logits.mean(0)
        else:
            ce = soft_cross_entropy(logits.float(), target).mean()
            probs = torch.softmax(logits.float(), -1)
        nll = F.nll_loss(torch.log(probs.clamp_min(1e-12)), y)
        acc = (probs.argmax(-1) == y).float().mean()
        return {"ce": ce, "nll": nll, "acc": acc, "logits": logits, "probs": probs, "features": features}
