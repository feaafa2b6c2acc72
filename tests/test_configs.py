"""Every config in configs/ parses and runs one training + validation batch as it is (fast_dev_run).

Runs in-process (importing Lightning once) from a temporary working directory. Configs that need an
artifact made by another run (e.g. a trained VAE checkpoint) say so in a comment ``# requires: <what>``;
their family's tests cover them instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import ROOT

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "# requires:" not in p.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_runs(path: Path, tmp_path: Path, monkeypatch) -> None:
    from lightning_vi.cli import build_cli

    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", str(path), "--trainer.fast_dev_run", "true",
                     "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.state.finished, f"{path} did not finish: {cli.trainer.state}"
    logged = cli.trainer.callback_metrics
    assert "train/loss" in logged and bool(logged["train/loss"].isfinite()), sorted(logged)
