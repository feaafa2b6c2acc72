"""Oracles of the one-step students on the exact 8-Gaussian ring (teacher = GaussianMixtureTeacher.ring):

- f-distill: the JS student covers more modes than the reverse-KL (DMD/VSD) student, in the
  mode-seeking regime of low noise levels (t <= 0.05 T). Modes covered = modes holding >= 5% of the
  samples, a sample counting for mode k when it lies within 0.5 (5 mode stds) of that mode's centre; the
  centres are written here (radius 2, angles 2 pi k / 8), independent of the teacher's code.
  Runs of one seed share the random stream (the discriminator is trained for every weighting) and differ in
  h alone. Measured on seeds 0, 1, 2 (docs/distillation_one_step.md): reverse_kl 2/3/1, js 5/5/8,
  forward_kl 2/3/3 (max_log_ratio 2): forward KL is NOT better than reverse KL here, so only JS is asserted.
- SNOOPI: see test_snoopi_* below.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vi.families.distillation.one_step import FDistill, SNOOPI

torch.set_num_threads(1)

ANGLES = 2 * math.pi * torch.arange(8) / 8
CENTRES = 2.0 * torch.stack([ANGLES.cos(), ANGLES.sin()], 1)
RING = dict(hidden=128, fake_hidden=64, disc_hidden=64, depth=2, fake_depth=2, lr=1.5e-3, fake_lr=3e-3,
            fake_updates=2, t_max=0.05, max_log_ratio=2.0)


def covered_modes(x: torch.Tensor, radius: float = 0.5, share: float = 0.05) -> int:
    d = torch.cdist(x, CENTRES)
    near = d.min(1)
    counts = torch.bincount(near.indices[near.values < radius], minlength=8).float() / x.shape[0]
    return int((counts >= share).sum())


@pytest.fixture(scope="module")
def ring_students():
    out = {}
    for weighting in ("reverse_kl", "js"):
        torch.manual_seed(0)
        m = FDistill(teacher="ring", weighting=weighting, **RING)
        m.fit_steps(400, 128, seed=0)
        out[weighting] = covered_modes(m.sample(2000, torch.Generator().manual_seed(100)))
    print("modes covered", out)
    return out


def test_js_covers_more_modes_than_reverse_kl(ring_students):
    assert ring_students["js"] >= ring_students["reverse_kl"] + 2, ring_students


# -- SNOOPI ----------------------------------------------------------------------------------------------
SNOOPI_KW = dict(hidden=128, fake_hidden=64, depth=2, fake_depth=2, lr=3e-3, fake_lr=3e-3, fake_updates=2, t_max=0.25)


def on_requested_mode(x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of samples within 0.5 of the centre of the mode they were asked for (class k = mode k)."""
    return float(((x - CENTRES[y]).norm(dim=1) < 0.5).float().mean())


def test_snoopi_random_scale_beats_a_fixed_large_scale():
    """PG-SB: a guidance scale drawn from U[1, 8] each step (teacher and fake score) vs the fixed scale 8.
    Measured on seeds 0, 1, 2 (docs): fixed 0.30 / 0.37 / 0.22, random 0.59 / 0.50 / 0.30 (random wins on
    each seed; its seed-to-seed spread is larger, see docs)."""
    y = torch.arange(2000) % 8
    quality = {}
    for name, rng in (("fixed", [8.0, 8.0]), ("random", [1.0, 8.0])):
        torch.manual_seed(0)
        m = SNOOPI(teacher="ring", guidance_range=rng, **SNOOPI_KW)
        hist = m.fit_steps(600, 128, seed=0)
        x = m.sample(2000, torch.Generator().manual_seed(5), y=y)
        assert torch.isfinite(x).all()
        quality[name] = on_requested_mode(x, y)
        scales = [h["guidance_scale"] for h in hist]
        if name == "random":
            assert min(scales) >= 1.0 and max(scales) <= 8.0 and max(scales) - min(scales) > 5
    print("on-requested-mode share", quality)
    assert quality["random"] > quality["fixed"] + 0.05, quality
