"""Nested dropout + Co-teaching (Chen et al. 2021): both networks truncated, K chosen on a noisy validation
split at the end of fit, stored in checkpoints and used at test (also through ``lvi fit`` + ``lvi test``)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from helpers import ROOT
from lightning_vi.checkpoints import LastCheckpoint
from lightning_vi.data import DigitsDataModule
from lightning_vi.data.noisy_labels import NoisyLabelDataModule
from lightning_vi.families.robust import CoTeaching
from lightning_vi.plugins.nested_dropout import NestedDropout

KW = dict(input_shape=[1, 8, 8], backbone="mlp", hidden_dims=[64], feature_dim=16, lr=0.005)


def noisy_dm(seed: int = 0) -> NoisyLabelDataModule:
    return NoisyLabelDataModule(DigitsDataModule(batch_size=128, seed=seed), "symmetric", 0.4, seed=seed,
                                noisy_val_fraction=0.2)


def full_features(model: CoTeaching, net, x: torch.Tensor) -> torch.Tensor:
    """The untruncated feature vector (eval_k = 0 for the call)."""
    k = int(model.nested_dropout_eval_k)
    model.nested_dropout_eval_k.fill_(0)
    try:
        return net.backbone(x)
    finally:
        model.nested_dropout_eval_k.fill_(k)


def truncated_logits(model: CoTeaching, net, x: torch.Tensor, k: int) -> torch.Tensor:
    """``head(h * 1[j < k])`` written out independently of the plugin's hook."""
    h = full_features(model, net, x).clone()
    h[:, k:] = 0
    return net.head(net.dropout(h))


def test_both_networks_truncated_in_training_and_at_eval_k() -> None:
    torch.manual_seed(0)
    model = CoTeaching(plugins=[NestedDropout(distribution="half_gaussian", sigma=1.0, eval_k=5)], **KW)
    x = torch.rand(64, 1, 8, 8)
    plain = CoTeaching(**KW).train()
    assert all((net.backbone(x)[:, 3:] != 0).any() for net in (plain.net1, plain.net2))
    model.train()
    for net in (model.net1, model.net2):
        assert (net.backbone(x)[:, 3:] == 0).all()  # P(k >= 4) = O(exp(-16)) per row, sigma = 1
    model.eval()
    for net in (model.net1, model.net2):
        h = net.backbone(x)
        assert (h[:, 5:] == 0).all() and (h[:, :5] != 0).any()
        torch.testing.assert_close(net(x), truncated_logits(model, net, x, 5))
    torch.testing.assert_close(model(x), truncated_logits(model, model.net1, x, 5))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    L.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("ckpt")
    dm = noisy_dm()
    model = CoTeaching(tau=0.4, num_gradual=2, plugins=[
        NestedDropout(distribution="half_gaussian", sigma=8.0, select_k=True)], **KW)
    tr = L.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu", callbacks=[LastCheckpoint(dirpath=str(path))], num_sanity_val_steps=0)
    tr.fit(model, dm)
    return model, dm, tr, path / "last.ckpt"


def test_best_k_is_the_argmax_of_noisy_val_accuracy(fitted) -> None:
    model, dm, tr, _ = fitted
    model.eval()
    val = list(dm.val_dataloader())
    assert all("y_clean" not in b for b in val)
    x, y = torch.cat([b["x"] for b in val]), torch.cat([b["y"] for b in val])
    with torch.no_grad():
        curve = {k: float((truncated_logits(model, model.net1, x, k).argmax(-1) == y).float().mean())
                 for k in range(1, 17)}
    best = max(curve, key=lambda k: (curve[k], -k))  # ties: the smaller K
    plugin = model.plugin("nested_dropout")
    assert plugin.curve == pytest.approx(curve, abs=1e-6)
    assert int(model.nested_dropout_eval_k) == best
    assert float(tr.callback_metrics["val/best_k"]) == best
    assert float(tr.callback_metrics[f"val/acc_at_k/{best}"]) == pytest.approx(curve[best], abs=1e-6)
    assert len(set(curve.values())) > 1  # the curve is not flat: the choice means something


def test_chosen_k_survives_checkpoint_and_is_used_at_test(fitted) -> None:
    model, dm, _, ckpt = fitted
    k = int(model.nested_dropout_eval_k)
    assert int(torch.load(ckpt, weights_only=False)["state_dict"]["nested_dropout_eval_k"]) == k
    loaded = CoTeaching.load_from_checkpoint(ckpt).eval()
    assert int(loaded.nested_dropout_eval_k) == k
    test = list(dm.test_dataloader())
    x, y = torch.cat([b["x"] for b in test]), torch.cat([b["y"] for b in test])
    with torch.no_grad():
        expected = float((truncated_logits(loaded, loaded.net1, x, k).argmax(-1) == y).float().mean())
        torch.testing.assert_close(loaded(x), truncated_logits(loaded, loaded.net1, x, k))
    tr = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    assert tr.test(loaded, dm, verbose=False)[0]["test/acc"] == pytest.approx(expected, abs=1e-6)


def test_select_k_without_validation_split_is_a_clear_error() -> None:
    from lightning_vi.data.base import InMemoryDataModule

    class NoVal(InMemoryDataModule):
        def generate(self):
            return {"x": torch.rand(64, 1, 8, 8), "y": torch.randint(0, 10, (64,))}

        def val_dataloader(self):
            return []

    model = CoTeaching(plugins=[NestedDropout(distribution="half_gaussian", sigma=4.0, select_k=True)], **KW)
    tr = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    with pytest.raises(RuntimeError, match="select_k=True needs a validation split"):
        tr.fit(model, NoVal(batch_size=32))


def test_lvi_fit_then_lvi_test_uses_the_chosen_k(tmp_path, monkeypatch) -> None:
    from lightning_vi.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cfg = str(ROOT / "configs/robust/coteaching_nested.yaml")
    fit = build_cli(["fit", "--config", cfg, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
                     "--trainer.logger", "false",
                     "--smoke", "false"])
    k = int(fit.model.nested_dropout_eval_k)
    assert 1 <= k <= 64 and float(fit.trainer.callback_metrics["val/best_k"]) == k
    ckpt = tmp_path / "outputs/robust-coteaching-nested/checkpoints/last.ckpt"
    test = build_cli(["test", "--config", cfg, "--ckpt_path", str(ckpt), "--trainer.logger", "false"])
    assert int(test.model.nested_dropout_eval_k) == k
    expected = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu").test(
        fit.model, fit.datamodule, verbose=False)[0]["test/acc"]
    assert float(test.trainer.callback_metrics["test/acc"]) == pytest.approx(expected, abs=1e-6)


def test_composes_with_dream_dropout_and_multisample_error_is_clear() -> None:
    model = CoTeaching(dropout=0.2, plugins=[NestedDropout(distribution="half_gaussian", sigma=4.0),
                                             {"dream_dropout": {}}], **KW)
    tr = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   accelerator="cpu")
    tr.fit(model, noisy_dm())
    assert bool(tr.callback_metrics["train/loss"].isfinite())
    with pytest.raises(TypeError, match="multisample_dropout"):
        CoTeaching(plugins=[{"multisample_dropout": {}}], **KW)
