"""Robust learning families (noisy labels, ...)."""

from lightning_vi.families.robust.coteaching import CoTeaching
