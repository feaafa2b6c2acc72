"""Information-bottleneck families: VIB, contrastive VIB (CVIB), Cauchy-Schwarz IB for regression."""

from lightning_vi.families.bottleneck.cs_ib import CSIB
from lightning_vi.families.bottleneck.cvib import CVIB
from lightning_vi.families.bottleneck.vib import VIB

__all__ = ["VIB", "CVIB", "CSIB"]
