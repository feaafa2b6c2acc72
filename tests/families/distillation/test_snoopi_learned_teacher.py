"""Issue 16 oracle (P24, SNOOPI / PG-SB, Nguyen et al. 2024, Sec. 4.1) with a *learned* teacher.

A class-conditional DDPM (class = mode, condition dropout 0.2, so it has a null branch) is trained on the
8-Gaussian ring in a module fixture and saved as a ``ddpm`` checkpoint, the checkpoint-teacher path of
:mod:`lightning_vi.families.distillation.teachers`. Its classifier-free guided score at a large scale
amplifies its errors off the data support. SNOOPI students (VSD weighting, lr 3e-3, 300 steps) are
distilled with a fixed scale ``[S, S]`` (SwiftBrush's fixed guidance) and with ``U[2, S]`` drawn each step
(PG-SB), ``S = 20``, on seeds 0, 1, 2.

Defined before the runs, one setting for every seed (docs/distillation_one_step.md, "learned teacher"):
quality = share of 2000 samples within 0.5 of the requested mode (independent of the student: the ring's
exact mode centres); *diverged* = a non-finite sample, or mean distance to the requested mode > 1, or more
than 20% of the samples outside radius 4 (the data lie within 2.4).

Asserted (what holds on seeds 0-4): the fixed scale diverges on at least 2 of the 3 seeds (measured: 5 of 5),
the random scale on none (0 of 5), and the random scale's quality beats the fixed one's on every seed (by more
than 0.1 on seeds 0-2, the margin asserted; by 0.02 on seed 4).
Not asserted: a lower seed-to-seed spread of the random scale's quality. It is lower on seeds 0-2 (std 0.05 vs
0.08) but higher on seeds 0-4 (0.11 vs 0.09), and at ``S = 15`` it is higher on seeds 0-2 (docs' table).

Digits (the recipe of ``test_one_step_digits.py``'s teacher fixture, class-conditional MLP DDPM on 8x8 digits):
fixed ``[8, 8]`` vs ``U[2, 8]``, 150 student steps; quality = class agreement of an independent logistic regression
trained on real digits. Asserted: the random scale's agreement is higher on every seed and its seed-to-seed std
is lower (measured, seeds 0-2: fixed 0.67 / 0.77 / 0.79, std 0.066; random 1.00 / 0.94 / 0.97, std 0.032;
seeds 0-4: std 0.062 vs 0.026), and the fixed scale saturates (diverges) on >= 2 of 3 seeds, the random one on none.

Mutations that make the divergence test fail: the random path replaced by the fixed high scale; the fake score
left unguided (scale 1) while the teacher is guided; one scale drawn at the first step and reused.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.distillation.one_step import SNOOPI
from lightning_vi.families.distillation.teachers import GaussianMixtureTeacher
from lightning_vi.metrics.class_agreement import class_agreement

torch.set_num_threads(1)
RING = GaussianMixtureTeacher.ring()  # radius 2, std 0.1: the data and the exact mode centres
S, LOW, SEEDS = 20.0, 2.0, (0, 1, 2)
STUDENT = dict(time_weighting="vsd", lr=3e-3, fake_updates=2, t_max=0.25, hidden=128, depth=2,
               fake_hidden=64, fake_depth=2, check_finite=False)


def ring_quality(student: SNOOPI, n: int = 2000) -> dict[str, float | bool]:
    """On-requested-mode share, mean distance to the requested mode, share outside radius 4, diverged."""
    y = torch.arange(n) % 8
    x = student.sample(n, torch.Generator().manual_seed(0), y=y)
    d = (x - RING.means[y]).norm(dim=1)
    finite = bool(torch.isfinite(x).all())
    quality, dist, outside = float((d < 0.5).float().mean()), float(d.mean()), float((x.norm(dim=1) > 4).float().mean())
    return {"quality": quality, "dist": dist, "outside": outside,
            "diverged": (not finite) or dist > 1.0 or outside > 0.2}


@pytest.fixture(scope="module")
def ring_ddpm_teacher(tmp_path_factory) -> str:
    """Checkpoint path of a class-conditional ring DDPM (MLP 128 x 3, 400 full-batch steps on 4000 points)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 8, (4000,), generator=g)
    x = RING.sample(4000, generator=g, cond=y)
    L.seed_everything(0)
    ddpm = DDPM(input_shape=[2], hidden=128, depth=3, num_classes=8, p_uncond=0.2)
    fit_objective(ddpm, {"x": x, "y": y}, 400, 3e-3)
    ckpt = tmp_path_factory.mktemp("ring_teacher") / "ddpm.ckpt"
    torch.save({"hyper_parameters": dict(ddpm.hparams), "lvi_class_path": "lightning_vi.families.diffusion.ddpm.DDPM",
                "state_dict": ddpm.state_dict()}, ckpt)
    return str(ckpt)


def distil(teacher: str, guidance_range: list[float], seed: int, steps: int = 300) -> dict[str, float | bool]:
    torch.manual_seed(seed)
    student = SNOOPI(teacher=teacher, guidance_range=guidance_range, **STUDENT)
    student.fit_steps(steps, 128, seed=seed)
    student.eval()
    return ring_quality(student)


@pytest.fixture(scope="module")
def runs(ring_ddpm_teacher) -> dict[str, list[dict]]:
    return {name: [distil(ring_ddpm_teacher, rng, seed) for seed in SEEDS]
            for name, rng in (("fixed", [S, S]), ("random", [LOW, S]))}


def test_learned_teacher_is_on_the_ring(ring_ddpm_teacher):
    """Sanity, so that the oracle is not vacuous: the teacher's own guided samples sit on the requested modes."""
    from lightning_vi.families.distillation.teachers import load_teacher

    teacher, _ = load_teacher(ring_ddpm_teacher)
    y = torch.arange(800) % 8
    x = teacher.model.sample(800, torch.Generator().manual_seed(0), y=y, guidance_scale=2.0)
    assert float(((x - RING.means[y]).norm(dim=1) < 0.5).float().mean()) > 0.8


def test_fixed_large_scale_diverges_where_the_random_scale_does_not(runs):
    """SNOOPI's claim (Sec. 4.1): a fixed large guidance scale with a learned teacher is unstable, a scale drawn
    from ``U[2, S]`` each step is not. Fixed diverges on >= 2 of 3 seeds, random on none."""
    fixed = [r["diverged"] for r in runs["fixed"]]
    random = [r["diverged"] for r in runs["random"]]
    assert sum(fixed) >= 2 and not any(random), runs


def test_random_scale_beats_the_fixed_large_scale_on_every_seed(runs):
    """PAPERS P24: where the fixed scale diverges or degrades, the random scale keeps the samples on the requested
    mode. Measured on-mode share, seeds 0 / 1 / 2: fixed 0.46 / 0.35 / 0.32, random 0.65 / 0.58 / 0.66."""
    for seed, f, r in zip(SEEDS, runs["fixed"], runs["random"]):
        assert r["quality"] > f["quality"] + 0.1, {"seed": seed, "fixed": f, "random": r}


# -- digits --------------------------------------------------------------------------------------------
N_DIGITS, S_DIGITS = 500, 8.0
DIGIT_LABELS = torch.arange(N_DIGITS) % 10


@pytest.fixture(scope="module")
def digits_runs(digits_teacher_parts) -> dict[str, list[dict]]:
    """Class agreement and saturation (share of model-space pixels outside [-1.5, 1.5]) of fixed ``[8, 8]`` and ``U[2, 8]`` students, seeds 0-2, from the digits-test teacher recipe
    (MLP 128 x 2, ``p_uncond 0.2``, 300 full-batch steps on 1500 digits)."""
    ckpt, classify = digits_teacher_parts["ckpt"], digits_teacher_parts["classify"]
    out: dict[str, list[dict]] = {}
    for name, rng in (("fixed", [S_DIGITS, S_DIGITS]), ("random", [2.0, S_DIGITS])):
        out[name] = []
        for seed in SEEDS:
            torch.manual_seed(seed)
            student = SNOOPI(teacher=str(ckpt), guidance_range=rng, hidden=256, depth=2, fake_hidden=128, fake_depth=2,
                             lr=1e-3, fake_lr=2e-3, fake_updates=2, check_finite=False)
            student.fit_steps(150, 128, seed=seed)
            student.eval()
            z = student.sample(N_DIGITS, torch.Generator().manual_seed(0), y=DIGIT_LABELS, model_space=True)
            x = student.teacher.from_model_space(z).nan_to_num(0.0).clamp(0, 1)
            agree = float(class_agreement(classify, x, DIGIT_LABELS))
            saturated = float((z.nan_to_num(1e6).abs() > 1.5).float().mean())
            out[name].append({"agree": agree, "saturated": saturated,
                              "diverged": not bool(torch.isfinite(z).all()) or agree < 0.3 or saturated > 0.1})
    return out


def test_digits_random_scale_has_higher_and_less_spread_class_agreement(digits_runs):
    """Issue 16 on digits: ``U[2, 8]`` beats the fixed scale 8 on every seed, with a lower std over seeds 0-2."""
    fixed = [r["agree"] for r in digits_runs["fixed"]]
    random = [r["agree"] for r in digits_runs["random"]]
    assert all(r > f + 0.1 for f, r in zip(fixed, random)), digits_runs
    assert torch.tensor(random).std() < torch.tensor(fixed).std(), digits_runs


def test_digits_fixed_scale_saturates_where_the_random_scale_does_not(digits_runs):
    """Divergence on digits, defined before the runs: non-finite, agreement < 0.3, or more than 10% of the model-space
    pixels outside [-1.5, 1.5] (the data lie in [-1, 1]). Measured, seeds 0-4: fixed 8 saturates .29 .17 .09 .21 .12
    (4 of 5 diverged), U[2, 8] .03 .04 .06 .05 .05 (none). The teacher's own DDIM-25 samples at guidance 3 have 29%
    of their pixels beyond 1.5, so this measures the student's drift, not a property the teacher lacks."""
    fixed = [r["diverged"] for r in digits_runs["fixed"]]
    random = [r["diverged"] for r in digits_runs["random"]]
    assert sum(fixed) >= 2 and not any(random), digits_runs
