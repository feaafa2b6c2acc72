"""LAF wired to the package: on the ``classifier`` family, as an ``lvi fit`` callback and as a command.

Oracles: the audit's accuracies against an independent count; LAF on a family classifier forgets (forget-class test
accuracy <= chance + 0.1) and keeps the rest (remain accuracy within 5 points), seeds 0-2; an overfit classifier
(10% of the digits, 75 epochs of batch 16, no weight decay) is caught by the loss-threshold membership attack (AUC >= 0.6 on
its training examples of digit 8 vs test ones), so the MIA oracle discriminates.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import ROOT
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.classifier import Classifier
from lightning_vi.families.robust.laf import (
    LabelAgnosticForgetting,
    forget_audit,
    main,
    membership_inference_auc,
)
from plugin_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = ROOT / "configs" / "robust" / "laf.yaml"


def train_classifier(seed: int, fraction: float, epochs: int, batch_size: int = 64):
    """A family ``classifier`` (MLP 64-256-64 + linear head) trained by a plain loop on the digits' train split;
    ``fraction``: the val and the test fraction each."""
    dm = DigitsDataModule(val_fraction=fraction, test_fraction=fraction, seed=seed)
    dm.setup()
    tr, te = dm.splits["train"], dm.splits["test"]
    torch.manual_seed(seed)
    m = Classifier(input_shape=[1, 8, 8], backbone="mlp", hidden_dims=[256], feature_dim=64)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for i in torch.randperm(len(tr["y"]), generator=g).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(m(tr["x"][i]), tr["y"][i]).backward()
            opt.step()
    return m.eval(), (tr["x"], tr["y"]), (te["x"], te["y"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_laf_on_a_classifier_family_model(seed):
    m, train, test = train_classifier(seed, 0.15, 30)
    new, met = forget_audit(m, train, test, forget_class=0, seed=seed)
    (xtr, ytr), (xte, yte) = train, test
    with torch.no_grad():  # independent count of the reported numbers
        pred0, pred1 = m(xte).argmax(-1), new(xte).argmax(-1)
    f = yte == 0
    assert met["before"]["forget_acc"] == pytest.approx(float((pred0[f] == 0).float().mean()))
    assert met["after"]["remain_acc"] == pytest.approx(float((pred1[~f] == yte[~f]).float().mean()))
    assert met["n_forget_train"] == int((ytr == 0).sum()) and met["n_forget_test"] == int(f.sum())
    assert met["before"]["forget_acc"] > 0.9
    assert met["after"]["forget_acc"] <= 0.1 + 0.1  # measured 0.000 / 0.000 / 0.000 (original 1.000 on seeds 0-2)
    assert met["after"]["remain_acc"] >= met["before"]["remain_acc"] - 0.05  # measured 0.976->0.943, 0.976->0.931, 0.968->0.923 (tight: 4.5 pts on seeds 1, 2)
    assert type(new) is Classifier and not torch.equal(new.backbone.net[0].weight, m.backbone.net[0].weight)
    torch.testing.assert_close(new.head.weight, m.head.weight)  # LAF keeps the head frozen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mia_catches_an_overfit_classifier(seed):
    # the setting of configs/robust/laf.yaml: 179 training examples, 75 epochs of batch 16, no weight decay
    m, (xtr, ytr), (xte, yte) = train_classifier(seed, 0.45, 75, batch_size=16)
    fm, tf = ytr == 8, yte == 8
    auc = membership_inference_auc(m, xtr[fm], ytr[fm], xte[tf], yte[tf])
    assert auc >= 0.6, auc  # measured 0.681 / 0.821 / 0.722
    assert membership_inference_auc(m, xte[tf], yte[tf], xtr[fm], ytr[fm]) == pytest.approx(1 - auc)


def test_lvi_fit_unlearns_at_the_end_and_the_command_reruns_it(tmp_path, monkeypatch):
    from lightning_vi.checkpoints import read_checkpoint
    from lightning_vi.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", str(CONFIG), "--trainer.max_epochs", "3", "--trainer.logger", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.check_val_every_n_epoch", "1"])
    assert cli.trainer.state.finished
    out = tmp_path / "outputs" / "robust-laf" / "laf"
    met = json.loads((out / "metrics.json").read_text())
    assert met["forget_class"] == 8 and met["smoke"] is False and met["laf"]["epochs"] == 25
    assert set(met["before"]) == set(met["after"]) == {"forget_acc", "remain_acc", "forget_train_acc", "mia_auc"}
    dm = cli.datamodule
    xte, yte = dm.splits["test"]["x"], dm.splits["test"]["y"]
    unlearned = Classifier.load_from_checkpoint(out / "unlearned.ckpt", weights_only=True).eval()
    with torch.no_grad():
        f = yte == 8
        assert float((unlearned(xte[f]).argmax(-1) == 8).float().mean()) == pytest.approx(met["after"]["forget_acc"])
        assert float((cli.model(xte[f]).argmax(-1) == 8).float().mean()) == pytest.approx(met["before"]["forget_acc"])
    last = tmp_path / "outputs" / "robust-laf" / "checkpoints" / "last.ckpt"
    again = main(["--config", str(CONFIG), "--ckpt", str(last), "--out", str(tmp_path / "again"),
                  "--forget-class", "3"])
    assert again["forget_class"] == 3
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["before"] == again["before"]
    ckpt = read_checkpoint(tmp_path / "again" / "unlearned.ckpt")  # weights only, no pickled objects
    assert "optimizer_states" not in ckpt
    rerun = Classifier.load_from_checkpoint(tmp_path / "again" / "unlearned.ckpt", weights_only=True).eval()
    with torch.no_grad():
        assert float((rerun(xte[yte == 3]).argmax(-1) == 3).float().mean()) == pytest.approx(again["after"]["forget_acc"])


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"epochs=-1 is out of range; allowed: integers >= 0"):
        LabelAgnosticForgetting(epochs=-1)
    with pytest.raises(ValueError, match=r"temperature=0 is out of range"):
        LabelAgnosticForgetting(temperature=0)
    m = Classifier(input_shape=[1, 8, 8], backbone="mlp", hidden_dims=[16], feature_dim=8)
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 2
    with pytest.raises(ValueError, match=r"forget_class=7 has no training example; allowed: \[0, 1\]"):
        forget_audit(m, (x, y), (x, y), forget_class=7, epochs=0)
    with pytest.raises(ValueError, match=r"forget_class=1 has no test example"):
        forget_audit(m, (x, y), (x[y == 0], y[y == 0]), forget_class=1, epochs=0)
    plain = tmp_path / "plain.yaml"
    plain.write_text("model:\n  class_path: classifier\n  init_args: {input_shape: [1, 8, 8], backbone: mlp}\n"
                     "data:\n  class_path: lightning_vi.data.DigitsDataModule\n")
    with pytest.raises(ValueError, match=r"plain.yaml has no LabelAgnosticForgetting callback under trainer.callbacks"):
        main(["--config", str(plain), "--ckpt", str(tmp_path / "none.ckpt")])
