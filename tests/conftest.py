"""Shared test settings: offline W&B, quiet Lightning, a small trainer factory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_CODE", "true")

ROOT = Path(__file__).resolve().parents[1]

# Tiny models train many times faster single-threaded on a shared 2-core machine (no oversubscription).
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _quiet_lightning(caplog):
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield


@pytest.fixture
def repo_root() -> Path:
    return ROOT
