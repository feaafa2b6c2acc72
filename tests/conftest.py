"""Shared test settings: offline W&B, quiet Lightning, a small trainer factory."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_CODE", "true")

ROOT = Path(__file__).resolve().parents[1]

# Tiny models train many times faster single-threaded on a shared 2-core machine (no oversubscription).
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per core, at most 4 (every worker runs torch single-threaded,
    and the two-process DDP tests start two more processes each)."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Every test, and any module or session fixture it is the first to set up, starts from the same global random
    state (``random``, numpy, torch), whatever ran before it in this process: a test or fixture that draws without its
    own seed is still deterministic, and the result does not depend on test order or on which pytest-xdist worker
    runs which file."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _quiet_lightning(caplog):
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield


@pytest.fixture(autouse=True)
def _finish_wandb_run():
    """A test that fits through ``build_cli`` leaves its W&B run open (``lvi`` itself finishes it); finish it here so
    the next test's WandbLogger starts its own run instead of reusing this one (test order must not matter)."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@pytest.fixture
def repo_root() -> Path:
    return ROOT
