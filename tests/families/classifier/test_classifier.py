"""Classifier family: backbones, Lightning training with accuracy/NLL/ECE, soft targets, checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from helpers import quiet_trainer
from lightning_vi.data import DigitsDataModule, SpritesDataModule
from lightning_vi.families.classifier import Classifier
from lightning_vi.registry import FAMILIES
from plugin_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_and_backbones_shapes():
    assert FAMILIES.get("classifier") is Classifier
    x = torch.rand(5, 1, 16, 16)
    for bb in ("mlp", "conv", "resnet"):
        m = Classifier(input_shape=[1, 16, 16], backbone=bb, feature_dim=24, channels=[8, 16])
        out = m.objective({"x": x, "y": torch.arange(5)})
        assert out["logits"].shape == (5, 10) and out["features"].shape == (5, 24)
        assert isinstance(m.head, torch.nn.Linear) and m.feature_dim == 24


def test_conv_classifier_learns_digits_with_trainer_and_logs_ece(tmp_path):
    L.seed_everything(0)
    m = Classifier(input_shape=[1, 8, 8], backbone="conv", channels=[16, 32], lr=1e-2)
    trainer = quiet_trainer(tmp_path, max_epochs=12)
    trainer.fit(m, DigitsDataModule(batch_size=64))
    metrics = trainer.callback_metrics
    assert float(metrics["val/acc"]) > 0.85, metrics
    assert 0.0 <= float(metrics["val/ece"]) < 0.2
    assert float(metrics["val/nll"]) < 0.6


def test_resnet_on_sprites_runs_a_step(tmp_path):
    L.seed_everything(0)
    m = Classifier(input_shape=[1, 16, 16], num_classes=3, backbone="resnet", channels=[8, 16])
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(m, SpritesDataModule(n=300, image_size=16, batch_size=32))
    assert "val/ece" in trainer.callback_metrics


def test_bad_arguments():
    with pytest.raises(ValueError, match="backbone='vit'.*choose one of"):
        Classifier(backbone="vit")
    with pytest.raises(ValueError, match=r"dropout=1.5 is out of range; allowed: \[0.0, 1.0\)"):
        Classifier(dropout=1.5)
    with pytest.raises(ValueError, match="needs input_shape"):
        Classifier(input_shape=[64], backbone="conv")


@pytest.mark.parametrize("plugins", [
    [{"ordered_dropout": {"layers": ["head", "backbone.fc"]}}],
    [{"multisample_dropout": {"k": 4, "p": 0.3}}],
    ["nested_dropout", "cutmix", {"gradient_clipping": {"algorithm": "agc", "threshold": 0.05}}],
])
def test_checkpoint_reload_with_plugins_gives_identical_outputs(tmp_path, plugins):
    L.seed_everything(0)
    m = Classifier(backbone="conv", channels=[8, 16], feature_dim=16, plugins=plugins)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(m, DigitsDataModule(batch_size=32))
    shrunk = m.plugins[0].name == "ordered_dropout"
    if shrunk:
        m.plugin("ordered_dropout").decomposed["head"].active_rank.fill_(5)  # a progressively shrunk model
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = Classifier.load_from_checkpoint(path).eval()
    x = torch.rand(6, 1, 8, 8)
    assert [p.name for p in loaded.plugins] == [p.name for p in m.plugins]
    assert torch.equal(m.eval()(x), loaded(x))
    if shrunk:
        assert loaded.plugin("ordered_dropout").decomposed["head"].rank == 5
