"""Sinkhorn vs Sinkhorn-Newton-Sparse on random assignment problems (Tang et al. 2024, Sec. 5).

n x n cost with entries uniform in [0, 1], uniform marginals, reg = 1 / eta (eta = 1200), target L1
marginal error 1e-8. Counts SNS iterations as warm-up Sinkhorn + Newton steps (CG steps reported
separately) against plain Sinkhorn iterations to the same tolerance, capped at --cap (reported when
Sinkhorn does not reach the tolerance). Writes benchmarks/results/optimal_transport.json.
    python benchmarks/optimal_transport.py [--n 500 --eta 1200 --cap 20000 --seeds 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_vi.metrics.optimal_transport import sinkhorn, sinkhorn_newton_sparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--eta", type=float, default=1200.0)
    ap.add_argument("--tol", type=float, default=1e-8)
    ap.add_argument("--cap", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "optimal_transport.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = []
    for seed in range(args.seeds):
        M = torch.rand(args.n, args.n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        t = time.perf_counter()
        sns = sinkhorn_newton_sparse(M, reg=1 / args.eta, tol=args.tol)
        t_sns = time.perf_counter() - t
        t = time.perf_counter()
        sk = sinkhorn(M, reg=1 / args.eta, tol=args.tol, max_iter=args.cap)
        t_sk = time.perf_counter() - t
        run = {"seed": seed,
               "sns": {"iterations": sns.iterations, "sinkhorn_warmup": sns.sinkhorn_iterations,
                       "newton": sns.newton_iterations, "cg": sns.cg_iterations, "seconds": t_sns,
                       "marginal_error": float(sns.marginal_error), "converged": sns.converged, "cost": float(sns.cost)},
               "sinkhorn": {"iterations": sk.iterations, "seconds": t_sk, "marginal_error": float(sk.marginal_error),
                            "converged": sk.converged, "capped": not sk.converged, "cost": float(sk.cost)},
               "iteration_ratio": sk.iterations / sns.iterations,
               "iteration_ratio_is_lower_bound": not sk.converged}
        print(json.dumps(run))
        runs.append(run)
    res = {"problem": "random assignment, cost U[0,1], uniform marginals", "n": args.n, "eta": args.eta,
           "reg": 1 / args.eta, "tol_l1_marginal": args.tol, "sinkhorn_cap": args.cap, "threads": 1,
           "device": "cpu", "dtype": "float64", "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
