"""kl_schedule and vf_alignment on the VAE family."""

from __future__ import annotations

import pytest
import torch

from helpers import quiet_trainer
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.classifier import Classifier
from lightning_vi.families.vae.vae import VAE
from lightning_vi.plugins.kl_schedule import KLSchedule
from lightning_vi.plugins.vf_alignment import VFAlignment, random_conv_extractor, vf_loss
from plugin_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_kl_schedule_linear_and_cyclical_weights():
    m = VAE(beta=2.0, plugins=[KLSchedule(schedule="linear", warmup_steps=10)])
    p = m.plugin("kl_schedule")
    assert m.term_weights["kl"] == 0.0
    for step, w in [(0, 0.0), (5, 1.0), (10, 2.0), (50, 2.0)]:
        p.set_step(m, step)
        assert m.term_weights["kl"] == pytest.approx(w)
    c = KLSchedule(schedule="cyclical", cycle_steps=10, ratio=0.5)
    assert [c.factor(s) for s in (0, 2, 5, 9, 10, 12)] == pytest.approx([0, 0.4, 1, 1, 0, 0.4])


def test_kl_schedule_free_bits_term_and_trainer(tmp_path):
    torch.manual_seed(0)
    m = VAE(plugins=[KLSchedule(schedule="constant", free_bits=0.5)])
    assert m.term_weights["kl"] == 0.0
    batch = {"x": torch.rand(16, 1, 8, 8)}
    out = m.objective(batch)
    _, terms = m.compute_loss(batch, "train")
    kl_d = out["kl_per_dim"].detach()
    assert float(kl_d.max()) < 0.5  # fresh encoder: every dimension below lambda ...
    assert float(terms["kl_free_bits"]) == pytest.approx(0.5 * kl_d.numel(), rel=1e-5)  # ... so the floor applies
    mk = VAE(plugins=[KLSchedule(warmup_steps=3)])
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=5, limit_val_batches=1)
    trainer.fit(mk, DigitsDataModule(batch_size=32))
    assert mk.term_weights["kl"] == pytest.approx(1.0)
    with pytest.raises(TypeError, match="kl_schedule.*cannot serve Classifier"):
        Classifier(plugins=["kl_schedule"])


def test_vf_loss_zero_when_aligned_positive_otherwise():
    torch.manual_seed(0)
    f = torch.randn(16, 8)
    mcos, mdms = vf_loss(f.clone(), f)
    assert float(mcos) == 0.0 and float(mdms) == 0.0
    mcos, mdms = vf_loss(3.0 * f, f)  # cosine terms are scale invariant
    assert float(mcos) == 0.0 and float(mdms) < 1e-6
    mcos, mdms = vf_loss(torch.randn(16, 8), f, m1=0.0, m2=0.0)
    assert float(mcos) > 0.5 and float(mdms) > 0.1
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert float(vf_loss(a, b, m1=0.5)[0]) == pytest.approx(0.5)  # ReLU(1 - m1 - cos) with cos = 0


def test_vf_alignment_on_vae_zero_for_projected_features_and_trains(tmp_path):
    torch.manual_seed(0)
    m = VAE(input_shape=[1, 8, 8], latent_dim=8, plugins=[VFAlignment(feature_dim=8, weight=1.0)])
    plug = m.plugin("vf_alignment")
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        f = plug.extractor(x)
        m.vf_projection.weight.copy_(torch.eye(8))
        m.vf_projection.bias.zero_()
    terms = plug.extra_terms({"mu": f}, {"x": x}, m)  # latents whose projection equals the features
    assert float(terms["vf_mcos"]) == 0.0 and float(terms["vf_mdms"]) < 1e-6
    same = random_conv_extractor(1, 8, seed=0)
    assert torch.equal(same(x), f)  # the frozen extractor is rebuilt identically (offline, reloadable)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(m, DigitsDataModule(batch_size=32))
    assert all(not p.requires_grad for p in plug.extractor.parameters())
    with pytest.raises(TypeError, match="vf_alignment.*needs a family that .*latent_dim: Classifier lacks the attribute `latent_dim`"):
        Classifier(plugins=["vf_alignment"])


def test_vf_alignment_with_a_frozen_classifier_checkpoint(tmp_path):
    torch.manual_seed(0)
    clf = Classifier(backbone="conv", channels=[8, 16], feature_dim=12)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(clf, DigitsDataModule(batch_size=32))
    path = tmp_path / "clf.ckpt"
    trainer.save_checkpoint(path)
    m = VAE(plugins=[VFAlignment(extractor=f"checkpoint:{path}")])
    assert m.vf_projection.out_features == 12
    _, terms = m.compute_loss({"x": torch.rand(8, 1, 8, 8)}, "train")
    assert "vf_mcos" in terms and "vf_mdms" in terms
    with pytest.raises(ValueError, match="extractor='nope' is not allowed"):
        VFAlignment(extractor="nope")
