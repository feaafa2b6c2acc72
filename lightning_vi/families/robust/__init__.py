"""Robust learning under noisy labels (P02 ``coteaching``) and privacy audit tools (P32 Dropout Inversion
Attack, ``robust.dia``).

The DIA names are loaded lazily so that ``python -m lightning_vi.families.robust.dia`` runs without a runpy warning.
"""

from __future__ import annotations

from typing import Any

from lightning_vi.families.robust.coteaching import CoTeaching

_DIA = ("MaskedDropout", "MaskedDropoutMLP", "attack_result_metrics", "dropout_inversion", "infer_label")
__all__ = ["CoTeaching", *_DIA]


def __getattr__(name: str) -> Any:
    if name in _DIA:
        from lightning_vi.families.robust import dia

        return getattr(dia, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
