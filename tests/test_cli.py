"""The `lvi` command end to end: listings, the quickstart with W&B offline, print_config, resume,
bf16-mixed, DDP on two CPU processes, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from helpers import ROOT, run_lvi
from lightning_vi.cli import build_cli, main

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]


def test_listings_print_one_line_per_name(capsys):
    main(["families"])
    out = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("vae ") and "VAE" in line for line in out)
    main(["plugins"])  # every line is "name  description  [class]"
    assert all(len(line.split()) >= 2 for line in capsys.readouterr().out.strip().splitlines())


def test_quickstart_logs_terms_media_and_config_to_wandb(tmp_path, monkeypatch):
    import wandb

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", QUICKSTART, "--trainer.max_epochs", "10", *TINY])
    run = cli.trainer.logger.experiment
    try:
        for key in ("val/elbo", "val/recon", "val/kl", "train/loss_epoch", "train/kl"):
            assert key in run.summary.keys(), (key, list(run.summary.keys()))
        assert run.config["config"]["model"]["init_args"]["latent_dim"] == 8
        assert cli.model.input_shape == (1, 16, 16)  # ${data.init_args.image_size} interpolation
        media = sorted(p.name for p in Path(run.dir).rglob("*.png"))
        for stem in ("samples", "reconstructions", "traversal"):
            assert any(m.startswith(stem) for m in media), media
        run_dir = Path(run.dir).resolve().parent  # limit_*_batches: a smoke run, under outputs/<name>/smoke/
        assert run_dir.name.startswith("offline-run-") and run_dir.parent == tmp_path / "outputs/quickstart/smoke/wandb"
    finally:
        wandb.finish()
    assert (tmp_path / "outputs/quickstart/smoke/checkpoints/config.yaml").is_file()
    assert (tmp_path / "outputs/quickstart/smoke/checkpoints/last.ckpt").is_file()
    assert not (tmp_path / "outputs/quickstart/checkpoints").exists()


def test_print_config_is_rerunnable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        build_cli(["fit", "--config", QUICKSTART, "--model.init_args.latent_dim", "5", "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    cfg = yaml.safe_load(printed)
    assert cfg["model"]["class_path"] == "lightning_vi.families.vae.vae.VAE"
    assert cfg["model"]["init_args"]["input_shape"] == [1, 16, 16]  # interpolated from data.image_size
    assert cfg["model"]["init_args"]["latent_dim"] == 5
    (tmp_path / "full.yaml").write_text(printed)
    cli = build_cli(["fit", "--config", str(tmp_path / "full.yaml"), "--trainer.fast_dev_run", "true"])
    assert cli.trainer.state.finished and cli.model.latent_dim == 5


def test_resume_from_checkpoint_continues_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--config", QUICKSTART, "--trainer.logger", "false", *TINY]
    first = build_cli(["fit", *common, "--trainer.max_epochs", "1"])
    assert first.trainer.global_step == 2
    last = tmp_path / "outputs/quickstart/smoke/checkpoints/last.ckpt"  # TINY makes it a smoke run
    second = build_cli(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    assert second.trainer.global_step == 4 and second.trainer.current_epoch == 2
    # the resumed optimizer state is the saved one, not a fresh one
    saved = torch.load(last, weights_only=True)["optimizer_states"][0]["state"]
    assert len(saved) > 0


def test_bf16_mixed_precision_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", QUICKSTART, "--trainer.logger", "false", "--trainer.max_epochs", "1",
                     "--trainer.precision", "bf16-mixed", *TINY])
    assert cli.trainer.precision == "bf16-mixed"
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_ddp_on_two_cpu_processes(tmp_path):
    proc = run_lvi("fit", "--config", QUICKSTART, "--trainer.logger", "false", "--trainer.accelerator", "cpu",
                   "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1", *TINY,
                   cwd=tmp_path)
    assert (tmp_path / "outputs/quickstart/smoke/checkpoints/last.ckpt").is_file(), proc.stderr[-2000:]
    ckpt = torch.load(tmp_path / "outputs/quickstart/smoke/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2


def test_compressed_ddp_strategy_by_name_through_lvi(tmp_path):
    """`--trainer.strategy ddp_topk` (registered on import of lightning_vi) on 2 CPU processes: the run trains
    and the bytes it logs are at least 50x below the dense gradient's (1% Top-k: values + indices)."""
    import csv

    logger = "{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: logs, name: run}}"
    proc = run_lvi("fit", "--config", str(ROOT / "configs/classifier/digits.yaml"), "--trainer.logger", logger,
                   "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp_topk",
                   "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
                   "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "logs/run/version_0/metrics.csv").open()))
    sent = [float(r["train/comm_bytes"]) for r in rows if r.get("train/comm_bytes")]
    dense = [float(r["train/comm_bytes_dense"]) for r in rows if r.get("train/comm_bytes_dense")]
    assert sent and dense and max(sent) * 50 <= min(dense), (sent[:3], dense[:3])


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


def _error(capsys, args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code not in (0, None)
    return capsys.readouterr().err


def test_unknown_family_lists_known_names(tmp_path, capsys):
    err = _error(capsys, ["fit", "--config", _write(tmp_path, "model:\n  class_path: vea\n")])
    assert "Unknown family 'vea'" in err and "Did you mean 'vae'" in err and "Known families: " in err


def test_unknown_plugin_lists_known_names(tmp_path, capsys):
    cfg = "model:\n  class_path: vae\n  init_args:\n    plugins: [no_such_plugin]\n"
    err = _error(capsys, ["fit", "--config", _write(tmp_path, cfg)])
    assert "Unknown plugin 'no_such_plugin'" in err and "Known plugins" in err


def test_config_key_typo_names_the_key(tmp_path, capsys):
    cfg = "model:\n  class_path: vae\n  init_args:\n    latent_dm: 8\n"
    err = _error(capsys, ["fit", "--config", _write(tmp_path, cfg)])
    assert "latent_dm" in err


def test_malformed_yaml_is_reported(tmp_path, capsys):
    err = _error(capsys, ["fit", "--config", _write(tmp_path, "model: [unclosed\n  x: : :\n")])
    assert "not valid YAML" in err and "bad.yaml" in err


def test_missing_config_file(capsys):
    err = _error(capsys, ["fit", "--config", "does/not/exist.yaml"])
    assert "does/not/exist.yaml" in err


def test_missing_data_file_names_the_path(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--trainer.logger", "false",
                          "--data", "lightning_vi.data.NpzDataModule", "--data.init_args.path", "nothere.npz"])
    assert "nothere.npz" in err and "does not exist" in err


def test_shape_mismatch_from_config(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--trainer.logger", "false",
                          "--model.init_args.input_shape", "[1, 32, 32]"])
    assert "input_shape=[1, 32, 32]" in err and ", 1, 16, 16)" in err and "Set model.init_args.input_shape" in err


def test_scheduler_from_yaml_and_predict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sched = "{class_path: torch.optim.lr_scheduler.StepLR, init_args: {step_size: 1, gamma: 0.5}}"
    cli = build_cli(["fit", "--config", QUICKSTART, "--trainer.logger", "false", "--trainer.max_epochs", "2",
                     "--model.init_args.lr_scheduler", sched, *TINY])
    opt = cli.trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.002 * 0.25)
    last = tmp_path / "outputs/quickstart/smoke/checkpoints/last.ckpt"
    pred = build_cli(["predict", "--config", QUICKSTART, "--trainer.logger", "false", "--ckpt_path", str(last),
                      "--trainer.limit_predict_batches", "1"])
    out = pred.trainer.predict_loop.predictions
    assert out[0].shape[1:] == (1, 16, 16) and 0 <= float(out[0].min()) and float(out[0].max()) <= 1


def test_short_names_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for model, data in (("vae", "DigitsDataModule"), ("VAE", "lightning_vi.data.DigitsDataModule")):
        cli = build_cli(["fit", "--model", model, "--data", data, "--trainer.fast_dev_run", "true",
                         "--trainer.logger", "false"])
        assert type(cli.model).__name__ == "VAE" and cli.trainer.state.finished


def test_bad_model_value_shows_the_family_message_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _error(capsys, ["fit", "--config", QUICKSTART, "--trainer.logger", "false",
                          "--model.init_args.latent_dim", "0"])
    assert "latent_dim=0 is out of range" in err and "Union subtypes" not in err and "NoneType" not in err
