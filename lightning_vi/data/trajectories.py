"""Synthetic 2D agent trajectories with an invariant mechanism and an environment-specific style (P25, GCRL).

Invariant causal mechanism (shared by every environment): each agent walks from a random start towards a random
goal, ``p_{t+1} = p_t + v_e * R(omega_e) u_t + noise_e * eps_t``, where ``u_t`` is the unit vector towards the
goal (capped by the remaining distance). Environment-specific style (the variant factors the selection variable
points to): speed ``v_e``, curvature ``omega_e`` (a rotation of the heading, in radians) and noise level
``noise_e``. A trajectory of ``t_obs + t_pred`` points is split into ``past`` [t_obs, 2] and ``future`` [t_pred, 2].

:class:`TrajectoryDataModule` trains on the ``train_envs`` (a train/val split of their pooled trajectories) and
tests on the unseen ``test_env``; batches are dicts with ``past``, ``future`` and ``env`` (the environment id).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule

#: Default styles per environment id: (speed, curvature in radians, noise std).
DEFAULT_STYLES: tuple[tuple[float, float, float], ...] = (
    (0.25, -0.3, 0.01), (0.35, 0.0, 0.01), (0.45, 0.3, 0.01), (0.40, 0.15, 0.01))


def check_envs(name: str, envs: Sequence[int], n_styles: int) -> list[int]:
    """A non-empty list of distinct environment ids, each in ``[0, n_styles)``."""
    envs = [int(e) for e in envs]
    if not envs:
        raise ValueError(f"{name}=[] is empty: give at least one environment id from {list(range(n_styles))}")
    bad = [e for e in envs if not 0 <= e < n_styles]
    if bad:
        raise ValueError(f"{name}={envs!r} holds unknown environment ids {bad}; allowed: {list(range(n_styles))} "
                         "(one per entry of styles)")
    if len(set(envs)) != len(envs):
        raise ValueError(f"{name}={envs!r} repeats an environment id; give each once")
    return envs


def goal_trajectories(n: int, speed: float, curvature: float, noise: float, t_obs: int = 8, t_pred: int = 12,
                      env: int = 0, generator: torch.Generator | None = None,
                      goal_range: tuple[float, float] = (3.0, 5.0)) -> dict[str, Tensor]:
    """``n`` goal-directed trajectories in one environment style (module docstring); goals lie
    ``goal_range`` = (min, max) units from the start in a uniform random direction.

    Returns ``past`` [n, t_obs, 2], ``future`` [n, t_pred, 2], ``env`` [n] (long) and ``goal`` [n, 2].
    """
    check_range("n", n, 1)
    check_range("t_obs", t_obs, 2)
    check_range("t_pred", t_pred, 1)
    check_range("speed", speed, 0.0, low_open=True)
    check_range("noise", noise, 0.0)
    g = generator
    start = 2.0 * torch.rand(n, 2, generator=g) - 1.0
    angle = 2 * math.pi * torch.rand(n, generator=g)
    lo, hi = (float(v) for v in goal_range)
    if not 0.0 < lo <= hi:
        raise ValueError(f"goal_range={tuple(goal_range)!r}: need 0 < min <= max")
    dist = lo + (hi - lo) * torch.rand(n, generator=g)
    goal = start + dist[:, None] * torch.stack([angle.cos(), angle.sin()], -1)
    c, s = math.cos(curvature), math.sin(curvature)
    rot = torch.tensor([[c, -s], [s, c]])
    p, points = start, [start]
    for _ in range(t_obs + t_pred - 1):
        to_goal = goal - p
        d = to_goal.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        step = (to_goal / d) @ rot.T * torch.minimum(torch.full_like(d, speed), d)
        p = p + step + noise * torch.randn(n, 2, generator=g)
        points.append(p)
    traj = torch.stack(points, 1)
    return {"past": traj[:, :t_obs], "future": traj[:, t_obs:], "env": torch.full((n,), int(env), dtype=torch.long),
            "goal": goal}


class TrajectoryDataModule(InMemoryDataModule):
    """Trajectories from several training environments and one unseen test environment (P25 benchmark).

    Args:
        train_envs: environment ids seen in training (indices into ``styles``; non-empty).
        test_env: the unseen environment id (test split and :meth:`shots`), not in ``train_envs``.
        styles: per environment id ``(speed, curvature, noise)``.
        n_per_env: trajectories per environment; t_obs / t_pred: observed past and predicted future steps.
        goal_range: (min, max) distance of the goal from the start (default (3, 5); far goals such as (8, 12)
            keep agents walking for all ``t_obs + t_pred`` steps).
    """

    def __init__(self, train_envs: list[int] = (0, 1, 2), test_env: int = 3,
                 styles: list[list[float]] = DEFAULT_STYLES, n_per_env: int = 500, t_obs: int = 8,
                 t_pred: int = 12, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0, goal_range: tuple[float, float] = (3.0, 5.0)) -> None:
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, test_fraction=0.0, seed=seed,
                         num_workers=num_workers)
        self.styles = [tuple(float(v) for v in st) for st in styles]
        bad = [st for st in self.styles if len(st) != 3]
        if bad:
            raise ValueError(f"styles entries must be (speed, curvature, noise); got {bad}")
        self.train_envs = check_envs("train_envs", train_envs, len(self.styles))
        check_envs("test_env", [test_env], len(self.styles))
        if test_env in self.train_envs:
            raise ValueError(f"test_env={test_env} is also in train_envs={self.train_envs}; the test environment "
                             "must be unseen in training")
        check_range("n_per_env", n_per_env, 1)
        self.test_env, self.n_per_env, self.t_obs, self.t_pred = int(test_env), n_per_env, t_obs, t_pred
        if len(goal_range) != 2 or not 0.0 < float(goal_range[0]) <= float(goal_range[1]):
            raise ValueError(f"goal_range={tuple(goal_range)!r}: need (min, max) with 0 < min <= max")
        self.goal_range = (float(goal_range[0]), float(goal_range[1]))

    def environment(self, env: int, n: int, offset: int = 0) -> dict[str, Tensor]:
        """``n`` trajectories of environment ``env`` (seeded by ``seed``, ``env`` and ``offset``)."""
        check_envs("env", [env], len(self.styles))
        return goal_trajectories(n, *self.styles[env], t_obs=self.t_obs, t_pred=self.t_pred, env=env,
                                 generator=self.generator(1000 * env + offset), goal_range=self.goal_range)

    def generate(self) -> dict[str, Tensor]:
        parts = [self.environment(e, self.n_per_env) for e in self.train_envs]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        self.splits["test"] = self.environment(self.test_env, self.n_per_env, offset=1)

    def shots(self, k: int, offset: int = 2) -> dict[str, Tensor]:
        """``k`` labelled trajectories of the unseen environment for low-shot transfer (disjoint from test)."""
        check_range("k", k, 1)
        return self.environment(self.test_env, k, offset=offset)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (self.t_obs, 2)
