"""Causal families: VLUCI (variational learning of unobserved confounders, P33) and its T-learner tools."""

from lightning_vi.families.causal.vluci import (VLUCI, TLearner, ate_error, check_units, counterfactual_coverage,
                                                fit_tlearner, fit_vluci, pehe, predict_counterfactuals)

__all__ = ["VLUCI", "TLearner", "ate_error", "check_units", "counterfactual_coverage", "fit_tlearner", "fit_vluci",
           "pehe", "predict_counterfactuals"]
