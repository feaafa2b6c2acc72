"""Data generation speed: procedural sprites (SpritesDataModule.setup) at 32 and 64 pixels, 10,000 images.

Each size is generated ``--repeats`` times; process CPU time and wall time are reported (min and median;
background load only adds wall time). The target is seconds, not minutes (a 64x64 set of 10,000 took about
2 s on a free 2-core CPU). Writes JSON (default benchmarks/results/data_generation.json).

    python benchmarks/data_generation.py [--n 10000] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from lightning_vi.data.sprites import SpritesDataModule


def time_setup(n: int, size: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    dm = SpritesDataModule(n=n, image_size=size)
    dm.setup()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert dm.example_shape == (1, size, size), dm.example_shape
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target-s", type=float, default=20.0, help="seconds, not minutes")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_generation.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {}
    for size in args.sizes:
        times = [time_setup(args.n, size) for _ in range(args.repeats)]
        wall, cpu = [w for w, _ in times], [c for _, c in times]
        runs[f"sprites_{size}"] = {
            "wall_s": {"min": round(min(wall), 3), "median": round(statistics.median(wall), 3)},
            "cpu_s": {"min": round(min(cpu), 3), "median": round(statistics.median(cpu), 3)},
            "within_target": min(wall) < args.target_s,
        }
    result = {"benchmark": "data_generation", "n": args.n, "repeats": args.repeats, "target_s": args.target_s,
              "runs": runs, "torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2), "machine": platform.processor() or platform.machine()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
