"""Robustness and privacy audit tools (P32 Dropout Inversion Attack, ``robust.dia``).

Names are loaded lazily so that ``python -m lightning_vi.families.robust.dia`` runs without a runpy warning.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MaskedDropout", "MaskedDropoutMLP", "attack_result_metrics", "dropout_inversion", "infer_label"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lightning_vi.families.robust import dia

        return getattr(dia, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
