"""Every config in configs/ parses and runs one training + validation batch as it is (fast_dev_run).

Runs in-process (importing Lightning once) from a temporary working directory. Configs that need an
artifact made by another config's run (a trained VAE or DDPM checkpoint) name it on their first line,
``# requires: `lvi fit --config <producer>` ...``; they run after a short run of the producer, so the
documented chain (producer writes ``outputs/<name>/checkpoints/last.ckpt``, the consumer's default path)
is checked as a user would run it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ROOT

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "# requires:" not in p.read_text())
CHAINED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "# requires:" in p.read_text())
PRODUCER = re.compile(r"^# requires: `lvi fit --config (\S+)`")


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_runs(path: Path, tmp_path: Path, monkeypatch) -> None:
    from lightning_vi.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", str(path), "--trainer.fast_dev_run", "true",
                     "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.state.finished, f"{path} did not finish: {cli.trainer.state}"
    logged = cli.trainer.callback_metrics
    assert "train/loss" in logged and bool(logged["train/loss"].isfinite()), sorted(logged)


@pytest.mark.parametrize("path", CHAINED, ids=[str(p.relative_to(ROOT / "configs")) for p in CHAINED])
def test_config_runs_after_its_producer(path: Path, tmp_path: Path, monkeypatch) -> None:
    from lightning_vi.cli import build_cli

    text = path.read_text()
    match = PRODUCER.match(text)
    assert match, f"{path}: the first line must be  # requires: `lvi fit --config <producer config>` ..."
    monkeypatch.chdir(tmp_path)
    build_cli(["fit", "--config", str(ROOT / match.group(1)), "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
               "--smoke", "false"])  # a short producer run whose last.ckpt the consumer reads
    if "lvi predict --config" in text:
        cli = build_cli(["predict", "--config", str(path), "--trainer.limit_predict_batches", "1"])
        assert cli.trainer.state.finished and list(tmp_path.glob("outputs/*/predictions*.npz"))
    else:
        cli = build_cli(["fit", "--config", str(path), "--trainer.fast_dev_run", "true", "--trainer.logger", "false"])
        assert cli.trainer.state.finished
        assert bool(cli.trainer.callback_metrics["train/loss"].isfinite())


@pytest.mark.parametrize("path", CHAINED, ids=[str(p.relative_to(ROOT / "configs")) for p in CHAINED])
def test_missing_producer_error_names_the_chain_producer(path: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Without the producer's checkpoint, the error names the command of the first line (whose
    checkpoint test_config_runs_after_its_producer shows to fit), not another producer."""
    from lightning_vi.cli import main

    producer = PRODUCER.match(path.read_text()).group(1)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["predict" if "lvi predict --config" in path.read_text() else "fit", "--config", str(path),
              "--trainer.fast_dev_run", "true", "--trainer.logger", "false"])
    err = capsys.readouterr().err
    assert "does not exist" in err and f"make one with: lvi fit --config {producer}" in err, err
