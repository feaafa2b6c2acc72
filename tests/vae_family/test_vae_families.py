"""Registration, Lightning training + checkpoint reload, CVAE condition errors and P12 sampling oracle."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_vi.data import DigitsDataModule
from lightning_vi.data.sprites import render_sprites, sample_factors
from lightning_vi.families.vae import CEVAE, CVAE, HVAE, VAE, VQVAE
from lightning_vi.registry import FAMILIES
from tests.helpers import quiet_trainer

SMALL = {
    "cvae": (CVAE, dict(input_shape=[1, 8, 8], latent_dim=3, condition_dim=10, hidden_dims=[32])),
    "hvae": (HVAE, dict(input_shape=[1, 8, 8], latent_dims=[4, 2], hidden_dims=[32])),
    "vqvae": (VQVAE, dict(input_shape=[1, 8, 8], hidden_dims=[32], codebook_size=8)),
    "cevae": (CEVAE, dict(input_shape=[1, 8, 8], latent_dim=3, hidden_dims=[32], patch_size=0.25)),
    "vae": (VAE, dict(input_shape=[1, 8, 8], latent_dim=3, hidden_dims=[32], objective="renyi", k=3,
                      estimator="score", baseline="learned")),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registered_trains_and_reloads(name, tmp_path):
    cls, kw = SMALL[name]
    assert FAMILIES.get(name) is cls
    L.seed_everything(0)
    model = cls(**kw)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, DigitsDataModule())
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    again = cls.load_from_checkpoint(path)
    model.eval(), again.eval()
    x = torch.rand(5, 1, 8, 8)
    if name == "cvae":
        c = torch.tensor([0, 1, 2, 3, 4])
        assert torch.equal(model(x, c), again(x, c))
    else:
        assert torch.equal(model(x), again(x))
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_cvae_condition_errors():
    m = CVAE(input_shape=[1, 8, 8], latent_dim=2, condition_dim=3, hidden_dims=[8])
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"batch\['y'\] has labels in \[0, 5\]; allowed: \[0, 2\]"):
        m.objective({"x": x, "y": torch.tensor([0, 1, 2, 5])})
    with pytest.raises(ValueError, match=r"integer class labels"):
        m.objective({"x": x, "y": torch.rand(4, 3)})
    with pytest.raises(KeyError, match=r"batch\['y'\]"):
        m.objective({"x": x})
    v = CVAE(input_shape=[1, 8, 8], latent_dim=2, condition="vector", condition_dim=5, condition_key="f", hidden_dims=[8])
    with pytest.raises(ValueError, match=r"batch\['f'\] has shape \(4, 3\); expected \(\*, 5\)"):
        v.objective({"x": x, "f": torch.rand(4, 3)})
    with pytest.raises(ValueError, match="condition_dim=0"):
        CVAE(condition_dim=0)
    with pytest.raises(ValueError, match="gsnn_weight=0.5 needs prior='learned'"):
        CVAE(gsnn_weight=0.5)


def test_cvae_samples_are_recognised_as_requested_label():
    """P12: a CVAE on digits conditioned on the label; an independently trained classifier (sklearn
    logistic regression) recognises the requested digit in the samples far above chance (1/10)."""
    from sklearn.linear_model import LogisticRegression

    from lightning_vi.data.digits import load_digits_tensors

    L.seed_everything(0)
    d = load_digits_tensors()
    x, y = d["x"], d["y"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1400], perm[1400:]
    clf = LogisticRegression(max_iter=500).fit(x[tr].flatten(1).numpy(), y[tr].numpy())
    held = clf.score(x[te].flatten(1).numpy(), y[te].numpy())
    assert held > 0.9, held
    m = CVAE(input_shape=[1, 8, 8], latent_dim=4, condition_dim=10, hidden_dims=[128], prior="learned",
             gsnn_weight=0.2, likelihood="bernoulli")
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss, _ = m.compute_loss({"x": x[tr], "y": y[tr]}, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    want = torch.arange(500) % 10
    s = m.sample(500, condition=want, generator=torch.Generator().manual_seed(0))
    acc = float((torch.as_tensor(clf.predict(s.flatten(1).numpy())) == want).float().mean())
    print("classifier held-out acc", held, "CVAE sample acc", acc)
    assert acc > 0.7, acc
