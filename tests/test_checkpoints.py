"""Checkpoints a user can trust (issue 20), each case run as a user runs it, through ``lvi``.

The quickstart config with full epochs of 3 batches (batch 512 of the 1437 training digits) and no
W&B logger; a CSV logger where a test needs the per-epoch val/loss as its independent record.
Facts checked: ``last.ckpt`` is the final epoch even when val/loss got worse (lr 1.0 makes it jump),
``best.ckpt`` the epoch of the lowest logged val/loss; a re-run replaces both (no ``last-v1``);
smoke runs (fast_dev_run, --trainer.limit_*) stay out of the real folder; a run killed with SIGKILL
resumes at the epoch after the last one it finished; wrong-family, wrong-shape and unreadable
checkpoints stop with a message and no traceback; the config record beside the checkpoints
survives a later ``lvi test``.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from helpers import ROOT, run_lvi
from lightning_vi.cli import main

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
FAST = ["--config", QUICKSTART, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--data.init_args.batch_size", "512"]
STEPS_PER_EPOCH = 3  # ceil(1437 / 512)
CKPTS = Path("outputs/quickstart/checkpoints")


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def _csv(save_dir: str) -> list[str]:
    return ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", save_dir]


def _val_loss_per_epoch(save_dir: Path) -> dict[int, float]:
    (metrics,) = save_dir.rglob("metrics.csv")
    with open(metrics) as f:
        return {int(r["epoch"]): float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")}


def _error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only=False" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One 1-epoch quickstart fit: its checkpoint folder (copied by the tests that change it)."""
    cwd, root = os.getcwd(), tmp_path_factory.mktemp("trained")
    os.chdir(root)
    try:
        main(["fit", *FAST, "--trainer.max_epochs", "1"])
    finally:
        os.chdir(cwd)
    return root / CKPTS


def test_last_is_the_final_epoch_and_best_the_lowest_val_loss(tmp_path, monkeypatch):
    """lr 1.0 (seed 0): val/loss jumps after epoch 0, so a last.ckpt tied to top-k saves stays at epoch 0."""
    monkeypatch.chdir(tmp_path)
    main(["fit", *FAST, *_csv("csv"), "--trainer.max_epochs", "3", "--model.init_args.optimizer.init_args.lr", "1.0"])
    val = _val_loss_per_epoch(tmp_path / "csv")
    assert sorted(val) == [0, 1, 2]
    best_epoch = min(val, key=val.get)
    assert best_epoch != 2, f"val/loss {val} did not get worse: the case is not exercised"
    last = _load(CKPTS / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 3 * STEPS_PER_EPOCH)
    assert _load(CKPTS / "best.ckpt")["epoch"] == best_epoch
    assert sorted(p.name for p in CKPTS.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]


def test_fit_twice_in_one_folder_replaces_last(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *FAST, "--trainer.max_epochs", "2"])
    main(["fit", *FAST, "--trainer.max_epochs", "1", "--seed_everything", "1"])
    last = _load(CKPTS / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, STEPS_PER_EPOCH)  # the second run's, not the first's
    assert sorted(p.name for p in CKPTS.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]  # no last-v1.ckpt
    assert "is from an earlier run; this run replaces it" in capsys.readouterr().err
    record = yaml.safe_load((CKPTS / "config.yaml").read_text())
    assert record["trainer"]["max_epochs"] == 1 and record["seed_everything"] == 1


def test_smoke_runs_stay_out_of_the_real_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", *FAST, "--trainer.fast_dev_run", "true"])
    main(["fit", *FAST, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"])
    assert not CKPTS.exists()
    err = capsys.readouterr().err
    assert "smoke run (fast_dev_run=True)" in err and "smoke run (limit_train_batches=2)" in err
    smoke = _load(Path("outputs/quickstart/smoke/checkpoints/last.ckpt"))
    assert smoke["global_step"] == 2
    main(["fit", *FAST, "--trainer.max_epochs", "1"])  # the real run after the smoke runs
    assert sorted(p.name for p in CKPTS.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert _load(CKPTS / "last.ckpt")["global_step"] == STEPS_PER_EPOCH


class KillAtEpoch(L.Callback):
    """Kill the process (SIGKILL, no cleanup) when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def test_killed_run_resumes_at_the_next_epoch(tmp_path, monkeypatch):
    """Killed (kill -9) as epoch 2 starts: last.ckpt is epoch 1 and the resumed run trains epochs 2-3."""
    config = yaml.safe_load(Path(QUICKSTART).read_text())
    config["trainer"]["callbacks"].append({"class_path": "test_checkpoints.KillAtEpoch", "init_args": {"epoch": 2}})
    (tmp_path / "kill.yaml").write_text(yaml.safe_dump(config))
    args = [a if a != QUICKSTART else str(tmp_path / "kill.yaml") for a in FAST]
    proc = run_lvi("fit", *args, "--trainer.max_epochs", "4", "--model.init_args.optimizer.init_args.lr", "1.0",
                   cwd=tmp_path, check=False, env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    last = tmp_path / CKPTS / "last.ckpt"
    assert (_load(last)["epoch"], _load(last)["global_step"]) == (1, 2 * STEPS_PER_EPOCH)
    monkeypatch.chdir(tmp_path)
    main(["fit", *FAST, *_csv("resumed"), "--trainer.max_epochs", "4", "--model.init_args.optimizer.init_args.lr",
          "1.0", "--ckpt_path", str(last)])
    assert sorted(_val_loss_per_epoch(tmp_path / "resumed")) == [2, 3]
    assert (_load(last)["epoch"], _load(last)["global_step"]) == (3, 4 * STEPS_PER_EPOCH)


def test_checkpoint_of_another_family_stops_before_running(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    last = str(trained / "last.ckpt")
    classifier = str(ROOT / "configs" / "classifier" / "digits.yaml")
    for sub in ("fit", "test"):
        err = _error(capsys, [sub, "--config", classifier, "--trainer.logger", "false", "--ckpt_path", last])
        assert "was written by family 'vae' (VAE), but the config builds family 'classifier' (Classifier)" in err
    assert not Path("outputs").exists()  # nothing ran


def test_checkpoint_with_other_network_shape_stops(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["fit", *FAST, "--model.init_args.latent_dim", "4", "--ckpt_path", str(trained / "last.ckpt")])
    assert "latent_dim: checkpoint 8, config 4" in err and "decoder.fc.weight: checkpoint [1024, 8], config [1024, 4]" in err
    assert not Path("outputs").exists()


def _bad_files(trained: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    good = (trained / "last.ckpt").read_bytes()
    files = {
        # fixed bytes: random ones start with a pickle PROTO opcode (0x80 0x02-0x05) now and then
        "garbage": (b"\x80\x7f" + random.Random(0).randbytes(4094), "is not a checkpoint: it is not a PyTorch file"),
        "truncated": (good[: len(good) // 2], "is truncated"),
        "empty": (b"", "is empty (0 bytes): not a checkpoint"),
    }
    out = {}
    for name, (data, words) in files.items():
        (folder / f"{name}.ckpt").write_bytes(data)
        out[name] = (folder / f"{name}.ckpt", words)
    torch.save({"weight": torch.zeros(2)}, folder / "state_dict.ckpt")
    out["state_dict"] = (folder / "state_dict.ckpt", "is not a Lightning checkpoint: it holds a bare state_dict")
    torch.save(torch.nn.Linear(2, 2), folder / "pickled.ckpt")
    out["pickled"] = (folder / "pickled.ckpt", "holds a pickled Python object (torch.nn.modules.linear.Linear)")
    return out


@pytest.mark.parametrize("sub", ["fit", "test"])
def test_unreadable_checkpoints_are_named_without_a_traceback(trained, tmp_path, monkeypatch, capsys, sub):
    monkeypatch.chdir(tmp_path)
    for name, (path, words) in _bad_files(trained, tmp_path).items():
        err = _error(capsys, [sub, *FAST, "--ckpt_path", str(path)])
        assert f"checkpoint {str(path)!r} {words}" in err, (name, err)
    assert not Path("outputs").exists()


def test_config_record_survives_a_later_test(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", *FAST, "--trainer.max_epochs", "1", "--model.init_args.latent_dim", "4"])
    record = CKPTS / "config.yaml"
    text = record.read_text()
    assert yaml.safe_load(text)["model"]["init_args"]["latent_dim"] == 4
    main(["test", "--config", str(record), "--trainer.logger", "false", "--ckpt_path", str(CKPTS / "last.ckpt")])
    main(["validate", *FAST, "--model.init_args.latent_dim", "4", "--ckpt_path", str(CKPTS / "last.ckpt")])
    assert record.read_text() == text
    assert _load(CKPTS / "last.ckpt")["lvi_config"] == text  # the checkpoint carries the same record


def test_only_command_line_limits_make_a_smoke_run():
    """A config file's own max_steps/limits are the experiment; the same given on the command line are a smoke test."""
    from lightning_vi.checkpoints import smoke_settings

    config = {"fast_dev_run": False, "max_steps": 1000, "limit_train_batches": 0.5}
    assert smoke_settings(config, ["fit", "--config", "x.yaml"]) == []
    assert smoke_settings(config, ["fit", "--trainer.max_steps=1000"]) == ["max_steps=1000"]
    assert smoke_settings({"limit_train_batches": 2.0}, ["--trainer.limit_train_batches", "2"]) == ["limit_train_batches=2"]
    # jsonargparse reads "1" as 1.0, which Lightning takes as the whole epoch: not a smoke run
    assert smoke_settings({"limit_train_batches": 1.0}, ["--trainer.limit_train_batches", "1"]) == []
    assert smoke_settings({"fast_dev_run": 3}, []) == ["fast_dev_run=3"]
