"""Synthetic sequences: sine mixtures with known frequencies, optionally irregularly sampled.

Batches carry ``t`` (times) and ``mask`` (1 = observed) so irregular data needs no special casing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_vi.data.base import InMemoryDataModule


def sine_mixtures(n: int, length: int, generator: torch.Generator, n_components: int = 2, channels: int = 1,
                  freq_range: tuple[float, float] = (0.5, 3.0), duration: float = 2.0, noise: float = 0.0,
                  irregular: bool = False, keep: float = 0.5, freqs: list[float] | None = None) -> dict[str, Tensor]:
    """``x[b, i, c] = sum_k a_bkc sin(2 pi f_bk t_bi + phi_bkc) + noise``.

    Regular: ``t`` is a shared grid. Irregular: per-sequence sorted uniform times, and ``mask`` keeps
    a random fraction ``keep`` of the points (at least 2). Returns ``x, t, mask, freqs``.
    ``freqs`` (optional, one per component) fixes the frequencies of every sequence (only amplitudes and
    phases vary), e.g. to check that a model recovers them.
    """
    if length < 2:
        raise ValueError(f"length={length!r} is out of range; allowed: [2, inf)")
    g = generator
    lo, hi = freq_range
    if freqs is not None:
        if len(freqs) != n_components:
            raise ValueError(f"freqs={list(freqs)!r} must have n_components={n_components} entries")
        torch.rand(n, n_components, generator=g)  # keep the random stream identical to the random-freq case
        freqs = torch.as_tensor(list(freqs), dtype=torch.float32).expand(n, n_components).clone()
    else:
        freqs = lo + (hi - lo) * torch.rand(n, n_components, generator=g)
    amp = 0.5 + 0.5 * torch.rand(n, n_components, channels, generator=g)
    phase = 2 * math.pi * torch.rand(n, n_components, channels, generator=g)
    if irregular:
        t = torch.sort(duration * torch.rand(n, length, generator=g), dim=1).values
        mask = (torch.rand(n, length, generator=g) < keep).float()
        mask[:, :2] = 1.0
    else:
        t = torch.linspace(0, duration, length).expand(n, length).clone()
        mask = torch.ones(n, length)
    arg = 2 * math.pi * freqs[:, None, :, None] * t[:, :, None, None] + phase[:, None]  # [n, T, K, C]
    x = (amp[:, None] * torch.sin(arg)).sum(2)
    if noise > 0:
        x = x + noise * torch.randn(x.shape, generator=g)
    return {"x": x, "t": t, "mask": mask, "freqs": freqs}


class SineSequenceDataModule(InMemoryDataModule):
    """Sine-mixture sequences ``x`` [N, T, C] with ``t`` [N, T], ``mask`` [N, T] and ``freqs`` [N, K].

    ``freqs`` fixes the component frequencies; ``with_index`` adds ``index`` [N] (the sequence's id, for
    models with per-sequence parameters such as PV-RNN's adaptive vectors).
    """

    def __init__(self, n: int = 2000, length: int = 64, n_components: int = 2, channels: int = 1,
                 duration: float = 2.0, noise: float = 0.0, irregular: bool = False, keep: float = 0.5,
                 batch_size: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0,
                 num_workers: int = 0, freqs: list[float] | None = None, with_index: bool = False) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.kw = dict(n=n, length=length, n_components=n_components, channels=channels, duration=duration,
                       noise=noise, irregular=irregular, keep=keep, freqs=freqs)
        self.with_index = with_index

    def generate(self) -> dict[str, Tensor]:
        data = sine_mixtures(generator=self.generator(), **self.kw)
        if self.with_index:
            data["index"] = torch.arange(len(data["x"]))
        return data
