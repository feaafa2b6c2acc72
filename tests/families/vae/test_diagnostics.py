"""Diagnostics oracles: P09 passive variables on sprites with a too-wide latent; setup errors."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_vi.callbacks.diagnostics import LatentDiagnostics
from lightning_vi.core.module import VIModule
from lightning_vi.data.sprites import render_sprites, sample_factors
from lightning_vi.families.vae import VAE
from lightning_vi.metrics.latent import ActiveUnits, LatentStatistics, passive_correlation, passive_pair_correlation
from tests.helpers import quiet_trainer


def test_passive_dims_correlate_in_mean_not_sampled_reps():
    """P09: a beta-VAE (beta=16) with 10 latent dims on sprites with 5 factors leaves passive dims,
    which are strongly correlated with other dims in mean representations and not in sampled ones.
    Statistics on 4000 held-out sprites (sampling noise of a correlation ~ 1/sqrt(4000))."""
    L.seed_everything(0)
    x = render_sprites(sample_factors(500, torch.Generator().manual_seed(0)), 32)
    m = VAE(input_shape=[1, 32, 32], latent_dim=10, hidden_dims=[128], likelihood="bernoulli", kl_weight=16.0)
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    for _ in range(600):
        loss, _ = m.compute_loss({"x": x}, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        mu, lv = m.encode(render_sprites(sample_factors(4000, torch.Generator().manual_seed(1)), 32))
    metric = LatentStatistics(10)
    metric.update(mu, lv)
    stats = metric.compute()
    passive = int((~stats["active"]).sum())
    pc_mean, pc_sampled = passive_correlation(stats)
    pp_mean, pp_sampled = passive_pair_correlation(stats)
    print("active", int(stats["active_units"]), "passive max|corr| mean/sampled", pc_mean, pc_sampled,
          "passive pairs", pp_mean, pp_sampled, "mi", float(stats["mutual_information"]))
    assert 3 <= passive <= 8  # latent wider than the 5 factors -> passive dims, but not all
    # measured 0.598 vs 0.036 (pairs 0.384 vs 0.014)
    assert pc_mean > 0.3 and pc_sampled < 0.1 and pc_mean > 5 * pc_sampled
    assert pp_mean > 0.2 and pp_sampled < 0.05
    assert int(ActiveUnits(10)(mu, lv)) == 10 - passive
    assert 0 < float(stats["mutual_information"]) <= float(stats["kl_per_dim"].sum()) + 1e-6


class NoLatent(VIModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.term_weights = {"loss_term": 1.0}

    def objective(self, batch):
        return {"loss_term": (batch["x"].mean() - self.w).pow(2).sum()}


def test_diagnostics_on_family_without_posterior_fails_at_setup(tmp_path):
    from torch.utils.data import DataLoader

    data = DataLoader([{"x": torch.zeros(3)}] * 4, batch_size=2,
                      collate_fn=lambda b: {"x": torch.stack([e["x"] for e in b])})
    trainer = quiet_trainer(tmp_path, callbacks=[LatentDiagnostics()])
    with pytest.raises(TypeError, match=r"LatentDiagnostics .*needs a family that encodes .*: NoLatent lacks a method encode\(x\)"):
        trainer.fit(NoLatent(), data)


def test_diagnostics_callback_logs_through_trainer(tmp_path):
    from lightning_vi.data import DigitsDataModule

    L.seed_everything(0)
    cb = LatentDiagnostics()
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, callbacks=[cb])
    trainer.fit(VAE(input_shape=[1, 8, 8], latent_dim=4, hidden_dims=[32]), DigitsDataModule())
    assert "diag/active_units" in trainer.callback_metrics and "diag/kl_dim_3" in trainer.callback_metrics
    assert cb.last["corr_mean"].shape == (4, 4)
    assert list((tmp_path / "media").glob("media_kl_per_dim*.png"))
