"""P14 registration: wall time of the variational outlier-rejection pipeline (network + voting + Kabsch) and the
RANSAC iteration count that fits in the same time, and success rates at 70/90% outliers for both.

    python benchmarks/registration.py [--steps 600] [--out benchmarks/results/registration.json]
    python benchmarks/registration.py --compare [--steps 200 300 600] [--lrs 1e-3 3e-3]

One thread, 64 problems of 128 correspondences a ratio; the model is trained like the tests' fixture.
``--compare``: the variational vs deterministic non-local nets trained on the tests' 32 feature-carrying
problems with structured outliers (same steps, same lr grid), registration recall at 90% outliers on the 64
held-out test problems and on 32 validation problems (for picking the lr), written to
``benchmarks/results/registration_compare.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_vi.data.correspondences import make_correspondences
from lightning_vi.families.vision import ransac, registration_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="benchmarks/results/registration.json")
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--compare-steps", type=int, nargs="+", default=[200, 300, 600])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    args = ap.parse_args()
    torch.set_num_threads(1)
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "families" / "vision"))
    from test_outlier_rejection import train  # the tests' training recipe, one source
    if args.compare:
        compare(args)
        return

    rows = []
    for seed in args.seeds:
        model = train(seed, args.steps)
        for ratio in (0.7, 0.9):
            b = make_correspondences(64, 128, ratio, torch.Generator().manual_seed(1000 + seed))
            t0 = time.perf_counter()
            res = model.register(b["p"], b["q"])
            ours_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            ransac(b["p"], b["q"], 100, 0.05, torch.Generator().manual_seed(seed))
            per_iter = (time.perf_counter() - t0) / 100
            equal = max(int(ours_s / per_iter), 1)
            r, t, mask = ransac(b["p"], b["q"], equal, 0.05, torch.Generator().manual_seed(seed))
            r1k = ransac(b["p"], b["q"], 1000, 0.05, torch.Generator().manual_seed(seed))
            f = lambda m: {k: round(float(v), 4) for k, v in m.items()}  # noqa: E731
            rows.append({"seed": seed, "outlier_ratio": ratio, "ours_s": round(ours_s, 4),
                         "ransac_iterations_equal_time": equal, "ours": f(registration_metrics(res, b)),
                         "ransac_equal_time": f(registration_metrics({"R": r, "t": t, "inliers": mask}, b)),
                         "ransac_1000": f(registration_metrics({"R": r1k[0], "t": r1k[1], "inliers": r1k[2]}, b))})
            print(json.dumps(rows[-1]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"problems": 64, "points": 128, "train_steps": args.steps, "rows": rows},
                                         indent=1))


def compare(args: argparse.Namespace) -> None:
    from test_outlier_rejection import FEATURES, evaluate_features, train_finite

    rows = []
    for seed in args.seeds:
        val = make_correspondences(32, 128, 0.9, torch.Generator().manual_seed(500 + seed), **FEATURES)
        for steps in args.compare_steps:
            for lr in args.lrs:
                for variational in (True, False):
                    model = train_finite(seed, variational, steps, lr)
                    res = model.register(val["p"], val["q"], val["f"])
                    rows.append({"seed": seed, "steps": steps, "lr": lr, "variational": variational,
                                 "val_recall": round(float(registration_metrics(res, val)["recall_registration"]), 4),
                                 "test": {k: round(v, 4) for k, v in evaluate_features(model, seed).items()}})
                    print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out).with_name("registration_compare.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"features": FEATURES, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
