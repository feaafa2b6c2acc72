"""One-step distillation on digits: class agreement and samples/s of a SNOOPI student vs its teacher.

Trains a class-conditional DDPM (MLP) on 8x8 sklearn digits (full batch, the recipe of the diffusion
tests), saves it as a ``ddpm`` checkpoint, distills a one-step SNOOPI student from it (guidance scale
drawn from ``--guidance-range`` each step), then measures with an independent classifier (logistic
regression on real digits) the fraction of samples recognised as the requested class, and the samples/s
of the student against the teacher's DDIM and DDPM samplers. Writes benchmarks/results/distillation.json.

    python benchmarks/distillation.py [--teacher-steps 600 --student-steps 600]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch

from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.distillation.one_step import SNOOPI
from lightning_vi.metrics.class_agreement import class_agreement, fit_digits_classifier


def fit_full_batch(model, batch, steps, lr):
    return fit_objective(model, batch, steps, lr)


def timed(fn, n):
    t0 = time.perf_counter()
    x = fn()
    dt = time.perf_counter() - t0
    return x, {"seconds": dt, "samples_per_s": n / dt}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-steps", type=int, default=600)
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--guidance", type=float, default=3.0, help="teacher's sampling guidance scale")
    ap.add_argument("--guidance-range", type=float, nargs=2, default=(2.0, 4.0))
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distillation.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    d = load_digits_tensors(8)
    perm = torch.randperm(len(d["x"]), generator=torch.Generator().manual_seed(0))
    train = {"x": d["x"][perm[:1500]], "y": d["y"][perm[:1500]]}
    L.seed_everything(0)
    t0 = time.perf_counter()
    ddpm = DDPM(input_shape=[1, 8, 8], hidden=128, depth=3, num_classes=10, p_uncond=0.2, data_scale=0.5,
                data_shift=0.5, sample_steps=25)
    fit_full_batch(ddpm, train, args.teacher_steps, 3e-3)
    teacher_fit_s = time.perf_counter() - t0
    ckpt = Path(args.out).with_suffix(".teacher.ckpt")
    torch.save({"hyper_parameters": dict(ddpm.hparams), "lvi_class_path": "lightning_vi.families.diffusion.ddpm.DDPM",
                "state_dict": ddpm.state_dict()}, ckpt)
    classify = fit_digits_classifier(train["x"], train["y"])
    y = torch.arange(args.n) % 10
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    samplers = {}
    x, samplers["teacher_ddim_25"] = timed(lambda: ddpm.sample(args.n, g(), y=y, guidance_scale=args.guidance, sampler="ddim", steps=25), args.n)
    samplers["teacher_ddim_25"]["agreement"] = class_agreement(classify, x.clamp(0, 1), y)
    x, samplers["teacher_ddpm_1000"] = timed(lambda: ddpm.sample(args.n, g(), y=y, guidance_scale=args.guidance, sampler="ddpm", steps=1000), args.n)
    samplers["teacher_ddpm_1000"]["agreement"] = class_agreement(classify, x.clamp(0, 1), y)
    students = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        student = SNOOPI(teacher=str(ckpt), guidance_range=list(args.guidance_range), hidden=256, depth=2, fake_hidden=128,
                         fake_depth=2, lr=1e-3, fake_lr=2e-3, fake_updates=2)
        t0 = time.perf_counter()
        student.fit_steps(args.student_steps, 128, seed=seed)
        fit_s = time.perf_counter() - t0
        student.eval()
        x, speed = timed(lambda: student.sample(args.n, g(), y=y), args.n)
        students.append({"seed": seed, "fit_seconds": fit_s, "agreement": class_agreement(classify, x.clamp(0, 1), y), **speed})
    samplers["student_one_step"] = {
        "samples_per_s": sum(s["samples_per_s"] for s in students) / len(students),
        "agreement": sum(s["agreement"] for s in students) / len(students), "seeds": students}
    teacher_rate = samplers["teacher_ddim_25"]["agreement"]
    results = {
        "data": "sklearn digits 8x8, 1500 training images", "n_samples": args.n, "teacher_steps": args.teacher_steps,
        "teacher_fit_seconds": teacher_fit_s, "student_steps": args.student_steps, "guidance_scale": args.guidance,
        "guidance_range": list(args.guidance_range),
        "quality": "class agreement under a logistic regression trained on real digits (higher is better)",
        "samplers": samplers,
        "student_agreement_over_teacher": samplers["student_one_step"]["agreement"] / teacher_rate,
        "speedup_over_ddim_25": samplers["student_one_step"]["samples_per_s"] / samplers["teacher_ddim_25"]["samples_per_s"],
        "speedup_over_ddpm_1000": samplers["student_one_step"]["samples_per_s"] / samplers["teacher_ddpm_1000"]["samples_per_s"],
        "threads": torch.get_num_threads(),
    }
    ckpt.unlink(missing_ok=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
