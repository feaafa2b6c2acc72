"""Variational methods for vision tasks: outlier rejection for 3D registration (P14 ``outlier_rejection``)."""

from lightning_vi.families.vision.outlier_rejection import VariationalOutlierRejection, registration_metrics, vote
from lightning_vi.families.vision.registration import ransac, rotation_error_deg, translation_error, weighted_kabsch

__all__ = ["VariationalOutlierRejection", "registration_metrics", "vote", "ransac", "rotation_error_deg",
           "translation_error", "weighted_kabsch"]
from lightning_vi.families.vision.score_dvi import GaussianMMSEDenoiser, dip_fit, score_dvi  # noqa: E402,F401  (P13)
