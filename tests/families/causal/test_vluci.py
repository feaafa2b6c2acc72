"""VLUCI oracles (P33) on the hidden-confounder SCM (lightning_vi.data.confounded).

Per seed: 1500 training and 500 test units; VLUCI fit 1500 Adam steps; T-learners (32x32 MLP heads, 600
steps) on ``[X, U_s]`` (10 posterior samples per training unit) and on ``X`` alone; test-unit predictions
averaged over 50 posterior samples given the unit's factual ``(X, T, Y)``.
Measured (seeds 0, 1, 2):  PEHE  VLUCI 0.79 0.88 0.68 vs X-only 0.97 1.21 0.91;
ATE error VLUCI 0.28 0.35 0.19 vs X-only 0.37 0.65 0.33; 90% counterfactual coverage VLUCI 0.886 0.852 0.880
(X-only 0.82 0.76 0.80). Mutations: U shuffled across test units PEHE 2.72 2.15 1.55; intervals without outcome
noise coverage 0.33 0.28 0.35; both KL weights 0: seed 0 PEHE 1.65, coverage 0.26 (both oracles fail).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_vi.data.confounded import confounded_scm
from lightning_vi.families.causal import (VLUCI, counterfactual_coverage, ate_error, fit_tlearner, fit_vluci, pehe,
                                          predict_counterfactuals)
from lightning_vi.registry import FAMILIES

SEEDS = (0, 1, 2)


def _run(seed: int) -> dict[str, dict[str, float]]:
    tr = confounded_scm(1500, generator=torch.Generator().manual_seed(seed))
    te = confounded_scm(500, generator=torch.Generator().manual_seed(1000 + seed))
    ite = te["mu1"] - te["mu0"]
    torch.manual_seed(seed)
    model = fit_vluci(VLUCI(x_dim=5, confounder_dim=1), tr, steps=1500, seed=seed)
    g = torch.Generator().manual_seed(seed)
    f_tr = model.confounder_features(tr["x"], tr["t"], tr["y"], 10, g)
    f_te = model.confounder_features(te["x"], te["t"], te["y"], 50, g)
    tl = fit_tlearner(f_tr, tr["t"], tr["y"], seed=seed)
    base = fit_tlearner(tr["x"], tr["t"], tr["y"], seed=seed)
    shuffled = torch.cat([f_te[..., :5], f_te[:, torch.randperm(500, generator=g), 5:]], -1)
    preds = {"vluci": predict_counterfactuals(tl, f_te, generator=g),
             "no_noise": predict_counterfactuals(tl, f_te, outcome_noise=False, generator=g),
             "shuffled": predict_counterfactuals(tl, shuffled, generator=g),
             "x_only": predict_counterfactuals(base, te["x"], generator=g)}
    return {k: {"pehe": pehe(p["ite"], ite), "ate": ate_error(p["ite"], ite),
                "cov": counterfactual_coverage(p, te["t"], te["y0"], te["y1"])} for k, p in preds.items()}


@pytest.fixture(scope="module")
def runs() -> dict[int, dict[str, dict[str, float]]]:
    return {s: _run(s) for s in SEEDS}


def test_inferred_confounder_lowers_pehe_and_ate_error(runs):
    for seed, r in runs.items():
        assert r["vluci"]["pehe"] < 0.9 * r["x_only"]["pehe"], (seed, r)
        assert r["vluci"]["ate"] < r["x_only"]["ate"], (seed, r)


def test_counterfactual_intervals_near_nominal_coverage(runs):
    for seed, r in runs.items():
        assert 0.8 <= r["vluci"]["cov"] <= 0.97, (seed, r["vluci"])


def test_intervals_without_outcome_noise_undercover(runs):
    """The posterior of U alone is too narrow for a counterfactual outcome: the noise term is needed."""
    for seed, r in runs.items():
        assert r["no_noise"]["cov"] < 0.8, (seed, r["no_noise"])


def test_confounder_samples_shuffled_across_units_lose_the_gain(runs):
    for seed, r in runs.items():
        assert r["shuffled"]["pehe"] > r["x_only"]["pehe"], (seed, r)


def test_kl_terms_match_closed_form():
    """kl_t = KL(q1 || N(0, I)) and kl_y = KL(q2 || q1), checked with torch.distributions."""
    data = confounded_scm(64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    m = VLUCI(x_dim=5, confounder_dim=2)
    out = m.objective(data)
    mu1, lv1 = m.posterior_t(data["x"], data["t"])
    mu2, lv2 = m.posterior(data["x"], data["t"], data["y"])
    q1, q2 = Normal(mu1, (0.5 * lv1).exp()), Normal(mu2, (0.5 * lv2).exp())
    assert torch.allclose(out["kl_t"], kl_divergence(q1, Normal(0.0, 1.0)).sum(-1).mean(), atol=1e-5)
    assert torch.allclose(out["kl_y"], kl_divergence(q2, q1).sum(-1).mean(), atol=1e-5)
    assert m.term_weights["kl_t"] == 1.0 and m.term_weights["kl_y"] == 1.0
    assert tuple(m.confounder_samples(data["x"], data["t"], data["y"], 7).shape) == (7, 64, 2)
    assert torch.equal(m.predict_step(data, 0), mu2)


def test_registered_family():
    assert FAMILIES.get("vluci") is VLUCI


def test_confounder_dimension_zero_is_a_clear_error():
    with pytest.raises(ValueError, match=r"confounder_dim=0.*confounder_dim >= 1"):
        VLUCI(x_dim=5, confounder_dim=0)


def test_mismatched_lengths_are_clear_errors():
    data = confounded_scm(20, generator=torch.Generator().manual_seed(0))
    m = VLUCI(x_dim=5)
    with pytest.raises(ValueError, match=r"one entry per unit.*'y': 19"):
        m.objective({"x": data["x"], "t": data["t"], "y": data["y"][:19]})
    with pytest.raises(ValueError, match=r"one entry per unit.*'t': 18"):
        m.confounder_samples(data["x"], data["t"][:18], data["y"])
    with pytest.raises(ValueError, match=r"one entry per unit"):
        fit_tlearner(data["x"][:10], data["t"], data["y"], steps=1)
    with pytest.raises(ValueError, match=r"x_dim=5"):
        m.objective({"x": data["x"][:, :4], "t": data["t"], "y": data["y"]})
