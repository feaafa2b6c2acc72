"""rvae (CLUTR's recurrent VAE): held-out token sequences reconstruct; interpolations stay valid tasks."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from helpers import quiet_trainer
from lightning_vi.data.tokens import TokenSequenceDataModule, is_valid_task, sorted_subset_tokens
from lightning_vi.families.sequence.rvae import RecurrentVAE
from lightning_vi.registry import FAMILIES


@pytest.fixture(scope="module")
def trained():
    L.seed_everything(0)
    d = sorted_subset_tokens(1200, 5, 16, torch.Generator().manual_seed(0))
    train, test = {k: v[:1000] for k, v in d.items()}, {k: v[1000:] for k, v in d.items()}
    m = RecurrentVAE(vocab_size=16, latent_dim=16, embed_dim=16, hidden=48, kl_weight=0.05)
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, 1000, (200,), generator=g)
        out = m.objective({k: v[idx] for k, v in train.items()})
        loss = out["recon"] + 0.05 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), test


def test_heldout_token_accuracy(trained):
    m, test = trained
    acc = (m.reconstruct(test["x"]) == test["x"]).float().mean()
    assert acc > 0.9, float(acc)  # measured 1.00 after 150 steps (sorted 5-subsets of 16 cells, 200 unseen)


def _nll(m: RecurrentVAE, x: torch.Tensor) -> torch.Tensor:
    """Teacher-forced token NLL [B] of ``x`` decoded from its own posterior mean (the model's fit to ``x``)."""
    with torch.no_grad():
        logits = m.decode_logits(m.encode(x)[0], x)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), x, reduction="none").sum(1)


def test_latent_interpolation_stays_valid(trained):
    """CLUTR Sec. 3.1: decoding the segment between two posterior means walks from one task to the other
    through valid tasks. Margins from seeds 0, 1, 2 (train seed = data seed), 100 held-out pairs, 6 steps."""
    m, test = trained
    xa, xb = test["x"][:100], test["x"][100:200]
    path = m.interpolate(xa, xb, steps=6)
    assert path.shape == (6, *xa.shape)
    # endpoints: exactly the greedy decodings of the two codes, which are the tasks themselves
    assert torch.equal(path[0], m.reconstruct(xa)) and torch.equal(path[-1], m.reconstruct(xb))
    for end, x in ((path[0], xa), (path[-1], xb)):
        assert (end == x).all(1).float().mean() > 0.9  # measured 0.96-1.00
    # it moves: positional Hamming distance to x_a grows and to x_b shrinks along the path
    dist_a = [float((p != xa).float().sum(1).mean()) for p in path]
    dist_b = [float((p != xb).float().sum(1).mean()) for p in path]
    assert all(u < v for u, v in zip(dist_a, dist_a[1:])), dist_a  # seed 0: 0.0, 0.33, 2.36, 3.54, 4.21, 4.27
    assert all(u > v for u, v in zip(dist_b, dist_b[1:])), dist_b  # seed 0: 4.27, 4.24, 3.76, 2.38, 0.49, 0.0
    # the central points are neither end
    central = path[2:4]
    neither = ((central != xa).any(-1) & (central != xb).any(-1)).float().mean(1)
    assert (neither > 0.8).all(), neither.tolist()  # measured 0.87-0.94
    # and stay valid tasks between the ends: sorted, built from the two tasks' cells, fitted as well as the ends
    mid = path[1:-1]
    assert is_valid_task(mid.flatten(0, 1)).float().mean() > 0.95  # measured 0.988-0.993
    union = torch.zeros(len(xa), 16, dtype=torch.bool).scatter_(1, xa, True).scatter_(1, xb, True)
    in_union = torch.stack([union.gather(1, p).float().mean() for p in mid])
    assert (in_union > 0.8).all() and float(union.float().mean()) < 0.6, in_union.tolist()
    # measured 0.87-0.98 per step (chance for a random cell: 0.53-0.54)
    assert float(_nll(m, mid.flatten(0, 1)).mean()) < float(_nll(m, torch.cat([xa, xb])).mean()) + 0.3
    # measured mid 0.159 / 0.189 / 0.209 vs ends 0.165 / 0.205 / 0.228 nats per task


def test_bad_tokens():
    m = RecurrentVAE(vocab_size=8)
    with pytest.raises(ValueError, match="vocab_size=8"):
        m.objective({"x": torch.tensor([[1, 2, 9]])})
    with pytest.raises(ValueError, match="integer token ids"):
        m.objective({"x": torch.rand(2, 3)})
    with pytest.raises(ValueError, match="mismatched lengths"):
        m.objective({"x": [torch.tensor([1, 2]), torch.tensor([1, 2, 3])]})


def test_registered_trains_and_reloads(tmp_path):
    assert FAMILIES.get("rvae") is RecurrentVAE
    L.seed_everything(0)
    dm = TokenSequenceDataModule(n=200, length=5, vocab_size=16, batch_size=64)
    m = RecurrentVAE(vocab_size=16, latent_dim=8, hidden=32)
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(m, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    m2 = RecurrentVAE.load_from_checkpoint(path)
    x = dm.splits["val"]["x"]
    assert torch.equal(m.eval()(x), m2.eval()(x))
    assert torch.allclose(m.encode(x)[0], m2.encode(x)[0])
