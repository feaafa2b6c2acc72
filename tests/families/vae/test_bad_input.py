"""Bad input for the VAE family (issue 4): each error names the argument, the value and what is allowed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_vi.callbacks.diagnostics import LatentDiagnostics
from lightning_vi.core.module import VIModule
from lightning_vi.core.objectives import VariationalObjective, iwae_bound
from lightning_vi.families.vae import CVAE, HVAE, VAE, VQVAE
from lightning_vi.families.vae.vqvae import VectorQuantizerEMA
from tests.helpers import quiet_trainer


def test_cvae_condition_batch_size_and_sample_count():
    m = CVAE(input_shape=[1, 8, 8], latent_dim=2, condition_dim=3, hidden_dims=[8])
    with pytest.raises(ValueError, match=r"batch\['y'\] has 3 conditions for 4 examples"):
        m.objective({"x": torch.rand(4, 1, 8, 8), "y": torch.tensor([0, 1, 2])})
    with pytest.raises(ValueError, match=r"condition has 2 rows; expected n=4"):
        m.sample(4, condition=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels in \[3, 3\]; allowed: \[0, 2\]"):
        m.sample(4, condition=3)  # cardinality: only 3 classes
    with pytest.raises(ValueError, match=r"integer class labels of shape \[B\]"):
        m(torch.rand(4, 1, 8, 8), torch.tensor([[0, 1, 2, 1]]))
    v = CVAE(input_shape=[1, 8, 8], latent_dim=2, condition="vector", condition_dim=3, hidden_dims=[8])
    with pytest.raises(ValueError, match=r"has shape \(4, 3, 1\); expected \(\*, 3\)"):
        v.objective({"x": torch.rand(4, 1, 8, 8), "y": torch.rand(4, 3, 1)})
    with pytest.raises(ValueError, match="condition='onehot' is not allowed"):
        CVAE(condition="onehot")


@pytest.mark.parametrize("make", [lambda: VariationalObjective("iwae", num_samples=0), lambda: VAE(objective="iwae", num_samples=0),
                                  lambda: CVAE(objective="iwae", num_samples=-1), lambda: HVAE(objective="iwae", num_samples=0)])
def test_k_below_one(make):
    with pytest.raises(ValueError, match=r"num_samples=-?\d is out of range; allowed: \[1, inf\)"):
        make()


def test_k_not_whole_and_empty_weights():
    with pytest.raises(ValueError, match=r"num_samples=2.5 must be a whole number"):
        VariationalObjective("iwae", num_samples=2.5)
    with pytest.raises(ValueError, match=r"K >= 1, got \(0, 3\)"):
        iwae_bound(torch.zeros(0, 3))


@pytest.mark.parametrize("alpha", [-0.5, 1.01, float("nan")])
def test_renyi_alpha_out_of_range(alpha):
    for make in (lambda: VariationalObjective("renyi", alpha=alpha), lambda: HVAE(objective="renyi", alpha=alpha)):
        with pytest.raises(ValueError, match=rf"alpha={alpha!r} is out of range; allowed: \[0.0, 1.0\]"):
            make()


def test_codebook_and_embedding_sizes():
    for make in (lambda: VQVAE(codebook_size=0), lambda: VectorQuantizerEMA(-3, 4)):
        with pytest.raises(ValueError, match=r"codebook_size=-?\d is out of range; allowed: \[1, inf\)"):
            make()
    with pytest.raises(ValueError, match=r"embedding_dim=0 is out of range"):
        VQVAE(embedding_dim=0)
    with pytest.raises(ValueError, match=r"decay=1.0 is out of range; allowed: \[0.0, 1.0\)"):
        VQVAE(decay=1.0)


class ExtraArgEncoder(VIModule):
    """A family whose encoder needs more than x (as the sequence families' do)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.term_weights = {"loss_term": 1.0}

    def encode(self, x, t, mask):
        return x, x

    def objective(self, batch):
        return {"loss_term": (batch["x"].mean() - self.w).pow(2).sum()}


class SingleOutputEncoder(ExtraArgEncoder):
    def encode(self, x):
        return x  # not (mu, log_var)

    def validation_step(self, batch, batch_idx):
        return None


def loader():
    return DataLoader([{"x": torch.zeros(3)}] * 4, batch_size=2,
                      collate_fn=lambda b: {"x": torch.stack([e["x"] for e in b])})


def test_diagnostics_errors_name_the_family(tmp_path):
    trainer = quiet_trainer(tmp_path, callbacks=[LatentDiagnostics()], limit_train_batches=1)
    with pytest.raises(TypeError, match=r"ExtraArgEncoder lacks a method encode\(x\): ExtraArgEncoder.encode\(x, t, mask\) cannot be called that way"):
        trainer.fit(ExtraArgEncoder(), loader())
    trainer = quiet_trainer(tmp_path, callbacks=[LatentDiagnostics()], limit_train_batches=1)
    with pytest.raises(TypeError, match=r"SingleOutputEncoder.encode\(x\) to return \(mu, log_var\).*got \[\(2, 3\)\]"):
        trainer.fit(SingleOutputEncoder(), loader(), loader())
    with pytest.raises(ValueError, match=r"au_threshold=-1"):
        LatentDiagnostics(au_threshold=-1)
