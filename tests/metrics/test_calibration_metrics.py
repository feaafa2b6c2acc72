"""Epoch-level classification metrics (acc, NLL, ECE, Brier) as torchmetrics, per stage.

References are written here in numpy over the whole split at once: accuracy, NLL ``-mean log p_y``,
Brier ``mean sum_c (p_c - 1[y=c])^2`` (Brier 1950) and the L1 ECE with 15 equal-width confidence bins
``sum_b |B_b|/N |acc(B_b) - conf(B_b)|`` (Guo et al. 2017, Eq. 3). Batches are unequal, so a mean of
per-batch values (the old reporting) is not the epoch value for the ECE; the tests check that it differs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchmetrics.utilities.data import dim_zero_sum

from helpers import quiet_trainer, run_ddp_script

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_calibration_run import BATCH, CLASSES, build  # noqa: E402
from lightning_vi.metrics.calibration import BrierScore, NegativeLogLikelihood, classification_collection  # noqa: E402
from plugin_helpers import one_thread  # noqa: F401,E402

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-6
SCRIPT = Path(__file__).with_name("ddp_calibration_run.py")


def reference(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    p, y = p.astype(np.float64), y.astype(np.int64)
    n = len(y)
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == y).astype(np.float64)
    onehot = np.eye(p.shape[1])[y]
    bins = np.floor(conf * n_bins).astype(int)  # bin b = [b/n, (b+1)/n)
    ece = sum(abs(correct[bins == b].mean() - conf[bins == b].mean()) * (bins == b).sum() / n
              for b in np.unique(bins))
    return {"acc": correct.mean(), "nll": -np.log(p[np.arange(n), y]).mean(),
            "brier": ((p - onehot) ** 2).sum(1).mean(), "ece": float(ece)}


def per_batch_mean(p: np.ndarray, y: np.ndarray, batch: int) -> dict[str, float]:
    """What the old reporting logged: per-batch values, averaged weighted by batch size."""
    parts = [(reference(p[i:i + batch], y[i:i + batch]), len(y[i:i + batch])) for i in range(0, len(y), batch)]
    return {k: sum(r[k] * w for r, w in parts) / len(y) for k in parts[0][0]}


def assert_matches(logged: dict, ref: dict[str, float], names: dict[str, str]) -> None:
    for k, name in names.items():
        assert float(logged[name]) == pytest.approx(ref[k], abs=TOL), (name, float(logged[name]), ref[k])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_classes_accumulate_over_unequal_updates(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(3 * torch.randn(101, 4, generator=g), -1)
    y = torch.randint(0, 4, (101,), generator=g)
    y[:60] = 0  # imbalanced, so macro-averaged accuracy (torchmetrics' default) would differ from micro
    coll = classification_collection(4, n_bins=15)
    for lo, hi in ((0, 7), (7, 60), (60, 101)):
        coll.update(p[lo:hi], y[lo:hi])
    ref = reference(p.numpy(), y.numpy())
    assert_matches(coll.compute(), ref, {k: k for k in ref})
    for metric in (BrierScore(), NegativeLogLikelihood()):
        assert metric._reductions["total"] is dim_zero_sum and metric._reductions["count"] is dim_zero_sum


def test_collection_arguments_are_checked():
    with pytest.raises(ValueError, match=r"num_classes=1 is out of range; allowed: \[2, inf\)"):
        classification_collection(1)
    with pytest.raises(ValueError, match=r"names has unknown keys \['accuracy'\]; allowed: \['acc', 'brier'"):
        classification_collection(3, names={"accuracy": "pred_acc"})
    with pytest.raises(ValueError, match=r"probs/y have shapes \(4, 3\)/\(5,\); expected \(N, C\) and \(N,\)"):
        BrierScore().update(torch.full((4, 3), 1 / 3), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classifier_val_and_test_metrics_are_epoch_level(seed, tmp_path):
    model, data = build(seed, n=203)
    loader = DataLoader(data, batch_size=BATCH, shuffle=False)  # 37 x 5 + 18
    model.eval()
    ref = reference(model.predict_proba(data.x).numpy(), data.y.numpy())
    old = per_batch_mean(model.predict_proba(data.x).numpy(), data.y.numpy(), BATCH)
    assert abs(old["ece"] - ref["ece"]) > 100 * TOL, (old, ref)  # the test can tell the two apart
    trainer = quiet_trainer(tmp_path)
    val = trainer.validate(model, loader, verbose=False)[0]
    assert_matches(val, ref, {k: f"val/{k}" for k in ref})
    test = trainer.test(model, loader, verbose=False)[0]
    assert_matches(test, ref, {k: f"test/{k}" for k in ref})
    assert set(test) >= {"test/ce", "test/loss"}  # the objective's other terms are still logged


@pytest.mark.parametrize("family", ["bnn", "vib", "cvib"])
def test_predictive_families_report_epoch_level_test_metrics(family, tmp_path):
    from lightning_vi.families.bayes import BNN
    from lightning_vi.families.bottleneck import CVIB, VIB

    L.seed_everything(0)
    model = {"bnn": lambda: BNN(input_shape=[8], num_classes=CLASSES, dataset_size=203, init_std=0.5),
             "vib": lambda: VIB(input_shape=[8], num_classes=CLASSES),
             "cvib": lambda: CVIB(input_shape=[8], num_classes=CLASSES, hidden_dims=[16, 8])}[family]()
    _, data = build(0, n=203)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    update = model.update_metrics

    def spy(outputs, batch, stage):
        seen.append((outputs["pred_probs"].clone(), batch["y"].clone()))
        update(outputs, batch, stage)

    model.update_metrics = spy
    res = quiet_trainer(tmp_path).test(model, DataLoader(data, batch_size=BATCH), verbose=False)[0]
    p, y = torch.cat([s[0] for s in seen]), torch.cat([s[1] for s in seen])
    assert [len(s[1]) for s in seen] == [37] * 5 + [18] and torch.allclose(p.sum(-1), torch.ones(203))
    ref = reference(p.numpy(), y.numpy())
    assert_matches(res, ref, {"acc": "test/pred_acc", "nll": "test/pred_nll", "ece": "test/ece", "brier": "test/brier"})


def test_ddp_two_processes_equal_single_process(tmp_path):
    """2-process DDP (gloo, CPU): the epoch values equal one process's and the numpy values on all data."""
    ddp = run_ddp_script(SCRIPT, tmp_path)
    assert ddp["world_size"] == 2
    model, data = build()
    single = quiet_trainer(tmp_path).test(model, DataLoader(data, batch_size=BATCH), verbose=False)[0]
    model.eval()
    ref = reference(model.predict_proba(data.x).numpy(), data.y.numpy())
    for k in ref:
        name = f"test/{k}"
        assert ddp["metrics"][name] == pytest.approx(float(single[name]), abs=TOL), (name, ddp["metrics"], single)
        assert ddp["metrics"][name] == pytest.approx(ref[k], abs=TOL), (name, ddp["metrics"][name], ref[k])


def test_validate_then_fit_keeps_metric_states_usable(tmp_path):
    """trainer.validate makes the metric states under inference mode; a later fit must still update them
    (in-place adds on inference tensors raised "Inplace update to inference tensor outside InferenceMode")."""
    import lightning as L

    from lightning_vi.data import DigitsDataModule
    from lightning_vi.families.classifier.classifier import Classifier

    model = Classifier(backbone="mlp", hidden_dims=[32], feature_dim=16)
    dm = DigitsDataModule(batch_size=128)
    kw = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_train_batches=2, default_root_dir=tmp_path)
    L.Trainer(**kw).validate(model, dm)
    trainer = L.Trainer(**kw)
    trainer.fit(model, dm)
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0 and "val/nll" in trainer.callback_metrics
