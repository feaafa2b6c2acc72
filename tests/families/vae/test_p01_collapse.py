"""P01 oracles: posterior collapse in linear CVAE and HVAE matches the linear analysis."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_vi.families.vae.cvae import CVAE, linear_cvae_collapse_prediction
from lightning_vi.families.vae.hvae import HVAE
from lightning_vi.families.vae.vae import VAE

N, D, SIGMA = 2000, 8, 0.5


def data():
    """Outputs x whose latent part has stds (2, 1, 0.2) and whose other part (std 1.5, 2 dirs) is
    explained by the condition c (input/output correlation)."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(D, D, generator=g)).Q
    c, z = torch.randn(N, 3, generator=g), torch.randn(N, 3, generator=g)
    x = (z * torch.tensor([2.0, 1.0, 0.2])) @ q[:, :3].T + (1.5 * c[:, :2]) @ q[:, 3:5].T
    return x + SIGMA * torch.randn(N, D, generator=g), c


def fit(model, batch, steps=400, lr=0.02):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = model.compute_loss(batch, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model.objective(batch)


def test_linear_cvae_and_vae_collapse_match_theory():
    L.seed_everything(0)
    x, c = data()
    beta = 2.0  # threshold beta * sigma^2 = 0.5
    pred_cvae = linear_cvae_collapse_prediction(x, c, 4, beta, SIGMA)
    pred_vae = linear_cvae_collapse_prediction(x, None, 4, beta, SIGMA)
    assert (pred_cvae, pred_vae) == (2, 0)  # the condition explains 2 directions -> 2 more collapse
    cvae = CVAE(input_shape=[D], latent_dim=4, condition="vector", condition_dim=3, condition_key="c",
                architecture="linear", likelihood="gaussian", obs_std=SIGMA, kl_weight=beta)
    kl = fit(cvae, {"x": x, "c": c})["kl_per_dim"]
    assert int((kl < 0.02).sum()) == pred_cvae, kl
    assert bool((kl[kl >= 0.02] > 0.2).all()), kl  # the others are clearly active
    vae = VAE(input_shape=[D], latent_dim=4, architecture="linear", obs_std=SIGMA, kl_weight=beta)
    kl = fit(vae, {"x": x})["kl_per_dim"]
    assert int((kl < 0.02).sum()) == pred_vae, kl


def test_hvae_learnable_encoder_variance_collapses_second_level():
    L.seed_everything(0)
    x, _ = data()
    var2 = {}
    for ev in ("learnable", "fixed"):
        m = HVAE(input_shape=[D], latent_dims=[4, 2], architecture="linear", encoder_variance=ev,
                 encoder_std=0.3, obs_std=SIGMA, kl_weight=[1.0, 1.5])
        fit(m, {"x": x})
        with torch.no_grad():
            var2[ev] = m.encode(x)[0][:, 4:].var(0)  # activity of z2: variance of its posterior mean
    assert bool((var2["learnable"] < 0.05).all()), var2
    assert bool((var2["fixed"] > 0.1).all()), var2


def test_hvae_bad_input():
    with pytest.raises(ValueError, match="latent_dims"):
        HVAE(input_shape=[4], latent_dims=[4])
    with pytest.raises(ValueError, match="encoder_variance='free'"):
        HVAE(input_shape=[4], encoder_variance="free")
