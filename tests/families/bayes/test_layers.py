"""Oracles for the mean-field layers: closed-form KL, local reparameterization = weight sampling,
bayesianize, MC dropout, and the calibration metrics."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence as torch_kl

from lightning_vi.families.bayes.layers import (BayesConv2d, BayesLinear, bayesianize, kl_divergence,
                                                 mc_dropout_predict)
from lightning_vi.metrics.calibration import brier_score, classification_metrics, ece, nll, ood_auroc


def _randomize(layer) -> None:
    with torch.no_grad():
        layer.weight_mu.normal_(0, 0.5)
        layer.weight_rho.normal_(-1.0, 0.5)
        layer.bias_mu.normal_(0, 0.5)
        layer.bias_rho.normal_(-1.0, 0.5)


@pytest.mark.parametrize("layer", [BayesLinear(7, 5, prior_std=0.7), BayesConv2d(3, 4, 3, padding=1, prior_std=2.0)])
def test_kl_matches_closed_form_gaussian_kl(layer) -> None:
    L.seed_everything(0)
    _randomize(layer)
    prior = layer.prior_std
    expected = (torch_kl(Normal(layer.weight_mu, layer.weight_std), Normal(0.0, prior)).sum()
                + torch_kl(Normal(layer.bias_mu, layer.bias_std), Normal(0.0, prior)).sum())
    assert torch.allclose(layer.kl(), expected, rtol=1e-5)
    # and against the definition KL = E_q[log q - log p] by Monte Carlo (sum over all weights)
    q = Normal(layer.weight_mu, layer.weight_std)
    w = q.sample((4000,))
    mc = (q.log_prob(w) - Normal(0.0, prior).log_prob(w)).mean(0).sum()
    w_kl = torch_kl(q, Normal(0.0, prior)).sum()
    assert abs(mc - w_kl) / w_kl < 0.02


def test_kl_is_summed_and_masked() -> None:
    layer = BayesLinear(4, 3)
    _randomize(layer)
    full = layer.kl()
    mask = torch.zeros(3, 4)
    mask[0] = 1
    layer.set_mask(mask)
    kl_w = torch_kl(Normal(layer.weight_mu[0], layer.weight_std[0]), Normal(0.0, 1.0)).sum()
    kl_b = torch_kl(Normal(layer.bias_mu, layer.bias_std), Normal(0.0, 1.0)).sum()
    assert torch.allclose(layer.kl(), kl_w + kl_b, rtol=1e-5)
    assert full > layer.kl()
    assert torch.allclose(kl_divergence(nn.Sequential(layer, nn.ReLU())), layer.kl())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_local_reparameterization_matches_weight_sampling(kind) -> None:
    """Same per-example output mean and variance (statistically) as sampling whole weight tensors."""
    L.seed_everything(0)
    if kind == "linear":
        a, b = BayesLinear(6, 3, local_reparam=True), BayesLinear(6, 3, local_reparam=False)
        x = torch.randn(1, 6)
    else:
        a, b = BayesConv2d(2, 2, 3, local_reparam=True), BayesConv2d(2, 2, 3, local_reparam=False)
        x = torch.randn(1, 2, 4, 4)
    _randomize(a)
    b.load_state_dict(a.state_dict())
    n = 6000 if kind == "linear" else 3000
    with torch.no_grad():
        lr = a(x.expand(n, *x.shape[1:]))                       # n independent pre-activation samples
        ws = torch.cat([b(x) for _ in range(n)])                 # n independent weight samples
        w_mu, w_var = a.weight_moments()
        exact_mean = a._op(x, w_mu, a.bias_mu)[0]
        exact_var = a._op(x.pow(2), w_var, a.bias_std.pow(2))[0]
    se = (exact_var / n).sqrt()
    assert ((lr.mean(0) - exact_mean).abs() < 5 * se).all()
    assert ((ws.mean(0) - exact_mean).abs() < 5 * se).all()
    # variance of a sample variance ~ 2 var^2 / n
    var_tol = 5 * exact_var * (2 / n) ** 0.5
    assert ((lr.var(0) - exact_var).abs() < var_tol).all()
    assert ((ws.var(0) - exact_var).abs() < var_tol).all()
    assert ((lr.var(0) - ws.var(0)).abs() < 1.5 * var_tol).all()


def test_bayesianize_copies_weights_and_matches_deterministic_mean() -> None:
    L.seed_everything(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    x = torch.randn(5, 1, 8, 8)
    ref = net(x)
    bayesianize(net, prior_std=0.5)
    assert isinstance(net[0], BayesConv2d) and isinstance(net[3], BayesLinear)
    assert net[3].prior_std == 0.5
    for layer in (net[0], net[3]):
        layer.sampling = False
    assert torch.allclose(net(x), ref, atol=1e-6)
    assert kl_divergence(net) > 0


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_prior_scale_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match=r"prior_std=.*allowed: \(0"):
        BayesLinear(3, 2, prior_std=bad)
    with pytest.raises(ValueError, match="prior_std"):
        bayesianize(nn.Sequential(nn.Linear(2, 2)), prior_std=bad)


def test_mc_dropout_predict_restores_mode_and_varies() -> None:
    L.seed_everything(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3), nn.BatchNorm1d(3))
    net.eval()
    mean, spread = mc_dropout_predict(net, torch.randn(8, 4), num_samples=30)
    assert not net.training and not net[2].training and not net[4].training
    assert torch.allclose(mean.sum(-1), torch.ones(8), atol=1e-5)
    assert (spread > 0).any()


def test_metrics_known_values() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    y = torch.tensor([0, 1, 1, 0])
    assert torch.isclose(brier_score(probs, y), torch.tensor((0.02 + 0.08 + 0.72 + 0.5) / 4))
    assert torch.isclose(nll(probs, y), -torch.tensor([0.9, 0.8, 0.4, 0.5]).log().mean())
    # perfectly confident and right: ECE 0; uniform predictions at 50% accuracy: ECE 0
    assert ece(torch.eye(3), torch.arange(3)) < 1e-6
    m = classification_metrics(probs, y)
    assert torch.isclose(m["acc"], torch.tensor(0.75))
    assert torch.isclose(ood_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])), torch.tensor(1.0))


def test_metric_classes_equal_the_functions_over_several_batches():
    from lightning_vi.metrics.calibration import BrierScore, NegativeLogLikelihood, brier_score, nll

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(50, 4, generator=g), -1)
    y = torch.randint(0, 4, (50,), generator=g)
    for cls, fn in ((BrierScore, brier_score), (NegativeLogLikelihood, nll)):
        m = cls()
        m.update(probs[:20], y[:20])
        m.update(probs[20:], y[20:])
        assert torch.allclose(m.compute(), fn(probs, y), atol=1e-6)
