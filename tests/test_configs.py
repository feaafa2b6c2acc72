"""Every config in configs/ parses and runs one training + validation batch as it is (fast_dev_run).

Configs that need an artifact made by another run (e.g. a trained VAE checkpoint) list it under a
top-level comment ``# requires: <path>``; they are checked by their family's tests instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import ROOT, run_lvi

CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "# requires:" not in p.read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_config_runs(path: Path, tmp_path: Path) -> None:
    proc = run_lvi("fit", "--config", str(path), "--trainer.fast_dev_run", "true",
                   "--trainer.default_root_dir", str(tmp_path), cwd=tmp_path)
    assert "Traceback" not in proc.stderr
