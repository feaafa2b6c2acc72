"""Non-VAE families: shared VIModule arguments through ``**kwargs`` and the renamed arguments of
docs/concepts.md (old name warns, means the new one, checkpoints store the new name only)."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.families.bayes.binary_vcl import BinaryVCL
from lightning_vi.families.bayes.bnn import BNN
from lightning_vi.families.bayes.ssvi import SSVI
from lightning_vi.families.bottleneck.cvib import CVIB
from lightning_vi.families.bottleneck.vib import VIB
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.sequence.fbm_sde import FBMSDE
from lightning_vi.families.sequence.kvae import KoopmanVAE
from lightning_vi.families.sequence.rvae import RecurrentVAE
from lightning_vi.families.sequence.video_vae import VideoVAE

SHARED = ("plugins", "optimizer", "lr_scheduler", "lr", "check_finite")
CONV = {"architecture": "conv", "hidden_dims": [8]}


@pytest.mark.parametrize("cls, old, new, value, kw, attr", [
    (BNN, "conv_channels", "channels", [4, 6], CONV, lambda m: [m.net[0].out_channels, m.net[2].out_channels]),
    (SSVI, "conv_channels", "channels", [4, 6], CONV, lambda m: [m.net[0].out_channels, m.net[2].out_channels]),
    (VIB, "beta", "kl_weight", 0.25, {}, lambda m: m.term_weights["rate"]),
    (CVIB, "beta", "kl_weight", 0.25, {}, lambda m: m.term_weights["compression"] * m.num_units),
    (RecurrentVAE, "beta", "kl_weight", 0.25, {}, lambda m: m.term_weights["kl"]),
    (VideoVAE, "beta", "kl_weight", 0.25, {}, lambda m: m.term_weights["kl"]),
    (KoopmanVAE, "beta", "kl_weight", 0.25, {}, lambda m: m.term_weights["kl"]),
    (FBMSDE, "beta", "kl_weight", 0.25, {}, lambda m: m.term_weights["kl"]),
])
def test_old_argument_names_warn_and_mean_the_new_ones(cls, old, new, value, kw, attr):
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is deprecated.*use {new}="):
        m = cls(**kw, **{old: value})
    assert attr(m) == pytest.approx(value)
    assert attr(cls(**kw, **{new: value})) == pytest.approx(value)
    plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    assert old not in m.hparams and plain(m.hparams[new]) == value, dict(m.hparams)
    with pytest.raises(ValueError, match=rf"{old}=.* and {new}=.* name the same argument; give only {new}"):
        cls(**kw, **{old: value, new: [9, 9] if isinstance(value, list) else 7.0})


@pytest.mark.parametrize("cls, kw, lr", [
    (BNN, {}, 1e-3), (SSVI, {"density": 0.5}, 1e-3), (VIB, {}, 1e-3), (BinaryVCL, {}, 3e-2), (DDPM, {}, 1e-3),
])
def test_shared_arguments_reach_vimodule_and_survive_a_checkpoint(cls, kw, lr, tmp_path):
    """Defaults as before the conversion (BinaryVCL keeps its own lr); given values reach VIModule and are
    saved, so ``load_from_checkpoint`` rebuilds them."""
    assert cls(**kw)._lr == pytest.approx(lr)
    m = cls(**kw, lr=0.02, check_finite=False, plugins=["gradient_clipping"])
    assert m._lr == 0.02 and m.check_finite is False and [p.name for p in m.plugins] == ["gradient_clipping"]
    assert {"lr", "check_finite", "plugins"} <= set(m.hparams)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": "2.6.6"}, path)
    r = cls.load_from_checkpoint(path)
    assert r._lr == 0.02 and r.check_finite is False and [p.name for p in r.plugins] == ["gradient_clipping"]


@pytest.mark.parametrize("cls", [BNN, SSVI, BinaryVCL, VIB, DDPM, RecurrentVAE])
def test_cli_signature_lists_every_shared_argument_once(cls):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, "model")
    dests = [a.dest for a in parser._actions if a.dest.startswith("model.")]
    for name in SHARED:
        assert dests.count(f"model.{name}") == 1, (name, dests)
    assert parser.get_defaults().model.lr == (3e-2 if cls is BinaryVCL else 1e-3)
