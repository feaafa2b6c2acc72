"""Shared pieces of the Bayesian classifier families: dataset-size resolution, MC prediction, metrics."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vi.core.metrics_mixin import PredictiveMetricsMixin
from lightning_vi.core.module import VIModule


def infer_train_size(module: VIModule) -> int | None:
    """Number of training examples from the attached trainer's data module (or train loader)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return None
    dm = getattr(trainer, "datamodule", None)
    if dm is not None and getattr(dm, "splits", None) is not None:
        dm.setup("fit")
        if "train" in dm.splits:
            return len(next(iter(dm.splits["train"].values())))
    try:
        return len(trainer.train_dataloader.dataset)
    except Exception:  # noqa: BLE001
        return None


class BayesClassifierMixin(PredictiveMetricsMixin):
    """For families with ``logits(x) -> [B, C]`` (stochastic when sampling), ``self.num_eval_samples`` and a
    ``num_classes`` hyper-parameter; they call ``self.build_metrics()`` at the end of ``__init__``.

    KL scaling: the loss is ``nll_mean + kl_weight * KL_sum / dataset_size`` (Blundell et al. 2015,
    Eq. 2 divided by N). ``dataset_size`` is taken from the data module at ``setup`` when not given.

    Test metrics: ``test/pred_acc``, ``test/pred_nll``, ``test/ece`` (15 bins), ``test/brier`` of the MC
    predictive ``predict_proba`` over the whole test split (epoch-level ``torchmetrics``, synced under DDP).
    """

    dataset_size: int | None
    kl_weight: float

    def _set_kl_scale(self) -> None:
        if self.dataset_size:
            self.term_weights["kl"] = self.kl_weight / self.dataset_size

    def setup(self, stage: str) -> None:  # Lightning hook
        if not self.dataset_size:
            n = infer_train_size(self)
            if n is None:
                raise ValueError("dataset_size=None and the training-set size cannot be read from the trainer; "
                                 "pass model.init_args.dataset_size (number of training examples)")
            self.dataset_size = n
        self._set_kl_scale()

    def _require_size(self) -> None:
        if not self.dataset_size:
            raise ValueError("dataset_size is not set; pass dataset_size=<number of training examples> "
                             "(it scales the summed KL: loss = NLL + KL / dataset_size)")

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """ELBO terms with ``num_samples`` posterior draws of the logits: ``nll`` (mean), ``kl`` (summed)."""
        self._require_size()
        x, y = batch["x"], batch["y"]
        logits = torch.stack([self.logits(x) for _ in range(self.num_samples)])
        nll = mc_nll(logits, y)
        kl = self.kl()
        return {"nll": nll, "kl": kl, "elbo": -(nll + kl / self.dataset_size),
                "acc": (logits.softmax(-1).mean(0).argmax(-1) == y).float().mean(), "logits": logits.mean(0)}

    @torch.no_grad()
    def predict_proba(self, x: Tensor, num_samples: int | None = None) -> Tensor:
        """Monte-Carlo predictive ``mean_s softmax(logits_s)`` over ``num_samples`` posterior samples."""
        s = num_samples or self.num_eval_samples
        return torch.stack([self.logits(x).softmax(-1) for _ in range(s)]).mean(0)


def mc_nll(logits_samples: Tensor, y: Tensor) -> Tensor:
    """Mean over samples and examples of the cross-entropy: ``-E_q log p(y|x,w)`` (the ELBO's data term)."""
    s = logits_samples.shape[0]
    return F.cross_entropy(logits_samples.flatten(0, 1), y.repeat(s))
