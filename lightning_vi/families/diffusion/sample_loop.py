"""The one reverse-diffusion loop shared by every discrete-time sampler (diffusers' pipeline loop).

A *scheduler* (``DDPMScheduler``, ``DDIMScheduler``) holds the descending ``timesteps`` and the update
``step(model_output, t, x_t, generator) -> x_prev``; :func:`sample_loop` draws ``x_T ~ N(0, I)`` and
alternates network call and scheduler step. ``model_fn(x_t, t[B])`` returns the network output of the
schedule's prediction type (guidance, conditioning and EMA are folded into it by the family).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, Tensor], Tensor]


class Scheduler(Protocol):
    timesteps: list[int]

    def step(self, model_output: Tensor, t: int, x_t: Tensor, generator: torch.Generator | None = None) -> Tensor: ...


def check_steps(steps: int, num_train_timesteps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0 or steps > num_train_timesteps:
        raise ValueError(f"num_inference_steps={steps!r} is out of range; allowed: integers in [1, {num_train_timesteps}]")


def randn(shape: Sequence[int], generator: torch.Generator | None, like: Tensor | None = None,
          device: torch.device | str | None = None) -> Tensor:
    """Standard normal noise drawn on CPU from ``generator`` (reproducible across devices), then moved."""
    dtype = like.dtype if like is not None else torch.float32
    z = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    return z.to(like.device if like is not None else device)


@torch.no_grad()
def sample_loop(model_fn: ModelFn, scheduler: Scheduler, shape: Sequence[int] | None = None,
                generator: torch.Generator | None = None, device: torch.device | str | None = None,
                x_T: Tensor | None = None) -> Tensor:
    """Run ``scheduler`` from ``x_T`` (drawn with ``shape`` from ``generator`` unless given) to ``x_0``."""
    if x_T is None:
        if shape is None:
            raise ValueError("sample_loop needs shape (to draw x_T) or x_T")
        x_T = randn(shape, generator, device=device)
    x = x_T
    for t in scheduler.timesteps:
        tb = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x = scheduler.step(model_fn(x, tb), t, x, generator)
    return x
