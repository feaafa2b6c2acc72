"""Variational methods for vision tasks: outlier rejection for 3D registration (P14 ``outlier_rejection``), ID^2 origin identification (P46 ``origin_id``)."""

from lightning_vi.families.vision.outlier_rejection import VariationalOutlierRejection, registration_metrics, vote
from lightning_vi.families.vision.origin_id import fit_linear_map, mean_average_precision, sdedit
from lightning_vi.families.vision.registration import ransac, rotation_error_deg, translation_error, weighted_kabsch

__all__ = ["VariationalOutlierRejection", "registration_metrics", "vote", "ransac", "rotation_error_deg",
           "translation_error", "weighted_kabsch", "fit_linear_map", "mean_average_precision", "sdedit"]
