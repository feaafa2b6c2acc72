"""`lvi` as a user meets it when something is wrong (issue 20, points 5 and 7): a broken third-party
entry point is skipped with one warning naming its distribution; config typos, bad values and bad
trainer settings give one short line naming the key, the closest valid name and the accepted ones,
exit code 2, no usage dump and no traceback; help accepts registered names."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import ROOT, run_lvi
from lightning_vi.cli import main

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
RED_DIFF = str(ROOT / "configs" / "diffusion" / "red_diff_digits.yaml")


def _error(capsys, args: list[str]) -> str:
    """stderr of ``lvi ARGS`` that must fail with exit code 2, one short message and nothing raw."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and "Traceback" not in err and "Union subtypes" not in err, err
    assert err.count("lvi: error:") == 1, err
    return err


def _write(tmp_path: Path, text: str, name: str = "bad.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- 7. errors ---------------------------------------------------------------------------------
def test_config_key_typo_names_key_closest_and_accepted(tmp_path, capsys):
    err = _error(capsys, ["fit", "--config", _write(tmp_path, "model:\n  class_path: vae\n  init_args:\n    latnt_dim: 8\n")])
    assert "unknown key 'latnt_dim' in model.init_args (VAE); did you mean 'latent_dim'?" in err
    accepted = err.split("accepted: ", 1)[1].strip().split(", ")
    assert {"latent_dim", "beta", "architecture", "plugins", "lr"} <= set(accepted)  # VAE's and VIModule's
    # the same typo on the command line, and in the data module
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--model.init_args.latnt_dim", "3"])
    assert "unknown key 'latnt_dim' in model.init_args (VAE); did you mean 'latent_dim'?" in err
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--data.init_args.imag_size", "8"])
    assert "unknown key 'imag_size' in data.init_args (DigitsDataModule); did you mean 'image_size'?" in err
    assert "batch_size" in err.split("accepted: ", 1)[1]


def test_trainer_key_typo_in_config(tmp_path, capsys):
    err = _error(capsys, ["fit", "--config", _write(tmp_path, "trainer:\n  max_epoch: 3\nmodel:\n  class_path: vae\n")])
    assert "unknown key 'trainer.max_epoch'; did you mean 'trainer.max_epochs'?" in err
    assert "max_steps" in err.split("accepted in trainer: ", 1)[1]
    err = _error(capsys, ["fit", "--model", "vae", "--trainer.limit_trian_batches", "2"])  # on the command line
    assert "unknown option '--trainer.limit_trian_batches'; did you mean '--trainer.limit_train_batches'?" in err
    assert "--trainer.max_steps" in err.split("accepted in trainer: ", 1)[1] and "+" not in err


def test_value_of_wrong_type_names_key_and_expected_type(capsys):
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--model.init_args.latent_dim", "abc"])
    assert "model.init_args.latent_dim=abc is invalid: expected int" in err
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--trainer.precision", "17"])
    assert "trainer.precision=17 is invalid: expected one of 64, 32, 16, 'transformer-engine'" in err
    assert "'bf16-mixed'" in err and "Literal" not in err and "NoneType" not in err


def test_misspelled_plugin_argument_names_plugin_and_its_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = ("model:\n  class_path: classifier\n  init_args:\n    num_classes: 10\n"
           "    plugins:\n      - cutmix: {alpha: 1.0, prb: 0.5}\n"
           "data:\n  class_path: lightning_vi.data.DigitsDataModule\n")
    err = _error(capsys, ["fit", "--config", _write(tmp_path, cfg), "--trainer.logger", "false"])
    assert "plugin 'cutmix' (CutMix) got unknown argument 'prb'; did you mean 'prob'? accepted: alpha, prob" in err


def test_plugin_argument_error_in_python():
    from lightning_vi.plugins.cutmix import CutMix

    with pytest.raises(TypeError, match=r"plugin 'cutmix' \(CutMix\) got unknown argument 'prb'; did you mean 'prob'\? "
                                        r"accepted: alpha, prob"):
        CutMix(prb=0.5)
    with pytest.raises(TypeError, match=r"plugin 'cutmix' \(CutMix\): too many positional arguments; accepted: alpha, prob"):
        CutMix(1.0, 0.5, 3)


def test_bad_trainer_value_names_the_setting(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--trainer.logger", "false", "--trainer.max_epochs", "-5"])
    assert "trainer.max_epochs=-5 is invalid: `max_epochs` must be a non-negative integer or -1" in err
    assert not (tmp_path / "outputs").exists()  # stopped before anything ran


def test_traceback_on_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LVI_TRACEBACK", "1")
    with pytest.raises(ValueError, match="trainer.max_epochs=-5 is invalid"):
        main(["fit", "--config", QUICKSTART, "--trainer.logger", "false", "--trainer.max_epochs", "-5"])


def test_help_accepts_registered_names(capsys):
    for args in (["fit", "--model.help", "vae"], ["fit", "--model.help=vae"], ["fit", "--model.help", "VAE"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code in (0, None)
        out = capsys.readouterr().out
        assert "Help for --model.help=lightning_vi.families.vae" in out and "--model.latent_dim" in out
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--model", "vae", "--model.init_args.plugins.help", "cutmix"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "CutMix" in out and "--plugins.prob" in out and "--plugins.alpha" in out
    err = _error(capsys, ["fit", "--model.help", "vea"])
    assert "Unknown family 'vea'. Did you mean 'vae'?" in err and "Known families: " in err
    err = _error(capsys, ["fit", "--model", "vae", "--model.init_args.plugins.help", "cutmx"])
    assert "Unknown plugin 'cutmx'. Did you mean 'cutmix'?" in err


def test_top_level_help_mentions_listings(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "`lvi families`" in out and "`lvi plugins`" in out and "--model.help vae" in out
    err = _error(capsys, ["famlies"])
    assert "unknown command 'famlies'; did you mean 'families'?" in err and "plugins" in err


def test_fit_on_a_model_with_nothing_to_train_points_to_predict(tmp_path, capsys, monkeypatch):
    """RED-Diff is a sampler over a frozen prior: `lvi fit` stops and names `lvi predict` (an untrained
    DDPM prior is enough to reach the check)."""
    from lightning_vi.families.diffusion.ddpm import DDPM

    monkeypatch.chdir(tmp_path)
    prior = DDPM(input_shape=[1, 8, 8], hidden=16, depth=1)
    torch.save({"state_dict": prior.state_dict(), "hyper_parameters": dict(prior.hparams),
                "pytorch-lightning_version": L.__version__}, tmp_path / "prior.ckpt")
    err = _error(capsys, ["fit", "--config", RED_DIFF, "--model.init_args.prior_checkpoint", "prior.ckpt"])
    assert "red_diff has no trainable parameters" in err
    assert f"use `lvi predict --config {RED_DIFF} --model.init_args.prior_checkpoint prior.ckpt`" in err
    assert "empty parameter list" not in err and not (tmp_path / "outputs").exists()


# -- 5. broken third-party entry points --------------------------------------------------------
def _broken_distribution(root: Path) -> Path:
    """A hand-written installed distribution whose plugin and family entry points raise on import."""
    site = root / "site"
    info = site / "lvi_broken_pkg-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lvi-broken-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[lightning_vi.plugins]\nbroken_plugin = lvi_broken_mod:Plugin\n\n"
        "[lightning_vi.families]\nbroken_family = lvi_broken_mod:Family\n")
    (site / "lvi_broken_mod.py").write_text("raise ImportError('needs libbroken, which is not installed')\n")
    return site


def test_broken_entry_point_is_skipped_with_one_warning(tmp_path):
    site = _broken_distribution(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    for listing, name in (("plugins", "broken_plugin"), ("families", "broken_family")):
        proc = run_lvi(listing, env=env, cwd=tmp_path)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.count("from distribution 'lvi-broken-pkg'") == 1, proc.stderr  # one warning, naming it
        assert "needs libbroken" in proc.stderr
        broken = [ln for ln in proc.stdout.splitlines() if ln.startswith(name)]
        assert len(broken) == 1 and "BROKEN" in broken[0] and "'lvi-broken-pkg'" in broken[0], proc.stdout
        assert "ImportError: needs libbroken" in broken[0]
        assert ("cutmix" if listing == "plugins" else "vae ") in proc.stdout  # everything else still listed
    proc = run_lvi("fit", "--config", QUICKSTART, "--trainer.fast_dev_run", "true", "--trainer.logger", "false",
                   env=env, cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "lvi-broken-pkg" in proc.stderr  # run_lvi checked exit code 0
