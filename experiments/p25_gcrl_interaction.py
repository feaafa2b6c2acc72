"""P25 (GCRL) zero-shot, fifth attempt: two interacting agents, environments differ in the interaction radius.

The authors' synthetic domain-generalisation benchmark (github.com/sshirahmad/GCRL, ``datasets/v4``: ORCA circle
crossing, two pedestrians per scene, one environment per ORCA radius; ``scripts/train_synthetic.sh`` trains on
radii 0.1 / 0.3 / 0.5 and ``scripts/evaluate_generalization.sh`` tests 0.1-0.8) with their MLP model, whose style
encoder reads the relative positions of the other agent while the invariant encoder reads the agent's own past.
Here, a vectorised stand-in for ORCA: two agents start on a circle (radius 2-4) at nearly opposite points and
walk to the opposite side at their own speed (0.2-0.3 per step); each step heads along
``normalise(u_goal + 2 max(0, r_e / d - 1) (p_i - p_j) / d)``: a repulsion from the other agent that starts at the
environment's interaction radius ``r_e`` (distance ``d``). Training radii 1, 2, 3; unseen radii 1.5 and 2.5
(inside the range: the authors' "in-distribution" shift) and 4 (outside). 8 observed and 12 predicted steps, both
agents of a scene are samples; coordinates relative to the agent's last observed point. A second scene type,
``group`` (:func:`group_scenes`), makes the environment visible in the past: a shared goal and a spring that relaxes
the agents' separation to the preferred distance ``r_e``.

Variants (600 Adam steps, lr 2e-3, batches of 256, ELBO, label prior, ``z_dim = s_dim = 2``, hidden [64, 64]):
``split`` (GCRL: ``q(Z | own past)``, ``q(S | other_t - own_t)``, ``p(S | E)`` per training environment),
``iso_split`` (same encoders, ``p(S | E)`` fixed to N(0, I): no selection variable), ``nosplit`` (one latent of size
4 from one encoder of both inputs) and ``wide`` (that encoder widened to the split's encoder parameter count).

    PYTHONPATH=. python experiments/p25_gcrl_interaction.py > experiments/results/p25_gcrl_interaction.md
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor

from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.families.causal.gcrl import GCRL, ade_fde
from lightning_vi.nn.mlp import MLP

TRAIN_RADII = (1.0, 2.0, 3.0)
TEST_RADII = (1.5, 2.5, 4.0)
VARIANTS = ("split", "iso_split", "nosplit", "wide")
KEYS = ("past", "future", "env", "other")
T_OBS, T_PRED = 8, 12


def walk(start: Tensor, goal: Tensor, speed: Tensor, push, noise: float, g: torch.Generator, env: int
         ) -> dict[str, Tensor]:
    """Two agents per scene (``start``, ``goal`` [n, 2, 2], ``speed`` [n, 2, 1]) walking ``T_OBS + T_PRED`` points;
    each step heads along ``normalise(u_goal + push(d) (p_i - p_j) / d)`` (``d`` the distance between the agents),
    capped by the distance to the goal, plus ``N(0, noise^2)``. Returns ``2 n`` agent samples with ``past``,
    ``future`` and ``other`` (the other agent's past) and ``env``."""
    n, p, points = len(start), start, [start]
    for _ in range(T_OBS + T_PRED - 1):
        to_goal = goal - p
        dist_goal = to_goal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        rel = p - p.flip(1)                                                   # p_i - p_j
        d = rel.norm(dim=-1, keepdim=True).clamp_min(1e-3)
        heading = to_goal / dist_goal + push(d) * rel / d
        heading = heading / heading.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        p = p + heading * torch.minimum(speed, dist_goal) + noise * torch.randn(p.shape, generator=g)
        points.append(p)
    traj = torch.stack(points, 2)                                             # [n, 2 agents, T, 2]
    own, other = traj.flatten(0, 1), traj.flip(1).flatten(0, 1)
    return {"past": own[:, :T_OBS], "future": own[:, T_OBS:], "other": other[:, :T_OBS],
            "env": torch.full((2 * n,), env, dtype=torch.long)}


def crossing_scenes(n: int, radius: float, generator: torch.Generator, env: int = 0, noise: float = 0.01
                    ) -> dict[str, Tensor]:
    """``n`` two-agent circle-crossing scenes (module docstring); returns :func:`walk`'s ``2 n`` agent samples."""
    g = generator
    big_r = 2.0 + 2.0 * torch.rand(n, 1, generator=g)
    theta = 2 * math.pi * torch.rand(n, generator=g)
    angles = torch.stack([theta, theta + math.pi + 0.6 * (torch.rand(n, generator=g) - 0.5)], 1)   # [n, 2]
    start = big_r[..., None] * torch.stack([angles.cos(), angles.sin()], -1)                      # [n, 2, 2]
    goal_angles = angles + math.pi + 0.4 * (torch.rand(n, 2, generator=g) - 0.5)
    goal = big_r[..., None] * torch.stack([goal_angles.cos(), goal_angles.sin()], -1)
    speed = 0.2 + 0.1 * torch.rand(n, 2, 1, generator=g)
    return walk(start, goal, speed, lambda d: 2 * (radius / d - 1).clamp_min(0), noise, g, env)


def group_scenes(n: int, radius: float, generator: torch.Generator, env: int = 0, noise: float = 0.01
                 ) -> dict[str, Tensor]:
    """``n`` two-agent group-walking scenes: both agents start 0.5-4 apart and walk towards a shared goal 6-10 units
    away at their own speed (0.2-0.3), each heading along ``normalise(u_goal + 0.5 (d - r_e) (p_j - p_i) / d)``, a
    spring that relaxes the separation ``d`` to the environment's preferred distance ``r_e`` (visible in the past,
    unlike the crossing scenes). Same return as :func:`crossing_scenes`."""
    g = generator
    theta = 2 * math.pi * torch.rand(n, generator=g)
    side = torch.stack([-theta.sin(), theta.cos()], -1)                       # perpendicular to the goal direction
    sep = 0.5 + 3.5 * torch.rand(n, 1, generator=g)
    centre = 2 * torch.rand(n, 2, generator=g) - 1
    start = torch.stack([centre + 0.5 * sep * side, centre - 0.5 * sep * side], 1)            # [n, 2, 2]
    dist = 6.0 + 4.0 * torch.rand(n, 1, generator=g)
    goal = (centre + dist * torch.stack([theta.cos(), theta.sin()], -1))[:, None].expand(n, 2, 2)
    speed = 0.2 + 0.1 * torch.rand(n, 2, 1, generator=g)
    return walk(start, goal, speed, lambda d: 0.5 * (radius - d), noise, g, env)


SCENES = {"crossing": crossing_scenes, "group": group_scenes}


class InteractionGCRL(GCRL):
    """GCRL whose style encoder reads the relative inter-agent positions ``other_t - own_t`` of the observed steps,
    as in the authors' MLP model; the ablation's single encoder reads both.

    Args:
        wide: hidden width of the ablation's encoder (``None`` = ``hidden_dims``).
        iso: ``p(S | E = e) = N(0, I)`` for every environment (fixed): no selection variable.
    """

    def __init__(self, *args, wide: int | None = None, iso: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        d, hidden = 2 * self.t_obs, list(self.hparams.hidden_dims)
        if self.split:
            self.enc_s = MLP(d, hidden, 2 * self.s_dim)
            if iso:
                for p in [*self.prior_mu.values(), *self.prior_log_var.values()]:
                    p.data.zero_()
                    p.requires_grad_(False)
        else:
            self.enc = MLP(2 * d, [wide, wide] if wide else hidden, 2 * (self.z_dim + self.s_dim))
        self._other: Tensor | None = None

    def posterior(self, past: Tensor) -> tuple[Tensor, Tensor]:
        x, origin = self._relative(past.float())
        other = (self._other.float() - past.float()).flatten(1)     # relative inter-agent positions, per step
        if not self.split:
            return self.enc(torch.cat([x, other], -1)).chunk(2, -1)
        (mz, lz), (ms, ls) = self.enc_z(x).chunk(2, -1), self.enc_s(other).chunk(2, -1)
        return torch.cat([mz, ms], -1), torch.cat([lz, ls], -1)

    def objective(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self._other = batch["other"]
        return super().objective(batch)

    def predict_with(self, past: Tensor, other: Tensor) -> Tensor:
        self._other = other
        return self.predict(past)


def encoder_params(m: GCRL) -> int:
    encs = [m.enc_z, m.enc_s] if m.split else [m.enc]
    return sum(p.numel() for e in encs for p in e.parameters())


def matched_width() -> int:
    """Smallest ablation encoder width with at least the split's encoder parameter count."""
    target = encoder_params(InteractionGCRL(split=True))
    return next(w for w in range(64, 256) if encoder_params(InteractionGCRL(split=False, wide=w)) >= target)


def data(seed: int, scene: str = "crossing") -> tuple[dict[str, Tensor], dict[float, dict[str, Tensor]]]:
    gen = lambda env, off: torch.Generator().manual_seed(7919 * seed + 1000 * env + off)   # noqa: E731
    make = SCENES[scene]
    parts = [make(225, r, gen(e, 0), env=e) for e, r in enumerate(TRAIN_RADII)]
    tr = {k: torch.cat([p[k] for p in parts]) for k in KEYS}
    return tr, {r: make(250, r, gen(9 + i, 1), env=9) for i, r in enumerate(TEST_RADII)}


def run(seed: int, steps: int, width: int, variants=VARIANTS, scene: str = "crossing"
        ) -> dict[str, dict[float, tuple[float, float]]]:
    tr, tests = data(seed, scene)
    out = {}
    for name in variants:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        m = InteractionGCRL(train_envs=list(range(len(TRAIN_RADII))), split=name in ("split", "iso_split"),
                            wide=width if name == "wide" else None, iso=name == "iso_split")
        fit_objective(m, lambda _: (lambda i: {k: tr[k][i] for k in KEYS})(
            torch.randint(len(tr["past"]), (256,), generator=g)), steps, 2e-3)
        out[name] = {r: ade_fde(m.predict_with(te["past"], te["other"]), te["future"]) for r, te in tests.items()}
    out["cv"] = {}
    for r, te in tests.items():
        v = te["past"][:, -1] - te["past"][:, -2]
        cv = te["past"][:, -1:] + torch.arange(1, T_PRED + 1.0)[None, :, None] * v[:, None]
        out["cv"][r] = ade_fde(cv, te["future"])
    return out


def table(steps: int, seeds, width: int, variants=VARIANTS, scene: str = "crossing") -> None:
    print(f"\n## {scene} scenes, {steps} steps: ADE / FDE on unseen radii (posterior mean; cv = constant velocity)\n")
    cols = [f"{v}, r {r:g}" for r in TEST_RADII for v in (*variants, "cv")]
    print("| seed | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    wins = {r: [0, 0] for r in TEST_RADII}
    for s in seeds:
        res = run(s, steps, width, variants, scene)
        print(f"| {s} | " + " | ".join(f"{res[v][r][0]:.3f} / {res[v][r][1]:.3f}" for r in TEST_RADII
                                       for v in (*variants, "cv")) + " |", flush=True)
        for r in TEST_RADII:
            wins[r][0] += res["split"][r][0] < res["nosplit"][r][0]
            wins[r][1] += res["split"][r][0] < res["wide"][r][0]
    for r, (w0, w1) in wins.items():
        print(f"\nradius {r:g}: split has the lower ADE than nosplit on {w0}/{len(seeds)} seeds, than wide on "
              f"{w1}/{len(seeds)}.")


def main() -> None:
    torch.set_num_threads(1)
    seeds = range(int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else range(12)
    scenes = sys.argv[3:] or list(SCENES)
    width = matched_width()
    print("<!-- made by: PYTHONPATH=. python experiments/p25_gcrl_interaction.py > "
          "experiments/results/p25_gcrl_interaction.md (torch 2.13 CPU) -->")
    print(f"# GCRL zero-shot on two-agent scenes (train radii 1, 2, 3; wide = width {width})")
    for scene in scenes:
        table(600, seeds, width, scene=scene)


if __name__ == "__main__":
    main()
