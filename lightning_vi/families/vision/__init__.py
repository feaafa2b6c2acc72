"""Variational methods for vision tasks: outlier rejection for 3D registration (P14 ``outlier_rejection``),
PULASki probabilistic segmentation (P22 ``pulaski``)."""

from lightning_vi.families.vision.outlier_rejection import VariationalOutlierRejection, registration_metrics, vote
from lightning_vi.families.vision.pulaski import ProbUNet, generalized_energy_distance, pearson
from lightning_vi.families.vision.registration import ransac, rotation_error_deg, translation_error, weighted_kabsch

__all__ = ["VariationalOutlierRejection", "registration_metrics", "vote", "ransac", "rotation_error_deg",
           "translation_error", "weighted_kabsch", "ProbUNet", "generalized_energy_distance", "pearson"]
