"""Oracles for the composable objectives (P05) on a conjugate Gaussian model."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.distributions import Normal

from lightning_vi.core.objectives import VariationalObjective, bound, iwae_bound, renyi_bound
from lightning_vi.families.vae import VAE

S2 = 0.5  # likelihood variance: z ~ N(0, 1), x | z ~ N(z, S2)


def model_terms(x, z):
    return Normal(z, math.sqrt(S2)).log_prob(x), Normal(0.0, 1.0).log_prob(z)


def exact(x):
    post = Normal(x / (1 + S2), math.sqrt(S2 / (1 + S2)))
    return post, Normal(0.0, math.sqrt(1 + S2)).log_prob(x)


def log_w(q, x, k):
    z = q.sample((k,))
    lik, prior = model_terms(x, z)
    return lik + prior - q.log_prob(z)


def test_elbo_at_exact_posterior_equals_log_evidence():
    L.seed_everything(0)
    x = torch.tensor([0.3, -1.2, 2.0])
    post, log_px = exact(x)
    obj = VariationalObjective("elbo", num_samples=16)
    z = obj.draw(post)
    terms = obj(*model_terms(x, z), post.log_prob(z))
    # At the exact posterior every weight equals p(x): the bound is exact with zero variance.
    assert torch.allclose(-terms["neg_bound"], log_px.mean(), atol=1e-5)


def test_iwae_increases_with_k_towards_log_evidence():
    L.seed_everything(0)
    x = torch.full((4000,), 1.5)
    _, log_px = exact(x)
    q = Normal(torch.zeros_like(x), torch.ones_like(x))  # a poor guide: the prior
    vals = [float(iwae_bound(log_w(q, x, k)).mean()) for k in (1, 4, 16, 64, 256)]
    assert all(a < b for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] < float(log_px[0]) + 0.01
    assert float(log_px[0]) - vals[-1] < 0.05 < float(log_px[0]) - vals[0]


def test_renyi_alpha_to_one_approaches_elbo():
    L.seed_everything(0)
    x = torch.full((2000,), 1.0)
    q = Normal(torch.zeros_like(x), torch.ones_like(x))
    lw = log_w(q, x, 8).double()
    elbo = float(bound(lw, "elbo").mean())
    gaps = [abs(float(renyi_bound(lw, a).mean()) - elbo) for a in (0.5, 0.9, 0.99, 0.999)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 5e-3 < gaps[0]
    assert torch.allclose(renyi_bound(lw, 0.0), iwae_bound(lw))
    assert torch.allclose(renyi_bound(lw, 1.0), lw.mean(0))


@pytest.mark.parametrize("objective", ["elbo", "iwae"])
@pytest.mark.parametrize("baseline", ["none", "moving_average"])
def test_score_and_reparam_gradients_agree(objective, baseline):
    torch.manual_seed(0)
    x = torch.tensor([1.0])
    n = 20000
    grads = {}
    for est in ("reparam", "score"):
        obj = VariationalObjective(objective, num_samples=4, estimator=est, baseline=baseline)
        m = torch.zeros(n, requires_grad=True)  # n independent copies -> n i.i.d. gradient estimates
        log_s = torch.full((n,), -0.5, requires_grad=True)
        if baseline == "moving_average" and est == "score":  # warm the average up on other draws
            with torch.no_grad():
                q0 = Normal(m, log_s.exp())
                z0 = q0.sample((4,))
                obj(*model_terms(x, z0), q0.log_prob(z0))
        q = Normal(m, log_s.exp())
        z = obj.draw(q)
        terms = obj(*model_terms(x, z), q.log_prob(z))
        (terms["neg_bound"] * n).backward()
        grads[est] = torch.stack([-m.grad, -log_s.grad])  # [2, n] per-copy gradients of the bound
    for i in range(2):
        r, s = grads["reparam"][i], grads["score"][i]
        se = math.sqrt(float(r.var() / n + s.var() / n))
        assert abs(float(r.mean() - s.mean())) < 4 * se, (objective, i, float(r.mean()), float(s.mean()), se)
    # and the estimates are not trivially zero
    assert abs(float(grads["reparam"][0].mean())) > 0.1


def test_bad_input_k_alpha_objective():
    with pytest.raises(ValueError, match=r"num_samples=0.*\[1"):
        VariationalObjective("iwae", num_samples=0)
    with pytest.raises(ValueError, match=r"alpha=1.5"):
        VariationalObjective("renyi", alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha=-0.1"):
        renyi_bound(torch.zeros(2, 3), -0.1)
    with pytest.raises(ValueError, match="objective='foo'"):
        VariationalObjective("foo")
    with pytest.raises(ValueError, match="num_samples=0"):
        VAE(input_shape=[4], latent_dim=2, objective="iwae", num_samples=0)
    with pytest.raises(ValueError, match="estimator='pathwise'"):
        VAE(input_shape=[4], latent_dim=2, estimator="pathwise")


@pytest.mark.parametrize("cfg", [dict(objective="iwae", num_samples=5), dict(objective="renyi", num_samples=5, alpha=0.5),
                                 dict(objective="elbo", num_samples=2, estimator="score", baseline="learned")])
def test_vae_trains_with_selected_objective(cfg):
    L.seed_everything(0)
    from lightning_vi.data.linear import ppca_data

    x = ppca_data(256, [2.0, 1.0], 6, 0.3, torch.Generator().manual_seed(0))["x"]
    m = VAE(input_shape=[6], latent_dim=2, architecture="mlp", hidden_dims=[32], obs_std=0.3, **cfg)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss, terms = m.compute_loss({"x": x}, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(terms["elbo"])
    assert float(m.iwae(x, 32).mean()) > first + 1.0
