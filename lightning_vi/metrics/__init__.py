"""torchmetrics-based diagnostics."""

from lightning_vi.metrics.neural_collapse import NC1, NC2, NC3, NC4, ClassMeans
from lightning_vi.metrics.latent import (ActiveUnits, CollapsedDims, LatentStatistics, MutualInformation,
                                         passive_correlation, passive_pair_correlation)

__all__ = ["LatentStatistics", "ActiveUnits", "CollapsedDims", "MutualInformation", "passive_correlation",
           "passive_pair_correlation", "ClassMeans", "NC1", "NC2", "NC3", "NC4"]
