"""Small helpers for tests: a quiet CPU trainer and a subprocess runner for `lvi`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L

ROOT = Path(__file__).resolve().parents[1]


def quiet_trainer(tmp_path: Path | str | None = None, max_epochs: int = 1, **kw: Any) -> L.Trainer:
    """A CPU trainer without progress bar, logger or checkpoints unless asked for."""
    defaults: dict[str, Any] = dict(
        accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path) if tmp_path else None,
    )
    defaults.update(kw)
    return L.Trainer(**defaults)


def run_lvi(*args: str, cwd: Path | str = ROOT, timeout: int = 600, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m lightning_vi.cli ARGS`` in a subprocess (isolates DDP and global state)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "lightning_vi.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lvi {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


class DictDataset:
    """Examples as ``{"x": x[i], "y": y[i]}`` (a map-style dataset for plain DataLoaders in DDP test scripts)."""

    def __init__(self, x: Any, y: Any) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i]}


def run_ddp_script(script: Path, tmp_path: Path, devices: int = 2) -> dict[str, Any]:
    """Run a test script as ``script DEVICES OUT.json`` in its own process (DDP launches are isolated from
    pytest, NOTES.md) and return the JSON its rank 0 wrote; a failed run fails with its stderr."""
    import json

    out = Path(tmp_path) / "ddp.json"
    path = os.pathsep.join([str(ROOT), str(Path(__file__).parent), str(script.parent), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(devices), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())

