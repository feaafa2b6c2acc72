"""Shared sequence-batch checks and helpers (not a family; skipped by discovery)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


def stack_sequences(seqs: Sequence[Tensor], pad: bool = False) -> tuple[Tensor, Tensor]:
    """Stack ``[T_i, ...]`` sequences into ``x`` [B, T, ...] and ``mask`` [B, T].

    Sequences of different lengths need ``pad=True`` (zero padding, ``mask`` marks the observed steps);
    without it a ``ValueError`` names the lengths.
    """
    lengths = [int(s.shape[0]) for s in seqs]
    if len(set(lengths)) > 1 and not pad:
        raise ValueError(f"sequences have mismatched lengths {lengths} and no mask; pass pad=True (or give "
                         "batch['mask']) so the padded steps are masked out")
    t_max = max(lengths)
    x = seqs[0].new_zeros(len(seqs), t_max, *seqs[0].shape[1:])
    mask = torch.zeros(len(seqs), t_max)
    for i, s in enumerate(seqs):  # list of variable-length inputs: a collation step, not a hot path
        x[i, : len(s)] = s
        mask[i, : len(s)] = 1.0
    return x, mask


def sequence_batch(batch: Any, time_dim: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """Validate and return ``(x, t, mask)`` of a sequence batch (``t``/``mask`` default to a regular grid).

    Raises ``ValueError`` for a list of unequal-length sequences without ``mask``, ``t``/``mask`` whose
    length differs from ``x``'s time axis, and times that are not strictly increasing.
    """
    if not isinstance(batch, dict):
        batch = {"x": batch}
    x = batch["x"]
    if isinstance(x, (list, tuple)):
        x, mask = stack_sequences(x, pad="mask" in batch)
        if "mask" not in batch:
            batch["mask"] = mask
    b, n_t = x.shape[0], x.shape[time_dim]
    t = batch.get("t")
    if t is None:
        t = torch.arange(n_t, dtype=torch.float32, device=x.device).expand(b, n_t)
    if t.ndim == 1:
        t = t.expand(b, -1)
    if tuple(t.shape) != (b, n_t):
        raise ValueError(f"batch['t'] has shape {tuple(t.shape)} but x has {n_t} time steps (shape "
                         f"{tuple(x.shape)}); sequences of mismatched lengths need padding and batch['mask']")
    diffs = t[:, 1:] - t[:, :-1]
    if n_t > 1 and not bool((diffs > 0).all()):
        i, j = map(int, torch.nonzero(diffs <= 0)[0])
        raise ValueError(f"batch['t'] must be strictly increasing along time; sequence {i} has t[{j}]="
                         f"{float(t[i, j]):.6g} then t[{j + 1}]={float(t[i, j + 1]):.6g}")
    mask = batch.get("mask")
    if mask is None:
        mask = torch.ones(b, n_t, device=x.device)
    elif tuple(mask.shape) != (b, n_t):
        raise ValueError(f"batch['mask'] has shape {tuple(mask.shape)}; expected {(b, n_t)} to match x "
                         f"(shape {tuple(x.shape)})")
    return x, t.to(x.device).float(), mask.to(x.device).float()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over masked time steps (values [B, T]) per sequence, averaged over the batch."""
    return (values * mask).sum(1).mean()
