"""Graph families: variationally regularized graph representation learning for EHR (P34)."""

from lightning_vi.families.graph.ehr_gnn import EHRGNN, check_records, effective_rank

__all__ = ["EHRGNN", "check_records", "effective_rank"]
