"""Training-step time with each plugin vs. without, on the conv classifier (and the conv VAE for the
plugins that need a KL term / latents). Writes ``benchmarks/results/plugins.json``.

    python benchmarks/plugins.py [--steps 20] [--rounds 3] [--batch-size 128] [--image-size 32]

Times are this process's CPU time per step by default (``--clock wall`` for wall-clock), single-threaded.
One step = plugin transforms + objective + extra terms + backward + gradient hooks + Adam step (the
work Lightning's training step does, without its logging overhead). Baseline and plugin runs are
interleaved step by step in ABBA order; the overhead is the median, over all adjacent pairs, of the
ratio plugin-step / baseline-step time (robust to a busy, shared machine). Targets (issue 3): cutmix, mixup, nested_dropout <= 3 %; multisample_dropout (K=8) <= 15 %.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from lightning_vi.families.classifier import Classifier
from lightning_vi.families.vae.vae import VAE

CLASSIFIER_PLUGINS: dict[str, list[Any]] = {
    "cutmix": ["cutmix"],
    "mixup": ["mixup"],
    "nested_dropout": ["nested_dropout"],
    "multisample_dropout": [{"multisample_dropout": {"k": 8}}],
    "gradient_clipping": ["gradient_clipping"],
    "gradient_clipping_agc": [{"gradient_clipping": {"algorithm": "agc", "threshold": 0.01}}],
    "pixel_grad_clip": [{"pixel_grad_clip": {"target": "features", "channel_dim": None}}],
    "ordered_dropout": [{"ordered_dropout": {"layers": ["backbone.fc", "head"]}}],
    "dream_dropout": [{"dream_dropout": {"p": 0.2}}],
}
VAE_PLUGINS: dict[str, list[Any]] = {
    "kl_schedule": [{"kl_schedule": {"free_bits": 0.1}}],
    "vf_alignment": ["vf_alignment"],
    "gradient_dropout": ["gradient_dropout"],
}
TARGETS = {"cutmix": 0.03, "mixup": 0.03, "nested_dropout": 0.03, "multisample_dropout": 0.15}


def build(kind: str, plugins: list[Any] | None, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "classifier":
        return Classifier(input_shape=[1, size, size], backbone="conv", channels=[32, 64], feature_dim=128,
                          dropout=0.2, plugins=plugins)
    return VAE(input_shape=[1, size, size], architecture="conv", channels=[32, 64], likelihood="bernoulli",
               plugins=plugins)


class Stepper:
    """One training step of ``model`` at a time (so baseline and plugin steps can be interleaved)."""

    def __init__(self, model: Any, batch: dict[str, torch.Tensor], clock: Any = time.process_time) -> None:
        self.model, self.batch, self.i, self.clock = model, batch, 0, clock
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        model.log = lambda *a, **k: None

    def __call__(self) -> float:
        model, batch, i = self.model, self.batch, self.i
        self.i += 1
        t0 = self.clock()
        for p in model.plugins:
            p.on_train_batch_start(_FakeTrainer(i), model, batch, i)
        self.opt.zero_grad(set_to_none=True)
        loss, _ = model.compute_loss(batch, "train")
        loss.backward()
        for p in model.plugins:
            p.on_before_optimizer_step(None, model, self.opt)
        self.opt.step()
        for p in model.plugins:
            p.on_train_batch_end(None, model, None, batch, i)
        return self.clock() - t0


def paired_times(base: Stepper, other: Stepper, steps: int, warmup: int = 3) -> tuple[list[float], list[float]]:
    """Step times of baseline and plugin, measured alternately step by step (ABBA order)."""
    tb, to = [], []
    for i in range(warmup + steps):
        if i % 2:  # alternate which one goes first, so order effects cancel
            b, a = other(), base()
        else:
            a, b = base(), other()
        if i >= warmup:
            tb.append(a)
            to.append(b)
    return tb, to


class _FakeTrainer:
    def __init__(self, step: int) -> None:
        self.global_step = step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: this process's CPU time (robust on a shared machine); wall: perf_counter")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "plugins.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    s, b = args.image_size, args.batch_size
    batch = {"x": torch.rand(b, 1, s, s, generator=g), "y": torch.randint(0, 10, (b,), generator=g)}
    results: dict[str, Any] = {}
    for kind, table in (("classifier", CLASSIFIER_PLUGINS), ("vae", VAE_PLUGINS)):
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        base = Stepper(build(kind, None, s), batch, clock)
        for name, spec in table.items():
            other = Stepper(build(kind, spec, s), batch, clock)
            tb_all, to_all = [], []
            for _ in range(args.rounds):
                tb, to = paired_times(base, other, args.steps)
                tb_all += tb
                to_all += to
            # median over adjacent pairs of the time ratio: robust to load changing on a shared machine
            overhead = statistics.median(o / b for o, b in zip(to_all, tb_all)) - 1.0
            t, tb = statistics.median(to_all), statistics.median(tb_all)
            row = {"host_model": kind, "step_ms": round(1e3 * t, 3), "baseline_ms": round(1e3 * tb, 3),
                   "overhead": round(overhead, 4)}
            if name in TARGETS:
                row["target"] = TARGETS[name]
                row["meets_target"] = overhead <= TARGETS[name]
            results[name] = row
            print(f"{name:24s} {kind:10s} {1e3 * t:8.2f} ms  base {1e3 * tb:8.2f} ms  overhead {100 * overhead:+6.1f} %"
                  + (f"  (target {100 * TARGETS[name]:.0f} %)" if name in TARGETS else ""), flush=True)
    meta = {"torch": torch.__version__, "device": "cpu", "threads": args.threads, "clock": args.clock, "batch_size": b,
            "image_size": s, "steps": args.steps, "rounds": args.rounds, "machine": platform.machine(),
            "model": "classifier conv [32, 64], feature_dim 128, dropout 0.2; vae conv [32, 64]"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
