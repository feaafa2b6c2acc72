"""Notebook run times: each notebook in notebooks/ executed top to bottom in this environment's kernel
(as tests/test_notebooks.py does): wall-clock and the kernel process's CPU time (user + system, which
other processes' load does not inflate), per notebook and per code cell, against the test's time limit.

Writes JSON (default benchmarks/results/notebooks.json).   python benchmarks/notebooks.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]


def _kernel_cpu(client) -> Callable[[], float | None]:
    """A function returning the kernel process's CPU seconds so far (None when psutil is missing)."""
    try:
        import psutil
    except ImportError:
        return lambda: None
    proc = psutil.Process(client.km.provisioner.pid)

    def cpu() -> float:
        t = proc.cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    return cpu


def run_notebook(path: Path, timeout: int) -> dict:
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": tmp}})
        cells: list[dict] = []
        start = time.perf_counter()
        with client.setup_kernel():
            kernel_s = time.perf_counter() - start
            cpu = _kernel_cpu(client)
            cpu_start = cpu()
            for i, cell in enumerate(nb.cells):
                t0, c0 = time.perf_counter(), cpu()
                client.execute_cell(cell, i)
                if cell.cell_type == "code":
                    c1 = cpu()
                    cells.append({"index": i, "wall_s": round(time.perf_counter() - t0, 2),
                                  "cpu_s": None if c1 is None else round(c1 - c0, 2)})
            cpu_total = cpu()
        total = time.perf_counter() - start
    slowest = max(cells, key=lambda c: c["wall_s"], default={"wall_s": 0.0, "cpu_s": None, "index": None})
    return {"total_s": round(total, 2), "kernel_start_s": round(kernel_s, 2),
            "cpu_s": None if cpu_total is None else round(cpu_total - cpu_start, 2),
            "slowest_cell_s": slowest["wall_s"], "slowest_cell_cpu_s": slowest["cpu_s"],
            "slowest_cell_index": slowest["index"], "code_cells": len(cells), "cells": cells}


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.test_notebooks import CELL_TIMEOUT_S, NOTEBOOK_TIMEOUT_S

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None, help="notebook stems (default: all)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "notebooks.json"))
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    paths = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if args.only is None or p.stem in args.only]
    if not paths:
        raise SystemExit(f"--only {args.only} matches no notebook; allowed: "
                         f"{[p.stem for p in sorted((ROOT / 'notebooks').glob('*.ipynb'))]}")
    load_before = os.getloadavg()[0]
    runs = {p.stem: run_notebook(p, CELL_TIMEOUT_S) for p in paths}
    result = {
        "benchmark": "notebooks", "notebooks": runs,
        "test_limit_s": {"notebook": NOTEBOOK_TIMEOUT_S, "cell": CELL_TIMEOUT_S},
        "max_fraction_of_limit": round(max(r["total_s"] for r in runs.values()) / NOTEBOOK_TIMEOUT_S, 3),
        "cpu_count": os.cpu_count(), "load_avg_1m_before": round(load_before, 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
