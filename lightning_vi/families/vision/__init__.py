"""Variational methods for vision tasks: outlier rejection for 3D registration (P14 ``outlier_rejection``),
PULASki probabilistic segmentation (P22 ``pulaski``) and ScoreDVI denoising (P13, ``vision.score_dvi``).

The ScoreDVI names load lazily so that ``python -m lightning_vi.families.vision.score_dvi`` runs without a
runpy warning.
"""

from __future__ import annotations

from typing import Any

from lightning_vi.families.vision.outlier_rejection import VariationalOutlierRejection, registration_metrics, vote
from lightning_vi.families.vision.pulaski import ProbUNet, generalized_energy_distance, pearson
from lightning_vi.families.vision.registration import ransac, rotation_error_deg, translation_error, weighted_kabsch

_SCORE_DVI = ("GaussianMMSEDenoiser", "dip_fit")  # the function is vision.score_dvi.score_dvi (module of that name)
__all__ = ["VariationalOutlierRejection", "registration_metrics", "vote", "ransac", "rotation_error_deg",
           "translation_error", "weighted_kabsch", "ProbUNet", "generalized_energy_distance", "pearson", *_SCORE_DVI]


def __getattr__(name: str) -> Any:
    if name in _SCORE_DVI:
        import importlib

        return getattr(importlib.import_module("lightning_vi.families.vision.score_dvi"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
