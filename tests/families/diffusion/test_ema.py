"""The ``ema`` plugin (one EMA mechanism for ddpm, its subclasses and flow_matching)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import quiet_trainer
from lightning_vi.data.base import TensorDictDataset
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.flow_matching import FlowMatching
from lightning_vi.plugins.ema import EMA


class RecordNet(L.Callback):
    """The trained net's parameters after every optimizer step."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append([p.detach().clone() for p in pl_module.net.parameters()])


def _loader():
    data = {"x": torch.randn(128, 2, generator=torch.Generator().manual_seed(0))}
    return DataLoader(TensorDictDataset(data), batch_size=32, collate_fn=lambda b: b)


@pytest.mark.parametrize("family", [DDPM, FlowMatching])
def test_ema_is_the_recursion_and_is_used_in_eval(family, tmp_path):
    d = 0.7
    L.seed_everything(0)
    model = family(hidden=16, depth=1, plugins=[{"class_path": "ema", "init_args": {"decay": d}}])
    expected = [p.detach().clone() for p in model.net.parameters()]
    rec = RecordNet()
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[rec]).fit(model, _loader())
    assert len(rec.seen) == 4
    for params in rec.seen:  # theta_ema <- d theta_ema + (1 - d) theta, written out
        expected = [d * e + (1 - d) * p for e, p in zip(expected, params)]
    for e, p in zip(expected, model.ema_net.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
        assert not p.requires_grad
    opt_ids = {id(p) for g in model.configure_optimizers().param_groups for p in g["params"]}
    assert not opt_ids & {id(p) for p in model.ema_net.parameters()}
    assert model.train().network() is model.net and model.eval().network() is model.ema_net


def test_ema_resumes_from_checkpoint(tmp_path):
    """Resuming restores the averaged copy (not a fresh copy of the net) and keeps averaging from it."""
    d = 0.8
    L.seed_everything(0)
    first = DDPM(hidden=16, depth=1, plugins=[EMA(decay=d)])
    trainer = quiet_trainer(tmp_path, max_epochs=10, max_steps=2)
    trainer.fit(first, _loader())
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    saved = [p.detach().clone() for p in first.ema_net.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(saved, first.net.parameters()))
    L.seed_everything(1)
    model, rec = DDPM(hidden=16, depth=1, plugins=[EMA(decay=d)]), RecordNet()
    quiet_trainer(tmp_path, max_epochs=10, max_steps=4, callbacks=[rec]).fit(model, _loader(), ckpt_path=str(tmp_path / "half.ckpt"))
    assert len(rec.seen) == 2
    expected = saved
    for params in rec.seen:
        expected = [d * e + (1 - d) * p for e, p in zip(expected, params)]
    for e, p in zip(expected, model.ema_net.parameters()):
        assert torch.allclose(e, p, atol=1e-6)
    reloaded = DDPM.load_from_checkpoint(tmp_path / "half.ckpt")
    assert [p.name for p in reloaded.plugins] == ["ema"]
    assert all(torch.equal(a, b) for a, b in zip(saved, reloaded.ema_net.parameters()))


def test_deprecated_ema_decay_and_bad_input():
    with pytest.warns(DeprecationWarning, match="ema_decay is deprecated"):
        m = DDPM(hidden=8, ema_decay=0.95)
    assert m.plugin("ema").decay == 0.95 and m.ema_net is not None
    with pytest.warns(DeprecationWarning):
        assert DDPM(hidden=8, ema_decay=0.0).ema_net is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DDPM(hidden=8).ema_net is None  # no EMA unless asked for, no warning
    with pytest.raises(ValueError, match="decay=1.0"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="target='encoder'"):
        DDPM(hidden=8, plugins=[EMA(target="encoder")])
    with pytest.raises(TypeError, match="two EMA plugins"):
        DDPM(hidden=8, plugins=["ema", "ema"])
