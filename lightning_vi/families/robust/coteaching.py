"""Co-teaching (Han et al. 2018, Alg. 1): two networks teach each other which labels to trust.

Each training step, network ``k`` ranks the mini-batch by its own per-sample cross-entropy on the (noisy)
labels and keeps the ``int((1 - r_t) B)`` smallest-loss samples; network ``k`` is then updated on the
samples its *peer* selected (the exchange), ``loss = ce_1[sel_2] + ce_2[sel_1]`` (the two networks share no
parameters, so one optimizer step on the sum is one step of each). The forget rate follows Han et al.'s
schedule ``r_t = tau * min(t / T_k, 1) ** c`` with ``t`` the (0-based) epoch, ``T_k = 10``, ``c = 1`` and ``tau``
the estimated noise rate.

Logged: ``train/forget_rate``, ``train/precision`` (``train/precision_epoch``: fraction of the selected
samples whose noisy label equals ``y_clean``, when the batch carries it, e.g. from
:class:`~lightning_vi.data.noisy_labels.NoisyLabelDataModule`), ``train/noise_rate`` (corrupted fraction of
the batch), and in validation/test ``acc`` (epoch-level, of network 1, as Han et al. report), ``acc2`` (of
network 2), ``nll``, ``ece``, ``brier`` on the labels of the split (clean, or noisy on a
``noisy_val_fraction`` validation split). Each network is the classifier family's backbone
(:func:`~lightning_vi.nn.backbones.build_backbone`), a dropout and a linear head.

Compression (Chen et al. 2021, "Compressing Features for Learning with Noisy Labels"): the family declares
``feature_layers = ("net1.backbone", "net2.backbone")``, so the ``nested_dropout`` plugin truncates the
feature layer of *both* networks (each draws its own index); with ``select_k: true`` the truncation K used at
test/predict is chosen at the end of fit on the (noisy) validation split by network 1's accuracy.
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


def forget_rate(epoch: int, tau: float, num_gradual: int = 10, exponent: float = 1.0) -> float:
    """Han et al. 2018 forget rate ``R(t) = tau * min(t / T_k, 1) ** c`` at (0-based) epoch ``t``."""
    if num_gradual <= 0:
        return float(tau)
    return float(tau) * min(epoch / num_gradual, 1.0) ** exponent


def small_loss_indices(losses: Tensor, keep: int) -> Tensor:
    """Indices of the ``keep`` smallest entries of ``losses`` [B] (ties broken by position)."""
    return torch.argsort(losses, stable=True)[:keep]


class PeerNet(nn.Module):
    """One Co-teaching network: ``head(dropout(backbone(x)))``."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.backbone, self.dropout, self.head = backbone, nn.Dropout(dropout), nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.backbone(x)))


@FAMILIES.register("coteaching")
class CoTeaching(StageMetricsMixin, VIModule):
    """Two classifiers trained by Co-teaching's small-loss exchange (Han et al. 2018).

    Args:
        input_shape: shape of one example, e.g. ``[1, 8, 8]``.
        num_classes: number of classes C.
        backbone: ``"mlp"``, ``"conv"`` or ``"resnet"`` (the classifier family's backbones).
        feature_dim, hidden_dims, channels, dropout: as in :class:`~lightning_vi.families.classifier.Classifier`.
        tau: forget rate reached after ``num_gradual`` epochs (the noise-rate estimate), in [0, 1).
        num_gradual: ``T_k``, epochs of linear (``exponent=1``) ramp-up of the forget rate.
        exponent: ``c`` of the schedule.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    #: The feature layers of the two networks (where ``nested_dropout`` truncates by default).
    feature_layers = ("net1.backbone", "net2.backbone")

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        num_classes: int = 10,
        backbone: str = "mlp",
        feature_dim: int = 64,
        hidden_dims: list[int] = (256,),
        channels: list[int] = (32, 64),
        dropout: float = 0.0,
        tau: float = 0.2,
        num_gradual: int = 10,
        exponent: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("backbone", backbone, BACKBONES)
        check_range("num_classes", num_classes, 2)
        check_range("feature_dim", feature_dim, 1)
        check_range("dropout", dropout, 0.0, 1.0, high_open=True)
        check_range("tau", tau, 0.0, 1.0, high_open=True)
        check_range("num_gradual", num_gradual, 0)
        check_range("exponent", exponent, 0.0, low_open=True)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        self.tau, self.num_gradual, self.exponent = float(tau), int(num_gradual), float(exponent)
        self.net1, self.net2 = (
            PeerNet(build_backbone(backbone, self.input_shape, feature_dim, hidden_dims, channels), feature_dim,
                    num_classes, dropout) for _ in range(2))
        self.term_weights = {"ce": 1.0}
        self.build_metrics()

    def metrics(self) -> MetricCollection:
        """``acc``, ``nll``, ``ece`` (15 bins), ``brier`` of network 1's ``probs`` (``val/...``, ``test/...``)."""
        return classification_collection(self.num_classes, n_bins=15)

    @property
    def current_forget_rate(self) -> float:
        """``r_t`` of the current epoch."""
        epoch = self._trainer.current_epoch if self._trainer is not None else 0
        return forget_rate(epoch, self.tau, self.num_gradual, self.exponent)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, C]`` of network 1."""
        return self.net1(x)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        return torch.softmax(self(x), dim=-1)

    def select(self, loss1: Tensor, loss2: Tensor, rate: float) -> tuple[Tensor, Tensor]:
        """Each network's ``int((1 - rate) B)`` smallest-loss indices (at least one)."""
        keep = max(int((1 - rate) * len(loss1)), 1)
        return small_loss_indices(loss1.detach(), keep), small_loss_indices(loss2.detach(), keep)

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if "y" not in batch:
            raise KeyError("CoTeaching needs labels: the batch has no 'y' (keys: %s)" % sorted(batch))
        x, y = batch["x"], batch["y"].long()
        logits1, logits2 = self.net1(x).float(), self.net2(x).float()
        ce1, ce2 = F.cross_entropy(logits1, y, reduction="none"), F.cross_entropy(logits2, y, reduction="none")
        probs = torch.softmax(logits1, -1)
        out: dict[str, Tensor] = {"logits": logits1, "probs": probs}
        if self.training:
            rate = self.current_forget_rate
            sel1, sel2 = self.select(ce1, ce2, rate)
            out["ce"] = ce1[sel2].mean() + ce2[sel1].mean()  # exchange: each net learns from its peer's pick
            out["forget_rate"] = torch.tensor(rate, device=x.device)
            if "y_clean" in batch:
                clean = batch["y"].long() == batch["y_clean"].long()
                out["precision"] = 0.5 * (clean[sel1].float().mean() + clean[sel2].float().mean())
                out["noise_rate"] = 1 - clean.float().mean()
        else:
            out["ce"] = ce1.mean() + ce2.mean()
            out["acc2"] = (logits2.argmax(-1) == y).float().mean()
        out["acc"] = (logits1.argmax(-1) == y).float().mean()
        return out
