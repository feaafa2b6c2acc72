"""Every notebook in notebooks/ runs top to bottom in the current environment's kernel.

The limits leave headroom for a loaded machine (a 120 s limit timed out on a busy 2-core box); how long
each notebook actually takes is measured by benchmarks/notebooks.py (results/notebooks.json), not here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 600  # whole notebook, kernel start included (pytest-timeout)
CELL_TIMEOUT_S = 600  # nbclient's per-cell limit; no cell may use more than the notebook's budget


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("PYTHONWARNINGS", "always::DeprecationWarning")  # shown even when raised inside the library
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    # the project's renamed arguments (beta, k, conv_channels, ema_decay) warn with this text (core/checks.py)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "is deprecated and will be removed" not in text, f"{path.name} uses a deprecated argument: {text[-2000:]}"


def _build_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_notebooks_build", ROOT / "notebooks" / "src" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_notebook_has_one_source() -> None:
    """notebooks/src/<name>.py is the source of notebooks/<name>.ipynb, one to one (notebooks/README.md)."""
    assert sorted(_build_module().sources()) == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_matches_its_source(path: Path) -> None:
    """The committed .ipynb is what ``python notebooks/src/build.py`` writes (no hand edits, no stale file)."""
    nbformat = pytest.importorskip("nbformat")
    built = _build_module().build(path.stem)
    committed = nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], \
        f"{path.name} differs from notebooks/src/{path.stem}.py; run python notebooks/src/build.py {path.stem}"
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code"), f"{path.name} has outputs"

