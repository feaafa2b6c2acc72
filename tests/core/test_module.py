"""VIModule: named-term logging, plugin hooks and order, input checks, non-finite stop, checkpoints."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from helpers import quiet_trainer
from lightning_vi import NonFiniteLossError, Plugin
from lightning_vi.core.module import resolve_plugin, to_plain
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.vae import VAE
from lightning_vi.registry import PLUGINS, UnknownNameError

CALLS: list[str] = []


class Recorder(Plugin):
    """Test plugin: records hook calls, adds a head in attach and a weighted extra term."""

    order = 10

    def __init__(self, tag: str = "a", weight: float = 0.0) -> None:
        self.tag, self.weight = tag, weight

    def attach(self, module):
        CALLS.append(f"attach:{self.tag}")
        module.add_module(f"extra_{self.tag}", nn.Linear(2, 2))

    def transform_batch(self, batch, module):
        CALLS.append(f"transform:{self.tag}")
        return batch

    def extra_terms(self, outputs, batch, module):
        assert "z" in outputs and outputs["z"].ndim == 2
        return {f"reg_{self.tag}": self.weight * outputs["z"].pow(2).mean()}


class Structural(Recorder):
    order = 0


def _tiny_vae(**kw):
    return VAE(input_shape=[1, 8, 8], latent_dim=2, hidden_dims=[32], **kw)


def test_every_term_is_logged_by_name(tmp_path):
    L.seed_everything(0)
    model = _tiny_vae(plugins=[Recorder("a", 0.1)])
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(model, DigitsDataModule(batch_size=64))
    keys = set(trainer.logged_metrics)
    for k in ("train/recon_epoch", "train/kl_epoch", "train/elbo_epoch", "train/loss_epoch", "train/reg_a_epoch",
              "val/recon", "val/kl", "val/elbo", "val/loss"):
        assert k in keys, (k, sorted(keys))
    assert "val/reg_a" not in keys  # plugin terms are training-time regularizers


def test_loss_is_the_weighted_sum_of_terms():
    torch.manual_seed(0)
    model = _tiny_vae(kl_weight=0.25, plugins=[Recorder("a", 2.0)])
    batch = {"x": torch.rand(16, 1, 8, 8)}
    torch.manual_seed(1)
    loss, terms = model.compute_loss(batch, "train")
    assert torch.allclose(loss, terms["recon"] + 0.25 * terms["kl"] + terms["reg_a"])
    _, val_terms = model.compute_loss(batch, "val")
    assert "reg_a" not in val_terms


def test_plugins_run_in_documented_order():
    CALLS.clear()
    model = _tiny_vae(plugins=[Recorder("late"), Structural("first"), Recorder("late2")])
    assert [p.tag for p in model.plugins] == ["first", "late", "late2"]
    assert CALLS == ["attach:first", "attach:late", "attach:late2"]
    model.compute_loss({"x": torch.rand(4, 1, 8, 8)}, "train")
    assert CALLS[3:] == ["transform:first", "transform:late", "transform:late2"]


def test_plugin_specs_resolve_and_unknown_names_list_known_ones():
    PLUGINS.register("test_recorder", Recorder)
    assert isinstance(resolve_plugin("test_recorder"), Recorder)
    p = resolve_plugin({"test_recorder": {"tag": "b"}})
    assert p.tag == "b" and p.to_config()["init_args"] == {"tag": "b", "weight": 0.0}
    q = resolve_plugin(p.to_config())
    assert q.tag == "b"
    with pytest.raises(UnknownNameError, match=r"Unknown plugin 'test_recorde'.*Did you mean 'test_recorder'"):
        resolve_plugin("test_recorde")


def test_checkpoint_rebuilds_plugins_and_structure(tmp_path):
    model = _tiny_vae(plugins=[Structural("s", 0.5)], optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, DigitsDataModule(batch_size=64))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    hp = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]  # plain data only
    assert hp["plugins"][0]["init_args"] == {"tag": "s", "weight": 0.5}
    assert hp["optimizer"]["class_path"] == "torch.optim.sgd.SGD"
    clone = VAE.load_from_checkpoint(tmp_path / "m.ckpt")
    assert isinstance(clone.plugins[0], Structural) and clone.plugins[0].weight == 0.5
    assert hasattr(clone, "extra_s")
    assert isinstance(clone.configure_optimizers(), torch.optim.SGD)
    x = torch.rand(3, 1, 8, 8)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))


def test_wrong_input_shape_names_both_shapes(tmp_path):
    model = VAE(input_shape=[1, 16, 16])
    with pytest.raises(ValueError, match=r"batch\['x'\] has shape \(64, 1, 8, 8\).*input_shape=\[1, 16, 16\]"):
        quiet_trainer(tmp_path, limit_train_batches=1).fit(model, DigitsDataModule(batch_size=64))


class NaNAfter(Plugin):
    """Makes the KL term NaN from a given global step on."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def extra_terms(self, outputs, batch, module):
        bad = torch.tensor(float("nan")) if module.global_step >= self.step else torch.tensor(0.0)
        return {"poison": bad}


def test_non_finite_loss_stops_with_step_and_term_and_keeps_checkpoint(tmp_path):
    L.seed_everything(0)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    model = _tiny_vae(plugins=[NaNAfter(step=5)])
    trainer = quiet_trainer(tmp_path, max_epochs=3, enable_checkpointing=True, callbacks=[ckpt],
                            limit_val_batches=0)
    with pytest.raises(NonFiniteLossError, match=r"global step 5.*'poison': nan"):
        trainer.fit(model, DigitsDataModule(batch_size=64))
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    restored = VAE.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_to_plain_makes_checkpoint_safe_values():
    plain = to_plain({"opt": functools.partial(torch.optim.Adam, lr=0.1), "cls": torch.optim.SGD, "t": (1, 2)})
    assert plain == {"opt": {"class_path": "torch.optim.adam.Adam", "init_args": {"lr": 0.1}},
                     "cls": {"class_path": "torch.optim.sgd.SGD", "init_args": {}}, "t": [1, 2]}


def test_non_positive_lr_is_rejected():
    with pytest.raises(ValueError, match=r"lr=0"):
        _tiny_vae(lr=0)
