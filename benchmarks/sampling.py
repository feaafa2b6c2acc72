"""Sampling speed vs quality: DDPM-1000 vs DDIM-50 vs flow-matching Euler-50 on the same MLP.

Trains a DDPM and a flow-matching model (identical MLP architecture) on 2D moons, then measures
samples/s of each sampler and the Sinkhorn distance of its samples to held-out data.
Writes benchmarks/results/sampling.json.   python benchmarks/sampling.py [--steps 800]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch

from lightning_vi.data.toys import sample_toy
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.flow_matching import FlowMatching
from lightning_vi.metrics.sample_distances import sinkhorn_distance


def train(model, data, steps, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        loss = sum(v * model.term_weights[k] for k, v in model.objective({"x": data}).items() if k in model.term_weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sampling.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    L.seed_everything(0)
    data = sample_toy("moons", args.n, torch.Generator().manual_seed(0))
    test = sample_toy("moons", args.n, torch.Generator().manual_seed(1))
    ddpm = train(DDPM(hidden=128, ema_decay=0.0), data, args.steps)
    L.seed_everything(0)
    fm = train(FlowMatching(hidden=128), data, args.steps)
    runs = {
        "ddpm_1000": lambda: ddpm.sample(args.n, torch.Generator().manual_seed(0), sampler="ddpm", steps=1000),
        "ddim_50": lambda: ddpm.sample(args.n, torch.Generator().manual_seed(0), sampler="ddim", steps=50),
        "fm_euler_50": lambda: fm.sample(args.n, torch.Generator().manual_seed(0), steps=50, solver="euler"),
    }
    results = {"n_samples": args.n, "train_steps": args.steps, "quality": "sinkhorn distance to held-out moons (lower is better)",
               "noise_sinkhorn": float(sinkhorn_distance(torch.randn(args.n, 2), test)), "samplers": {}}
    for name, fn in runs.items():
        t0 = time.perf_counter()
        s = fn()
        dt = time.perf_counter() - t0
        results["samplers"][name] = {"seconds": dt, "samples_per_s": args.n / dt, "sinkhorn": float(sinkhorn_distance(s, test))}
    sp = results["samplers"]
    results["ddim50_speedup_over_ddpm1000"] = sp["ddim_50"]["samples_per_s"] / sp["ddpm_1000"]["samples_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
