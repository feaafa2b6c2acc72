"""The hidden-confounder SCM: factual outcomes, confounding and proxies as specified (independent checks)."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.data.confounded import ConfoundedDataModule, confounded_scm


def test_scm_structure():
    d = confounded_scm(20000, generator=torch.Generator().manual_seed(0))
    t, u = d["t"], d["u"][:, 0]
    assert torch.equal(d["y"], torch.where(t > 0.5, d["y1"], d["y0"]))
    assert abs(float((d["y0"] - d["mu0"]).std()) - 0.5) < 0.02  # outcome noise
    # U confounds: it raises treatment odds, and the naive difference of means is biased vs the true ATE (1.0).
    assert float(u[t > 0.5].mean() - u[t < 0.5].mean()) > 0.5
    naive = float(d["y"][t > 0.5].mean() - d["y"][t < 0.5].mean())
    assert abs(float((d["mu1"] - d["mu0"]).mean()) - 1.0) < 0.05 and naive - 1.0 > 1.0
    # proxies: corr(Xp_j, U) = 1 / sqrt(1 + proxy_noise^2 / var U) with var U = 1 + 0.3^2
    expected = (1 / (1 + 1 / 1.09)) ** 0.5
    for j in range(3):
        assert abs(float(torch.corrcoef(torch.stack([d["x"][:, j], u]))[0, 1]) - expected) < 0.02
    for j in (3, 4):  # independent covariates
        assert abs(float(torch.corrcoef(torch.stack([d["x"][:, j], u]))[0, 1])) < 0.03


def test_datamodule_batches_and_bad_arguments():
    dm = ConfoundedDataModule(n=200, batch_size=32)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (32, 5) and batch["t"].shape == (32,) and batch["y"].shape == (32,)
    with pytest.raises(ValueError, match="confounder_dim=0"):
        ConfoundedDataModule(confounder_dim=0)
    with pytest.raises(ValueError, match="proxy_noise=-1"):
        confounded_scm(10, proxy_noise=-1.0)
