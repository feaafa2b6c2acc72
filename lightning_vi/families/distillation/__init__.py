"""Score distillation: frozen teachers (:mod:`teachers`) and the particle methods SDS/VSD (Wang et al.
2023, ProlificDreamer) and ESD (Wang et al. 2024, entropic score distillation), and the one-step students
f-distill (Xu et al. 2025) and SNOOPI (:mod:`one_step`)."""

from lightning_vi.families.distillation.particles import (
    DistillationSteps,
    ScoreDistillation,
    ScoreMLP,
    fit_particles,
    knn_entropy,
    mode_stats,
)
from lightning_vi.families.distillation.one_step import SNOOPI, FDistill, NoiseDataModule, OneStepDistiller
from lightning_vi.families.distillation.teachers import (
    CheckpointTeacher,
    GaussianMixtureTeacher,
    Teacher,
    guided_eps,
    load_teacher,
    resolve_teacher,
)

__all__ = ["DistillationSteps", "ScoreDistillation", "ScoreMLP", "fit_particles", "knn_entropy", "mode_stats",
           "CheckpointTeacher", "GaussianMixtureTeacher", "Teacher", "guided_eps", "load_teacher", "resolve_teacher",
           "FDistill", "SNOOPI", "NoiseDataModule", "OneStepDistiller"]
