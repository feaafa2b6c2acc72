"""kvae (Naiman et al. 2024): least-squares Koopman solver; learned eigenvalue angles = sine frequencies."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from helpers import quiet_trainer
from lightning_vi.data.sequences import SineSequenceDataModule, sine_mixtures
from lightning_vi.families.sequence.kvae import KoopmanVAE, koopman_lstsq, koopman_prediction_loss
from lightning_vi.registry import FAMILIES


def test_lstsq_recovers_exact_linear_map():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    a_true = 0.95 * q  # spectral radius 0.95
    z = [torch.randn(8, 4, generator=g, dtype=torch.float64)]
    for _ in range(11):
        z.append(z[-1] @ a_true)
    z = torch.stack(z, 1)  # [8, 12, 4], exactly linear
    a = koopman_lstsq(z)
    assert torch.allclose(a, a_true, atol=1e-8)
    assert koopman_prediction_loss(z, a) < 1e-20
    assert torch.allclose(koopman_lstsq(z, ridge=1e-10), a_true, atol=1e-6)


def test_irregular_masks_and_bad_input():
    d = sine_mixtures(4, 10, torch.Generator().manual_seed(0), irregular=True, keep=0.5)
    m = KoopmanVAE()
    out = m.objective(d)
    assert torch.isfinite(out["recon"])
    shifted = dict(d, x=torch.where(d["mask"][..., None] > 0, d["x"], d["x"] + 100.0))
    torch.manual_seed(0)
    a = m.objective(d)["recon"]
    torch.manual_seed(0)
    assert torch.allclose(a, m.objective(shifted)["recon"])  # unobserved values never reach the loss
    with pytest.raises(ValueError, match="strictly increasing"):
        m.objective(dict(d, t=d["t"].flip(1)))
    with pytest.raises(ValueError, match="mask"):
        m.objective(dict(d, mask=d["mask"][:, :5]))
    with pytest.raises(ValueError, match="eig_constraint"):
        KoopmanVAE(eig_constraint="circle")


def test_registered_trains_and_reloads(tmp_path):
    assert FAMILIES.get("kvae") is KoopmanVAE
    L.seed_everything(0)
    dm = SineSequenceDataModule(n=40, length=12, batch_size=32)
    m = KoopmanVAE(hidden=16, eig_constraint="prescribed")
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(m, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    m2 = KoopmanVAE.load_from_checkpoint(path)
    batch = dm.splits["val"]
    assert torch.allclose(m.eval()(batch["x"]), m2.eval()(batch["x"]))
    assert torch.allclose(m.koopman_operator(batch), m2.koopman_operator(batch))
