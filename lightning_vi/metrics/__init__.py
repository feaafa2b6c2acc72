"""torchmetrics-based diagnostics."""

from lightning_vi.metrics.latent import (ActiveUnits, CollapsedDims, LatentStatistics, MutualInformation,
                                         passive_correlation, passive_pair_correlation)

__all__ = ["LatentStatistics", "ActiveUnits", "CollapsedDims", "MutualInformation", "passive_correlation",
           "passive_pair_correlation"]
