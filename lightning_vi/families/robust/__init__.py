"""Robustness and privacy audit tools (P32 Dropout Inversion Attack)."""

from lightning_vi.families.robust.dia import (
    MaskedDropout,
    MaskedDropoutMLP,
    attack_result_metrics,
    dropout_inversion,
    infer_label,
)

__all__ = ["MaskedDropout", "MaskedDropoutMLP", "attack_result_metrics", "dropout_inversion", "infer_label"]
