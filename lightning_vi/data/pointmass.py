"""Offline point-mass trajectories rendered as small images with a moving spurious distractor (RePo, P23).

A point mass in ``[-1, 1]^2`` moves under uniformly random actions, ``p_{t+1} = clip(p_t + step * a_t)``; the
reward of frame ``t`` is the negative distance of the agent to a fixed goal, ``r_t = -||p_t - goal||``. Each
frame is an ``S x S`` RGB image: a background colour (optionally a shifted background, a colour offset plus
stripes), the agent as a small Gaussian blob and a larger distractor blob whose motion is independent of the
agent and of the actions (the task-irrelevant "spurious" variation RePo is built to ignore).

Batches are dicts: ``x`` [N, T, 3, S, S] frames, ``action`` [N, T, 2] (``action[:, t]`` is the action that led
to frame ``t``; ``action[:, 0] = 0``), ``reward`` [N, T], ``pos`` [N, T, 2] (agent) and ``distractor`` [N, T, 2].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.data.base import InMemoryDataModule

DISTRACTOR_MOTIONS = ("circle", "bounce", "none")


def _colour(name: str, value: Sequence[float]) -> Tensor:
    c = torch.as_tensor(list(value), dtype=torch.float32)
    if c.shape != (3,):
        raise ValueError(f"{name}={list(value)!r} must be an RGB triple of 3 numbers; got {c.numel()} numbers")
    return c


def _blob(pos: Tensor, image_size: int, width: float) -> Tensor:
    """Gaussian blob images [..., S, S] centred at ``pos`` [..., 2] in ``[-1, 1]^2`` (width in pixels)."""
    grid = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size * 2 - 1
    px = (pos[..., 0:1] - grid).pow(2)  # [..., S] along width (x)
    py = (pos[..., 1:2] - grid).pow(2)  # [..., S] along height (y)
    s2 = (2 * width / image_size) ** 2
    return torch.exp(-(py[..., :, None] + px[..., None, :]) / (2 * s2))


def _distractor_path(n: int, frames: int, motion: str, speed: float, g: torch.Generator) -> Tensor:
    """Distractor centres [n, T, 2], independent of the agent and of the actions."""
    steps = torch.arange(frames, dtype=torch.float32)
    if motion == "none":
        return (1.6 * torch.rand(n, 1, 2, generator=g) - 0.8).expand(n, frames, 2).clone()
    if motion == "circle":
        centre = 0.3 * (2 * torch.rand(n, 1, 2, generator=g) - 1)
        radius = 0.35 + 0.3 * torch.rand(n, 1, generator=g)
        phase = 2 * math.pi * torch.rand(n, 1, generator=g)
        sign = torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0)
        ang = phase + sign * speed * steps[None] / radius
        return centre + radius[..., None] * torch.stack([ang.cos(), ang.sin()], -1)
    # bounce: constant velocity with reflecting walls at +-0.9
    start = 1.8 * torch.rand(n, 1, 2, generator=g) - 0.9
    angle = 2 * math.pi * torch.rand(n, 1, generator=g)
    vel = speed * torch.stack([angle.cos(), angle.sin()], -1)
    raw = start + 0.9 + vel * steps[None, :, None]  # unfolded, period 3.6
    return 1.8 - (torch.remainder(raw, 3.6) - 1.8).abs() - 0.9


def pointmass_trajectories(
    n: int,
    frames: int = 8,
    image_size: int = 16,
    generator: torch.Generator | None = None,
    step: float = 0.25,
    goal: Sequence[float] = (0.5, 0.5),
    agent_colour: Sequence[float] = (0.2, 1.0, 0.2),
    agent_width: float = 1.2,
    distractor_colour: Sequence[float] = (1.0, 0.3, 0.3),
    distractor_colour_jitter: float = 0.0,
    distractor_width: float = 2.5,
    distractor_motion: str = "circle",
    distractor_speed: float = 0.3,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    background_shift: float = 0.0,
) -> dict[str, Tensor]:
    """Random-action point-mass trajectories rendered as images (module docstring).

    Args:
        n: trajectories; frames: frames per trajectory; image_size: side ``S`` of the square frames.
        step: displacement per unit action; goal: the reward's goal position in ``[-1, 1]^2``.
        agent_colour, distractor_colour, background: RGB triples; agent_width, distractor_width: blob widths
            in pixels (the distractor is larger and brighter in its channel: a prominent spurious feature).
        distractor_colour_jitter: each trajectory's distractor colour is ``distractor_colour`` plus
            ``U(-jitter, jitter)`` per channel (clipped to ``[0, 1]``): appearance variation to be ignored.
        distractor_motion: ``circle`` (orbit with random centre, radius, phase, direction), ``bounce``
            (constant velocity, reflecting walls) or ``none`` (static at a random place).
        distractor_speed: distractor displacement per frame.
        background_shift: strength of the shifted background (test-time adaptation data): adds
            ``background_shift * (0.6, 0.4, 0.8)`` plus vertical stripes of amplitude ``background_shift / 2``;
            0 is the source background.
    """
    check_range("n", n, 1)
    check_range("frames", frames, 2)
    check_range("image_size", image_size, 4)
    check_range("step", step, 0.0, low_open=True)
    check_range("agent_width", agent_width, 0.0, low_open=True)
    check_range("distractor_width", distractor_width, 0.0, low_open=True)
    check_range("distractor_speed", distractor_speed, 0.0)
    check_range("distractor_colour_jitter", distractor_colour_jitter, 0.0)
    check_range("background_shift", background_shift, 0.0)
    check_choice("distractor_motion", distractor_motion, DISTRACTOR_MOTIONS)
    goal_t = torch.as_tensor(list(goal), dtype=torch.float32)
    if goal_t.shape != (2,):
        raise ValueError(f"goal={list(goal)!r} must be a 2-D position (2 numbers)")
    a_col, d_col, bg = (_colour("agent_colour", agent_colour), _colour("distractor_colour", distractor_colour),
                        _colour("background", background))
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    actions = 2 * torch.rand(n, frames, 2, generator=g) - 1
    actions[:, 0] = 0.0
    pos = [1.6 * torch.rand(n, 2, generator=g) - 0.8]
    for t in range(1, frames):
        pos.append((pos[-1] + step * actions[:, t]).clamp(-1.0, 1.0))
    pos_t = torch.stack(pos, 1)
    reward = -(pos_t - goal_t).norm(dim=-1)
    dist = _distractor_path(n, frames, distractor_motion, distractor_speed, g)
    d_col = (d_col + distractor_colour_jitter * (2 * torch.rand(n, 1, 3, generator=g) - 1)).clamp(0.0, 1.0)
    agent_img = _blob(pos_t, image_size, agent_width)  # [n, T, S, S]
    dist_img = _blob(dist, image_size, distractor_width)
    x = bg[:, None, None] + agent_img[:, :, None] * a_col[:, None, None] + dist_img[:, :, None] * d_col[..., None, None]
    if background_shift > 0:
        cols = torch.arange(image_size, dtype=torch.float32)
        stripes = 0.5 * background_shift * (torch.sin(2 * math.pi * cols / 4) > 0).float()
        x = x + background_shift * torch.tensor([0.6, 0.4, 0.8])[:, None, None] + stripes[None, None, :]
    return {"x": x.clamp(0.0, 2.0).contiguous(), "action": actions, "reward": reward, "pos": pos_t,
            "distractor": dist}


class PointMassDataModule(InMemoryDataModule):
    """Offline point-mass trajectories (:func:`pointmass_trajectories`) split train/val/test.

    ``x`` [N, T, 3, S, S], ``action`` [N, T, 2], ``reward`` [N, T], ``pos``, ``distractor`` [N, T, 2]. The
    rendering options (distractor colour, motion, background shift) are those of
    :func:`pointmass_trajectories`; a shifted test environment is a second data module with other options.
    """

    def __init__(self, n: int = 512, frames: int = 8, image_size: int = 16, step: float = 0.25,
                 goal: Sequence[float] = (0.5, 0.5), agent_colour: Sequence[float] = (0.2, 1.0, 0.2),
                 distractor_colour: Sequence[float] = (1.0, 0.3, 0.3), distractor_colour_jitter: float = 0.0,
                 distractor_motion: str = "circle",
                 distractor_speed: float = 0.3, background_shift: float = 0.0, batch_size: int = 32,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0) -> None:
        check_range("n", n, 1)
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.kw = dict(n=n, frames=frames, image_size=image_size, step=step, goal=list(goal),
                       agent_colour=list(agent_colour), distractor_colour=list(distractor_colour),
                       distractor_colour_jitter=distractor_colour_jitter,
                       distractor_motion=distractor_motion, distractor_speed=distractor_speed,
                       background_shift=background_shift)
        pointmass_trajectories(**{**self.kw, "n": 1})  # validate the options now, with a clear message

    def generate(self) -> dict[str, Tensor]:
        return pointmass_trajectories(generator=self.generator(), **self.kw)
