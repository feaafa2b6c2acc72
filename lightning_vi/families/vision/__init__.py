"""Variational methods for vision tasks: outlier rejection for 3D registration (P14 ``outlier_rejection``),
PULASki probabilistic segmentation (P22 ``pulaski``), ScoreDVI denoising (P13, ``vision.score_dvi``) and ID^2
origin identification (P46, ``vision.origin_id``).

The ScoreDVI and ID^2 names load lazily so that ``python -m lightning_vi.families.vision.score_dvi`` (and
``.origin_id``) run without a runpy warning.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_vi.families.vision.outlier_rejection import VariationalOutlierRejection, registration_metrics, vote
from lightning_vi.families.vision.pulaski import ProbUNet, generalized_energy_distance, pearson
from lightning_vi.families.vision.registration import ransac, rotation_error_deg, translation_error, weighted_kabsch

#: lazily loaded name -> its module (the function ``score_dvi`` lives in the module of that name)
_LAZY = {"GaussianMMSEDenoiser": "score_dvi", "dip_fit": "score_dvi",
         "fit_linear_map": "origin_id", "mean_average_precision": "origin_id", "sdedit": "origin_id"}
__all__ = ["VariationalOutlierRejection", "registration_metrics", "vote", "ransac", "rotation_error_deg",
           "translation_error", "weighted_kabsch", "ProbUNet", "generalized_energy_distance", "pearson", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"lightning_vi.families.vision.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
