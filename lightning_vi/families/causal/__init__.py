"""Causal families: VLUCI (variational learning of unobserved confounders, P33) and its T-learner tools; GCRL
(generative causal representation learning for OOD motion forecasting, P25)."""

from lightning_vi.families.causal.gcrl import GCRL, ade_fde, finetune_gcrl, fit_gcrl
from lightning_vi.families.causal.vluci import (VLUCI, TLearner, ate_error, check_units, counterfactual_coverage,
                                                fit_tlearner, fit_vluci, pehe, predict_counterfactuals)

__all__ = ["GCRL", "VLUCI", "TLearner", "ade_fde", "ate_error", "check_units", "counterfactual_coverage",
           "finetune_gcrl", "fit_gcrl", "fit_tlearner", "fit_vluci", "pehe", "predict_counterfactuals"]
