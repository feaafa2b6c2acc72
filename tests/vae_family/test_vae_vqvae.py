"""VQ-VAE oracles: closed-form EMA codebook step, dead-code restart, purification filter (P35)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.vae.vqvae import VectorQuantizerEMA, VQPurifier, VQVAE


def test_ema_update_closed_form():
    vq = VectorQuantizerEMA(3, 2, decay=0.8, eps=0.0, dead_threshold=0.0)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    vq.ema_sum.copy_(vq.codebook)
    z = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [9.0, 1.0], [11.0, 1.0], [10.0, 4.0]])
    idx = vq.assign(z)
    assert idx.tolist() == [0, 0, 1, 1, 1]
    vq.ema_update(z, idx)
    # N = 0.8 * 1 + 0.2 * n ; m = 0.8 * e_old + 0.2 * sum ; e = m / N
    n = torch.tensor([2.0, 3.0, 0.0])
    m = 0.8 * torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]) + 0.2 * torch.tensor([[0.0, 2.0], [30.0, 6.0], [0.0, 0.0]])
    expected = m / (0.8 + 0.2 * n).unsqueeze(1)
    assert torch.allclose(vq.ema_count, 0.8 + 0.2 * n)
    assert torch.allclose(vq.codebook, expected)
    assert torch.allclose(vq.codebook[2], torch.tensor([0.0, 10.0]))  # unused code keeps its value


def test_dead_codes_are_restarted_at_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizerEMA(4, 2, decay=0.5, dead_threshold=0.1)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [100.0, 100.0], [-100.0, 100.0], [0.1, 0.0]]))
    vq.ema_sum.copy_(vq.codebook)
    z = torch.randn(64, 2) * 0.1
    for _ in range(6):  # codes 1 and 2 are never used: their counts decay 0.5^k below 0.1
        dead = vq.ema_update(z, vq.assign(z))
        if len(dead):
            break
    assert sorted(dead.tolist()) == [1, 2]
    # restarted codes sit on encoder outputs of the batch
    assert bool((vq.codebook[dead].unsqueeze(1) == z.unsqueeze(0)).all(-1).any(1).all())
    assert bool((vq.ema_count[dead] == 1.0).all())


def test_codebook_size_bad_input():
    with pytest.raises(ValueError, match=r"codebook_size=0.*\[1"):
        VQVAE(input_shape=[1, 8, 8], codebook_size=0)
    with pytest.raises(ValueError, match=r"codebook_size=0"):
        VectorQuantizerEMA(0, 4)


def fgsm(model, x, y, eps):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return (x + eps * x.grad.sign()).clamp(0, 1).detach()


def test_vq_filter_beats_bare_classifier_under_fgsm():
    """FGSM (L-inf, eps = 0.25 on [0, 1] pixels) crafted against the classifier (grey-box: the filter is
    unknown to the attacker), on held-out sklearn digits."""
    L.seed_everything(0)
    d = load_digits_tensors()
    x, y = d["x"], d["y"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(clf(x[tr]), y[tr]).backward()
        opt.step()
    vq = VQVAE(input_shape=[1, 8, 8], hidden_dims=[128], num_latents=2, embedding_dim=8, codebook_size=64,
               decay=0.9, likelihood="gaussian", obs_std=0.3)
    opt = torch.optim.Adam(vq.parameters(), lr=3e-3)
    vq.train()
    for _ in range(400):
        loss, _ = vq.compute_loss({"x": x[tr]}, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    vq.eval()
    clf.eval()
    filt = VQPurifier(vq, clf)
    x_adv = fgsm(clf, x[te], y[te], 0.25)
    with torch.no_grad():
        acc = lambda m, inp: float((m(inp).argmax(1) == y[te]).float().mean())  # noqa: E731
        clean_bare, adv_bare, clean_filt, adv_filt = acc(clf, x[te]), acc(clf, x_adv), acc(filt, x[te]), acc(filt, x_adv)
    print(f"clean bare {clean_bare:.3f} adv bare {adv_bare:.3f} clean filt {clean_filt:.3f} adv filt {adv_filt:.3f}")
    assert clean_bare > 0.9
    assert adv_filt > adv_bare + 0.2, (adv_bare, adv_filt, clean_filt)
