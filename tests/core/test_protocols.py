"""Declared capabilities (lightning_vi.core.protocols): a family that has one passes, a module lacking it fails
with a message naming the consumer, the family and the missing member; every callback and plugin checks at
setup/attach instead of silently doing nothing; every config's callbacks pass their checks."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch import nn

from helpers import ROOT, quiet_trainer
from lightning_vi.callbacks import LatentTraversal, Reconstructions, SampleGrid, TaskSequence
from lightning_vi.callbacks.diagnostics import LatentDiagnostics
from lightning_vi.callbacks.reliability import ReliabilityDiagram
from lightning_vi.callbacks.sequence import ForecastPlot, KoopmanEigenPlot, SamplePathsPlot, VideoReconstructions
from lightning_vi.core.module import VIModule
from lightning_vi.core.protocols import (Classifies, Consolidates, Decodes, Forecasts, HasClasses, HasEigenvalues,
                                         HasHead, HasLatentDim, HasLatents, HasTermWeights, RegressesErrors,
                                         Samples, SamplesPaths, missing_members, require_capability)


class Bare(L.LightningModule):
    """A LightningModule with none of the capabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class WrongTypes(Bare):
    """Has the names, with the wrong types or call shapes."""

    latent_dim = None
    num_classes = True  # a bool is not an int
    head = "linear"
    term_weights = [1.0]

    def encode(self, x, t, mask):  # needs more than x (kvae-style)
        return x, x

    def sample(self, n):  # no generator keyword
        return torch.zeros(n, 1, 2, 2)


class NoSampleVIModule(VIModule):
    """Inherits VIModule.sample, the placeholder that only raises."""

    def objective(self, batch):
        return {"loss_term": self.w.sum()}

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))


def _family(name: str):
    from lightning_vi.families.bayes import BNN, BinaryVCL
    from lightning_vi.families.classifier import Classifier
    from lightning_vi.families.sequence import FBMSDE, PVRNN, KoopmanVAE
    from lightning_vi.families.vae import VAE

    return {"vae": VAE, "classifier": Classifier, "bnn": BNN, "binary_vcl": BinaryVCL, "kvae": KoopmanVAE,
            "pvrnn": PVRNN, "fbm_sde": FBMSDE}[name]()


# protocol, a family that has it, the member a Bare module lacks (in the message)
CASES = [
    (HasLatents, "vae", "encode(x)"),
    (Decodes, "vae", "decode(z)"),
    (HasLatentDim, "vae", "`latent_dim`"),
    (Samples, "vae", "sample(n, generator=...)"),
    (Classifies, "classifier", "predict_proba(x)"),
    (Classifies, "bnn", "predict_proba(x)"),
    (HasClasses, "classifier", "`num_classes`"),
    (HasHead, "classifier", "`head`"),
    (HasTermWeights, "vae", "`term_weights`"),
    (Forecasts, "kvae", "forecast(batch, horizon, n_samples)"),
    (RegressesErrors, "pvrnn", "error_regression(x, horizon)"),
    (HasEigenvalues, "kvae", "eigenvalues(batch)"),
    (SamplesPaths, "fbm_sde", "sample_paths(n, t, generator)"),
    (Consolidates, "binary_vcl", "consolidate()"),
]


@pytest.mark.parametrize("protocol, family, member", CASES, ids=[f"{c[0].__name__}-{c[1]}" for c in CASES])
def test_family_with_the_capability_passes_and_bare_module_fails(protocol, family, member):
    module = _family(family)
    assert missing_members(module, protocol) == []
    assert isinstance(module, protocol)
    require_capability(module, protocol, "Consumer")  # no error
    with pytest.raises(TypeError) as err:
        require_capability(Bare(), protocol, "Consumer")
    msg = str(err.value)
    assert msg.startswith(f"Consumer needs a family that {protocol.__doc__.splitlines()[0]}: Bare lacks ")
    assert member in msg, msg


@pytest.mark.parametrize("protocol, why", [
    (HasLatentDim, "`latent_dim` of type int (it is None)"),
    (HasClasses, "`num_classes` of type int (it is True)"),
    (HasHead, "`head` of type Module (it is 'linear')"),
    (HasTermWeights, "`term_weights` of type dict (it is [1.0])"),
    (HasLatents, "WrongTypes.encode(x, t, mask) cannot be called that way"),
    (Samples, "WrongTypes.sample(n) cannot be called that way"),
])
def test_present_but_wrong_members_are_named(protocol, why):
    assert isinstance(WrongTypes(), protocol)  # isinstance alone only sees the names
    with pytest.raises(TypeError, match="WrongTypes lacks") as err:
        require_capability(WrongTypes(), protocol, "Consumer")
    assert why in str(err.value), str(err.value)


def test_base_class_placeholder_does_not_count_as_sampling():
    m = NoSampleVIModule()
    assert hasattr(m, "sample")
    with pytest.raises(TypeError) as err:
        require_capability(m, Samples, "SampleGrid")
    assert str(err.value).endswith("NoSampleVIModule lacks a method sample(n, generator=...)"), str(err.value)


def test_alternatives_accept_either_and_name_both():
    require_capability(_family("pvrnn"), (Forecasts, RegressesErrors), "ForecastPlot")
    require_capability(_family("kvae"), (Forecasts, RegressesErrors), "ForecastPlot")
    with pytest.raises(TypeError, match=r"ForecastPlot needs a family that forecasts .*, or one that predicts by "
                                        r"error regression, .*: Bare lacks a method forecast\(.*\); or a method error_regression"):
        require_capability(Bare(), (Forecasts, RegressesErrors), "ForecastPlot")


# every callback with a capability check: instance, a family it serves, what the message names for Bare
CALLBACKS = [
    (SampleGrid(), "vae", "SampleGrid needs a family that draws samples", "sample(n, generator=...)"),
    (LatentTraversal(), "vae", "LatentTraversal needs a family that encodes", "encode(x)"),
    (LatentDiagnostics(), "vae", "LatentDiagnostics", "encode(x)"),
    (ReliabilityDiagram(), "bnn", "ReliabilityDiagram needs a family that predicts class probabilities",
     "predict_proba(x)"),
    (ForecastPlot(), "kvae", "ForecastPlot", "forecast(batch, horizon, n_samples)"),
    (ForecastPlot(), "pvrnn", "ForecastPlot", "error_regression(x, horizon)"),
    (KoopmanEigenPlot(), "kvae", "KoopmanEigenPlot", "eigenvalues(batch)"),
    (SamplePathsPlot(), "fbm_sde", "SamplePathsPlot", "sample_paths(n, t, generator)"),
    (TaskSequence(1), "binary_vcl", "TaskSequence(consolidate=True)", "consolidate()"),
]


@pytest.mark.parametrize("callback, family, user, member", CALLBACKS,
                         ids=[f"{type(c[0]).__name__}-{c[1]}" for c in CALLBACKS])
def test_callbacks_check_their_capability_at_setup(callback, family, user, member):
    callback.setup(None, _family(family), "fit")  # serves this family
    with pytest.raises(TypeError) as err:
        callback.setup(None, Bare(), "fit")
    msg = str(err.value)
    assert msg.startswith(user) and "Bare lacks" in msg and member in msg, msg


def test_latent_traversal_also_needs_decode():
    class EncodeOnly(Bare):
        def encode(self, x):
            return x, x

    with pytest.raises(TypeError, match=r"LatentTraversal needs a family that decodes .*: EncodeOnly lacks a method "
                                        r"decode\(z\)"):
        LatentTraversal().setup(None, EncodeOnly(), "fit")


def test_task_sequence_without_consolidation_serves_any_family():
    """consolidate=False needs no Consolidates capability; the default (True) does, on the same family."""
    TaskSequence(1, consolidate=False).setup(None, Bare(), "fit")  # no error
    with pytest.raises(TypeError, match="TaskSequence.*Bare lacks"):
        TaskSequence(1).setup(None, Bare(), "fit")


@pytest.mark.parametrize("callback", [SampleGrid(), LatentTraversal(), ForecastPlot()],
                         ids=lambda c: type(c).__name__)
def test_trainer_fit_fails_at_setup_before_any_step(tmp_path, callback):
    """Through Lightning: the family lacks the capability, fit stops before the first step, not silently later."""
    module = Bare()
    data = torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2)
    with pytest.raises(TypeError, match=f"{type(callback).__name__}.*Bare lacks"):
        quiet_trainer(tmp_path, callbacks=[callback]).fit(module, data)
    assert float(module.w.detach()) == 0.0  # no optimizer step ran


def test_image_callbacks_fail_on_non_image_data():
    class Toy(Bare):
        input_shape = (2,)

        def sample(self, n, generator=None):
            return torch.zeros(n, 2)

    trainer = type("T", (), {"sanity_checking": False, "is_global_zero": True, "current_epoch": 0})()
    with pytest.raises(ValueError, match=r"SampleGrid logs image grids, but samples of Toy have shape \(64, 2\)"):
        SampleGrid().on_validation_epoch_end(trainer, Toy())


def test_reconstructions_and_video_reconstructions_check_shapes(tmp_path):
    class Squash(Bare):
        def forward(self, x):
            return x.flatten(1)

    images = {"x": torch.zeros(4, 1, 4, 4)}
    trainer = type("T", (), {"sanity_checking": False, "is_global_zero": True, "current_epoch": 0,
                             "datamodule": type("D", (), {"splits": {"val": images}})()})()
    with pytest.raises(TypeError, match=r"Reconstructions needs Squash\(x\) to return a reconstruction of x's shape "
                                        r"\(4, 1, 4, 4\); got \(4, 16\)"):
        Reconstructions().on_validation_epoch_end(trainer, Squash())
    with pytest.raises(TypeError, match=r"VideoReconstructions needs videos x \[B, C, T, H, W\]"):
        VideoReconstructions().on_validation_epoch_end(trainer, Squash())


# plugins: the family that serves it, and the member the message names for a family that does not
PLUGIN_CASES = [
    ("mixup", "classifier", "vae", "`num_classes`"),
    ("cutmix", "classifier", "vae", "`num_classes`"),
    ("multisample_dropout", "classifier", "vae", "`head`"),
    ("vf_alignment", "vae", "classifier", "`latent_dim`"),
]


@pytest.mark.parametrize("plugin, good, bad, member", PLUGIN_CASES, ids=[c[0] for c in PLUGIN_CASES])
def test_plugins_check_their_capability_at_attach(plugin, good, bad, member):
    from lightning_vi.registry import PLUGINS

    PLUGINS.get(plugin)().attach(_family(good))
    family = type(_family(bad)).__name__
    with pytest.raises(TypeError, match=f"plugin '{plugin}'.* needs a family that .*: {family} lacks .*{member}"):
        PLUGINS.get(plugin)().attach(_family(bad))


def test_label_mixing_needs_a_classifier_not_just_num_classes():
    """A class-conditional DDPM declares num_classes but does not train on y_soft: mixup refuses it."""
    from lightning_vi.registry import PLUGINS

    class Conditional(Bare):
        num_classes = 10

    with pytest.raises(TypeError, match=r"plugin 'mixup'.*predicts class probabilities.*Conditional lacks a method "
                                        r"predict_proba\(x\)"):
        PLUGINS.get("mixup")().attach(Conditional())


def test_term_weight_plugins_need_term_weights():
    from lightning_vi.registry import PLUGINS

    for name in ("kl_schedule", "gradient_dropout"):
        with pytest.raises(TypeError, match=f"plugin '{name}' needs a family that weights its loss terms .*: "
                                            "Bare lacks the attribute `term_weights`"):
            PLUGINS.get(name)().attach(Bare())


# -- every config: its lightning_vi callbacks pass their checks on the model the config builds -----------------
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def _callback_paths(path: Path) -> list[str]:
    cfg = yaml.safe_load(path.read_text()) or {}
    cbs = (cfg.get("trainer") or {}).get("callbacks") or []
    return [c["class_path"] for c in cbs if isinstance(c, dict) and "class_path" in c]


def _checks_at_setup(cls: type) -> bool:
    import inspect

    return "setup" in dir(cls) and "require_capability" in inspect.getsource(cls)


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_every_config_passes_its_callbacks_capability_checks(path, tmp_path, monkeypatch):
    """Builds the config's model and callbacks (no training) and runs each checking callback's setup."""
    from lightning_vi.core.module import import_object

    checking = [import_object(p) for p in _callback_paths(path) if p.startswith("lightning_vi.")]
    checking = [cls for cls in checking if _checks_at_setup(cls)]
    if not checking:
        return  # no capability to check
    if "# requires:" in path.read_text():
        # a chained config's model loads its producer's checkpoint: tests/test_configs.py fits it after a short
        # producer run (test_config_runs_after_its_producer), and fitting runs every callback's setup check
        pytest.skip("chained config: its callbacks' checks run in test_config_runs_after_its_producer")
    from lightning_vi.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--config", str(path), "--trainer.logger", "false"], run=False)
    found = [c for c in cli.trainer.callbacks if type(c) in checking]
    assert len(found) == len(checking), (checking, [type(c).__name__ for c in cli.trainer.callbacks])
    for cb in found:
        cb.setup(cli.trainer, cli.model, "fit")
