"""Issue 16 oracle on digits: a one-step SNOOPI student's samples are recognised by an independent classifier
(logistic regression on real 8x8 digits, :func:`fit_digits_classifier`) as the requested class at no less than
80% of the teacher's rate (the teacher sampled with DDIM-25 at guidance 3).

A tiny class-conditional DDPM teacher (MLP 128 x 2, 300 full-batch steps on 1500 digits) is trained in a module
fixture and saved as a ``ddpm`` checkpoint. Each student distils it for 150 steps (guidance scale drawn from
U[2, 4] each step, SNOOPI's PG-SB). Measured (docs/distillation_one_step.md): teacher 0.96; students
1.00 / 0.992 / 0.992 on seeds 0 / 1 / 2. The samples/s speed-up is in benchmarks/distillation.py (no
wall-clock asserts in tests).
"""

from __future__ import annotations

import pytest
import torch

from lightning_vi.families.distillation.one_step import SNOOPI
from lightning_vi.metrics.class_agreement import class_agreement

torch.set_num_threads(1)
N = 500
LABELS = torch.arange(N) % 10


@pytest.fixture(scope="module")
def digits_teacher(digits_teacher_parts):
    """``(checkpoint path, classifier, teacher agreement)``."""
    ddpm, ckpt, classify = (digits_teacher_parts[k] for k in ("ddpm", "ckpt", "classify"))
    x = ddpm.sample(N, torch.Generator().manual_seed(0), y=LABELS, guidance_scale=3.0, sampler="ddim", steps=25)
    rate = class_agreement(classify, x.clamp(0, 1), LABELS)
    print("teacher agreement", rate)
    return str(ckpt), classify, rate


def test_teacher_is_recognised(digits_teacher):
    """Sanity, so that the student's oracle is not vacuous: the teacher's samples are recognised (chance 0.1)."""
    assert digits_teacher[2] >= 0.8, digits_teacher[2]


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_one_step_student_is_recognised_at_80_percent_of_the_teacher(digits_teacher, seed):
    ckpt, classify, teacher_rate = digits_teacher
    torch.manual_seed(seed)
    student = SNOOPI(teacher=ckpt, guidance_range=[2.0, 4.0], hidden=256, depth=2, fake_hidden=128, fake_depth=2,
                     lr=1e-3, fake_lr=2e-3, fake_updates=2)
    student.fit_steps(150, 128, seed=seed)
    student.eval()
    x = student.sample(N, torch.Generator().manual_seed(0), y=LABELS)
    rate = class_agreement(classify, x.clamp(0, 1), LABELS)
    print("student", seed, rate, "teacher", teacher_rate)
    assert rate >= 0.8 * teacher_rate, {"student": rate, "teacher": teacher_rate, "seed": seed}
