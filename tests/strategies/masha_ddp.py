"""Run the MASHA optimizer on 2 gloo processes, each holding its own worker's min-max objective of
``quadratic_game`` (the game is the mean of the two), and write the iterates and bit counts.

Usage: ``python masha_ddp.py DEVICES OUT.json`` (the layout of tests/helpers.py ``run_ddp_script``). The parent
starts DEVICES worker processes (``--worker RANK``); rank 0 writes the JSON.
"""

import json
import os
import subprocess
import sys

N, STEPS, EVERY, SEEDS = 50, 450, 5, (0, 1, 2)  # iterates and bits recorded every EVERY steps
CONFIGS = [("masha1", None, 0.3), ("masha1", 0.1, 0.2), ("masha2", 0.1, 0.3)]  # variant, server_k, gamma * L


def _worker(rank: int, world: int, store: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    from lightning_vi.strategies.masha import quadratic_game
    from lightning_vi.strategies.masha_optim import Masha

    torch.set_num_threads(1)
    # a FileStore rendezvous: no port picked in advance that another process could take before rank 0 binds it
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    results = []
    for seed in SEEDS:
        ops, z_star, L = quadratic_game(N, workers=world, seed=seed)
        zero = torch.zeros(2 * N, dtype=torch.float64)
        J = torch.func.jacrev(ops[rank])(zero)  # this worker's blocks: F_m(z) = J z + b, J = [[A, B], [-B', C]]
        b = ops[rank](zero)
        A, B, C, a, c = J[:N, :N], J[:N, N:], J[N:, N:], b[:N], b[N:]
        for variant, server_k, gl in CONFIGS:
            x = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))
            y = torch.nn.Parameter(torch.zeros(N, dtype=torch.float64))
            opt = Masha([{"params": [x]}, {"params": [y], "maximize": True}], lr=gl / L, k=0.1, variant=variant,
                        server_k=server_k, seed=seed)

            def closure():
                # f_m(x, y) = x'Ax/2 + x'By - y'Cy/2 + a'x - c'y: min over x, max over y
                opt.zero_grad()
                f = 0.5 * x @ A @ x + x @ B @ y - 0.5 * y @ C @ y + a @ x - c @ y
                f.backward()
                return f

            traj, bits = [], []
            for t in range(1, STEPS + 1):
                opt.step(closure)
                if t % EVERY:
                    continue
                traj.append(torch.cat([x.detach(), y.detach()]).tolist())
                bits.append([opt.bits_up, opt.bits_down])
            results.append({"seed": seed, "every": EVERY, "variant": variant, "server_k": server_k, "gamma": gl / L,
                            "z": traj, "bits": bits, "rank_bits": [opt.bits_up, opt.bits_down]})
    gathered = [None] * world
    dist.all_gather_object(gathered, [r["rank_bits"] for r in results])
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"runs": results, "rank_bits": gathered, "world": world}, f)
    dist.destroy_process_group()


def main() -> None:
    if sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
        return
    world, out = int(sys.argv[1]), sys.argv[2]
    store = os.path.abspath(out) + ".store"  # fresh per run (run_ddp_script gives each run its own tmp folder)
    if os.path.exists(store):
        os.remove(store)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(r), str(world), store, out], env=env)
             for r in range(world)]
    sys.exit(max(p.wait() for p in procs))


if __name__ == "__main__":
    main()
