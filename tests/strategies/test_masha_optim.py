"""The MASHA optimizer (lightning_vi.strategies.masha_optim) across 2 gloo processes against the in-process
simulation (the exact reference) and the closed-form saddle point of quadratic_game; single-process checks."""

from pathlib import Path

import pytest
import torch

from helpers import run_ddp_script
from lightning_vi.strategies.masha import Extragradient, Masha1, Masha2, quadratic_game
from lightning_vi.strategies.masha_optim import Masha

SCRIPT = Path(__file__).with_name("masha_ddp.py")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    return run_ddp_script(SCRIPT, tmp_path_factory.mktemp("masha_ddp"), devices=2)


def test_two_processes_match_simulation_reach_saddle_point_with_fewer_bits(ddp_runs):
    assert ddp_runs["world"] == 2
    assert ddp_runs["rank_bits"][0] == ddp_runs["rank_bits"][1]  # both ranks count the same traffic
    assert len(ddp_runs["runs"]) == 9  # 3 seeds x (MASHA1, MASHA1 + server Rand-k, MASHA2 + server Top-k)
    eg_cache = {}
    for run in ddp_runs["runs"]:
        seed, every = run["seed"], run["every"]
        ops, z_star, L = quadratic_game(50, workers=2, seed=seed)
        z0 = torch.zeros(100, dtype=torch.float64)
        cls = Masha1 if run["variant"] == "masha1" else Masha2
        sim = cls(ops, z0, run["gamma"], k=0.1, server_k=run["server_k"], seed=seed)
        z = torch.tensor(run["z"], dtype=torch.float64)
        dist = torch.linalg.vector_norm(z - z_star, dim=1)
        for t in range(len(z) * every):  # same seeds -> same iterates and the same bit counts
            sim.step()
            if (t + 1) % every == 0:
                i = (t + 1) // every - 1
                assert float((sim.z - z[i]).abs().max()) < 1e-6, (run["variant"], seed, t)
                assert [sim.bits_up, sim.bits_down] == run["bits"][i]
        assert dist[-1] < 1e-3, (run["variant"], seed, float(dist[-1]))
        reached = int(torch.nonzero(dist < 1e-3)[0, 0])
        bits = sum(run["bits"][reached])  # total, both directions (at the first recorded step below 1e-3)
        if seed not in eg_cache:
            eg = [Extragradient(ops, z0, g / L).run(200, z_star).bits_to_reach(1e-3) for g in (0.5, 0.7, 0.9, 1.0)]
            eg_cache[seed] = min(b for b in eg if b is not None)
        assert bits < eg_cache[seed], (run["variant"], run["server_k"], seed, bits, eg_cache[seed])


def _single_worker_game(seed=0, n=6):
    ops, z_star, L = quadratic_game(n, workers=1, seed=seed)
    zero = torch.zeros(2 * n, dtype=torch.float64)
    J, b = torch.func.jacrev(ops[0])(zero), ops[0](zero)
    return ops, z_star, L, (J[:n, :n], J[:n, n:], J[n:, n:], b[:n], b[n:])


@pytest.mark.parametrize("variant", ["masha1", "masha2"])
def test_single_process_minmax_signs_match_operator_simulation(variant):
    # one worker, no process group: the optimizer on f(x, y) with y maximised is the simulation on F = (f_x, -f_y)
    n = 6
    ops, z_star, L, (A, B, C, a, c) = _single_worker_game(n=n)
    x = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    y = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    opt = Masha([{"params": [x]}, {"params": [y], "maximize": True}], lr=0.3 / L, k=3, variant=variant, seed=2)

    def closure():
        opt.zero_grad()
        f = 0.5 * x @ A @ x + x @ B @ y - 0.5 * y @ C @ y + a @ x - c @ y
        f.backward()
        return f

    sim = (Masha1 if variant == "masha1" else Masha2)(ops, torch.zeros(2 * n, dtype=torch.float64), 0.3 / L, k=3,
                                                        seed=2)
    for _ in range(300):
        opt.step(closure)
        sim.step()
    z = torch.cat([x.detach(), y.detach()])
    assert float((z - sim.z).abs().max()) < 1e-9
    assert float(torch.linalg.vector_norm(z - z_star)) < 1e-3
    assert (opt.bits_up, opt.bits_down) == (sim.bits_up, sim.bits_down)


def test_bad_arguments_name_the_value():
    p = [torch.nn.Parameter(torch.zeros(4))]
    with pytest.raises(ValueError, match="gamma=0.0"):
        Masha(p, lr=0.0)
    with pytest.raises(ValueError, match="variant='masha3'"):
        Masha(p, lr=0.1, variant="masha3")
    with pytest.raises(ValueError, match="k=5"):
        Masha(p, lr=0.1, k=5)
    with pytest.raises(ValueError, match="k=0"):
        Masha(p, lr=0.1, server_k=0)
    with pytest.raises(ValueError, match=r"lr=\[0.1, 0.2\]"):
        Masha([{"params": p}, {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 0.2}], lr=0.1)
    with pytest.raises(ValueError, match="closure=None"):
        Masha(p, lr=0.1).step()
