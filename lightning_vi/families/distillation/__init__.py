"""Score distillation: frozen teachers (:mod:`teachers`) and the particle methods SDS/VSD (Wang et al.
2023, ProlificDreamer) and ESD (Wang et al. 2024, entropic score distillation)."""

from lightning_vi.families.distillation.particles import (
    DistillationSteps,
    ScoreDistillation,
    ScoreMLP,
    fit_particles,
    knn_entropy,
    mode_stats,
)
from lightning_vi.families.distillation.teachers import (
    CheckpointTeacher,
    GaussianMixtureTeacher,
    Teacher,
    guided_eps,
    load_teacher,
    resolve_teacher,
)

__all__ = ["DistillationSteps", "ScoreDistillation", "ScoreMLP", "fit_particles", "knn_entropy", "mode_stats",
           "CheckpointTeacher", "GaussianMixtureTeacher", "Teacher", "guided_eps", "load_teacher", "resolve_teacher"]
