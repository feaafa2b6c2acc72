"""ceVAE oracle (P37): on sprites with planted anomalies, pixel AUROC above the plain VAE."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_vi.data.sprites import render_sprites, sample_factors
from lightning_vi.families.vae.cevae import CEVAE, postprocess, preprocess, random_patch_mask


def planted(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = render_sprites(sample_factors(n, g), 32)
    mask = random_patch_mask(x, 0.16, 1, generator=g)  # a 5x5 bright blob
    return torch.where(mask, torch.ones_like(x), x), mask


def train(model, x, steps):
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        loss, _ = model.compute_loss({"x": x}, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_cevae_anomaly_maps_beat_plain_vae():
    L.seed_everything(0)
    x = render_sprites(sample_factors(600, torch.Generator().manual_seed(1)), 32)
    xa, mask = planted(200, 2)
    aucs = {}
    for name, w in (("vae", 0.0), ("cevae", 1.0)):
        L.seed_everything(0)
        m = CEVAE(input_shape=[1, 32, 32], latent_dim=8, hidden_dims=[128], ce_weight=w, patch_size=0.2)
        train(m, x, 200)
        amap = m.anomaly_map(xa)
        aucs[name] = roc_auc_score(mask.flatten().numpy(), amap.flatten().numpy())
    print(aucs)
    assert 1 - aucs["cevae"] < 0.7 * (1 - aucs["vae"]), aucs  # missed-pixel rate clearly lower
    post = postprocess(preprocess(amap), 0.95)
    assert post.shape == xa.shape and set(post.unique().tolist()) <= {0.0, 1.0}


def test_cevae_bad_input():
    with pytest.raises(ValueError, match="input_shape"):
        CEVAE(input_shape=[64])
    with pytest.raises(ValueError, match="patch_size=0"):
        CEVAE(patch_size=0.0)
