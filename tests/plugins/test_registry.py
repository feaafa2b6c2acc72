"""Plugins by name, bad input at config time, deterministic order, and a pip-installed third-party plugin."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, run_lvi
from lightning_vi.families.classifier import Classifier
from lightning_vi.families.vae.vae import VAE
from lightning_vi.registry import PLUGINS

BUILTIN = ["nested_dropout", "multisample_dropout", "cutmix", "mixup", "gradient_clipping", "pixel_grad_clip",
           "gradient_dropout", "ordered_dropout", "dream_dropout", "kl_schedule", "vf_alignment"]


def test_every_plugin_registered_documented_and_has_a_config():
    names = PLUGINS.names()
    for n in BUILTIN:
        assert n in names
        doc = PLUGINS.get(n).__module__
        mod_doc = sys.modules[doc].__doc__
        assert "Defaults" in mod_doc and "20" in mod_doc  # paper (year), formula and defaults
        assert (ROOT / "configs" / "plugins" / f"{n}.yaml").is_file()


@pytest.mark.parametrize("spec,match", [
    ({"nested_dropout": {"rho": 1.5}}, r"rho=1.5 is out of range; allowed: \(0.0, 1.0\]"),
    ({"multisample_dropout": {"p": -0.1}}, r"p=-0.1 is out of range; allowed: \[0.0, 1.0\)"),
    ({"multisample_dropout": {"k": 0}}, r"k=0 is out of range; allowed: \[1, inf\)"),
    ({"cutmix": {"alpha": 0.0}}, r"alpha=0.0 is out of range; allowed: \(0.0, inf\)"),
    ({"mixup": {"alpha": -1}}, r"alpha=-1 is out of range"),
    ({"cutmix": {"prob": 2}}, r"prob=2 is out of range; allowed: \[0.0, 1.0\]"),
    ({"dream_dropout": {"p": 1.0}}, r"p=1.0 is out of range"),
    ({"gradient_dropout": {"lam": 1.5}}, r"lam=1.5 is out of range"),
    ({"gradient_clipping": {"threshold": 0}}, r"threshold=0 is out of range"),
    ({"gradient_clipping": {"algorithm": "foo"}}, r"algorithm='foo' is not allowed"),
    ({"pixel_grad_clip": {"threshold": -1}}, r"threshold=-1 is out of range"),
    ({"kl_schedule": {"free_bits": -0.5}}, r"free_bits=-0.5 is out of range"),
    ({"vf_alignment": {"m1": 2}}, r"m1=2 is out of range"),
    ({"ordered_dropout": {"rank": 0}}, r"rank=0 is out of range"),
    ({"ordered_dropout": {"layers": ["backbone.nope"]}}, r"layers='backbone.nope': Classifier has no layer.*available layers: backbone"),
    ({"nested_dropout": {"layer": "encoder"}}, r"layer='encoder': Classifier has no layer"),
    ({"dream_dropout": {"layers": ["head"]}}, r"layers='head' is a Linear, not an nn.Dropout"),
])
def test_bad_plugin_arguments_fail_when_the_model_is_built(spec, match):
    with pytest.raises(ValueError, match=match):
        Classifier(backbone="conv", channels=[8, 16], dropout=0.1, plugins=[spec])


def test_plugins_that_cannot_serve_a_family_fail_at_attach():
    with pytest.raises(TypeError, match="cutmix.*VAE.*num_classes"):
        VAE(plugins=["cutmix"])
    with pytest.raises(TypeError, match="multisample_dropout.*VAE.*head"):
        VAE(plugins=["multisample_dropout"])
    with pytest.raises(TypeError, match="dream_dropout.*no nn.Dropout"):
        VAE(plugins=["dream_dropout"])
    with pytest.raises(ValueError, match="reg_term='kl' is not a weighted term of Classifier"):
        Classifier(plugins=["gradient_dropout"])


def test_combined_plugins_run_in_documented_order():
    m = Classifier(backbone="mlp", dropout=0.1, plugins=[
        "gradient_clipping", "mixup", "cutmix", "multisample_dropout", {"ordered_dropout": {"layers": ["head"]}},
        "nested_dropout", {"pixel_grad_clip": {"target": "features"}}])
    assert [p.name for p in m.plugins] == ["ordered_dropout", "nested_dropout", "multisample_dropout", "mixup",
                                          "cutmix", "pixel_grad_clip", "gradient_clipping"]
    # multisample wraps the decomposed head: both structural changes compose
    assert type(m.head).__name__ == "MultiSampleHead" and type(m.head.head).__name__ == "LowRankLayer"
    loss, _ = m.compute_loss({"x": torch.rand(5, 1, 8, 8), "y": torch.arange(5)}, "train")
    loss.backward()


def test_third_party_plugin_via_entry_point(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "plugins" / "lvi-example-plugin", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    env = {"PYTHONPATH": os.pathsep.join([str(target), str(ROOT)])}
    listing = run_lvi("plugins", env=env).stdout
    assert "input_noise" in listing and "lvi_example_plugin" in listing
    config = tmp_path / "noise.yaml"
    config.write_text(
        "seed_everything: 0\n"
        "trainer: {accelerator: cpu, devices: 1, logger: false, enable_checkpointing: false}\n"
        "model:\n  class_path: classifier\n  init_args:\n    backbone: mlp\n"
        "    plugins:\n      - input_noise: {std: 0.2}\n"
        "data:\n  class_path: lightning_vi.data.DigitsDataModule\n  init_args: {batch_size: 64}\n")
    proc = run_lvi("fit", "--config", str(config), "--trainer.fast_dev_run", "true",
                   "--trainer.default_root_dir", str(tmp_path), cwd=tmp_path, env=env)
    assert "Traceback" not in proc.stderr
    assert "input_noise" not in PLUGINS.names()  # not installed in this process: entry point only
