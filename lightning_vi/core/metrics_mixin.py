"""Epoch-level metrics per stage: one ``torchmetrics.MetricCollection`` for validation, one for test.

A family declares what it reports with :meth:`StageMetricsMixin.metrics` (a ``MetricCollection``
factory, e.g. :func:`lightning_vi.metrics.calibration.classification_collection`) and
``metric_inputs`` (for each stage, the name of the non-scalar output of ``objective`` /
``test_terms`` holding the predictions; the targets are ``batch["y"]``), and calls
:meth:`build_metrics` at the end of its ``__init__``. The mixin then

* clones the collection per stage as ``self.val_metrics`` / ``self.test_metrics`` with the prefixes
  ``val/`` / ``test/`` (registered sub-modules: they follow the model's device; their states are not
  in the state dict, so checkpoints are unchanged);
* updates it each step from the objective's outputs (:meth:`VIModule.update_metrics`) and logs the
  collection object with ``log_dict(..., on_epoch=True)``, so that Lightning computes it once per
  epoch over all examples, syncs it across processes (torchmetrics' own ``dist_reduce_fx``) and resets it;
* leaves out of the per-batch scalar logging any objective term of the same name, so ``val/acc``
  is the collection's value and not also a batch average.

Per-batch values averaged over batches are not the epoch value for non-linear metrics such as the
ECE (Guo et al. 2017, Eq. 3, bins over the whole split), and per-process values are not the global
value under DDP; a ``Metric``'s states are.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics import MetricCollection

from lightning_vi.metrics.calibration import classification_collection

STAGES = ("val", "test")


class StageMetricsMixin:
    """Mixin for :class:`~lightning_vi.core.module.VIModule` families (put it first in the bases)."""

    #: stage -> key of the ``objective``/``test_terms`` output with the predictions ``[B, C]``.
    metric_inputs: dict[str, str] = {"val": "probs", "test": "probs"}

    def metrics(self) -> MetricCollection:
        """The family's metrics, without prefix (cloned per stage by :meth:`build_metrics`)."""
        raise NotImplementedError(f"{type(self).__name__} uses StageMetricsMixin and must define metrics()")

    def build_metrics(self) -> None:
        """Create ``<stage>_metrics`` for every stage in ``metric_inputs``; call at the end of ``__init__``."""
        bad = sorted(set(self.metric_inputs) - set(STAGES))
        if bad:
            raise ValueError(f"{type(self).__name__}.metric_inputs has stages {bad}; allowed: {list(STAGES)}")
        base = self.metrics()
        if not isinstance(base, MetricCollection):
            raise TypeError(f"{type(self).__name__}.metrics() returned {type(base).__name__}; expected a MetricCollection")
        for stage in self.metric_inputs:
            setattr(self, f"{stage}_metrics", base.clone(prefix=f"{stage}/"))

    def stage_metrics(self, stage: str) -> MetricCollection | None:
        """The collection of ``stage`` (None for stages without one)."""
        if stage not in self.metric_inputs:
            return None
        coll = getattr(self, f"{stage}_metrics", None)
        if coll is None:
            raise RuntimeError(f"{type(self).__name__} has no {stage}_metrics: call self.build_metrics() at the end "
                               "of __init__")
        return coll

    def update_metrics(self, outputs: dict[str, Any], batch: Any, stage: str) -> None:
        coll = self.stage_metrics(stage)
        if coll is None:
            return
        key = self.metric_inputs[stage]
        if key not in outputs:
            raise KeyError(f"{type(self).__name__} reports {stage} metrics from the output {key!r}, which the "
                           f"objective did not return; outputs: {sorted(outputs)}")
        if not isinstance(batch, dict) or "y" not in batch:
            raise KeyError(f"{stage} metrics need labels batch['y']; the batch has "
                           f"{sorted(batch) if isinstance(batch, dict) else type(batch).__name__}")
        coll.update(outputs[key].detach().float(), batch["y"].long())
        self.log_dict(coll, on_step=False, on_epoch=True)

    def _log_terms(self, terms: dict[str, Tensor], stage: str, batch_size: int) -> None:
        coll = self.stage_metrics(stage)
        if coll is not None:
            reported = set(coll.keys(keep_base=False))
            terms = {k: v for k, v in terms.items() if f"{stage}/{k}" not in reported}
        super()._log_terms(terms, stage, batch_size)  # type: ignore[misc]


class PredictiveMetricsMixin(StageMetricsMixin):
    """Test metrics of a classifier's predictive ``predict_proba(x) -> [B, C]`` (for families whose
    training objective is not the predictive, e.g. Monte-Carlo BNNs and information bottlenecks):
    ``test/pred_acc``, ``test/pred_nll``, ``test/ece`` (15 bins), ``test/brier`` over the whole test split.
    Needs a ``num_classes`` hyper-parameter."""

    metric_inputs = {"test": "pred_probs"}

    def metrics(self) -> MetricCollection:
        return classification_collection(self.hparams["num_classes"], n_bins=15,  # type: ignore[attr-defined]
                                         names={"acc": "pred_acc", "nll": "pred_nll"})

    def test_terms(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The predictive ``pred_probs`` [B, C] that feeds the test metrics."""
        return {"pred_probs": self.predict_proba(batch["x"])}  # type: ignore[attr-defined]
