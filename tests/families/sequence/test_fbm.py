"""fbm_sde (Daems et al. 2024): MA-fBM optimal weights, exact fBM data, learnable Hurst index."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import lightning as L
import numpy as np
import pytest
import torch

from helpers import ROOT, quiet_trainer
from lightning_vi.callbacks.sequence import SamplePathsPlot
from lightning_vi.data.fbm import FBMDataModule, fbm_covariance, fbm_paths
from lightning_vi.families.sequence.fbm_sde import (
    FBMSDE, approximation_error, ma_fbm_covariance, ma_fbm_log_likelihood, optimal_weights, ou_rates)
from lightning_vi.registry import FAMILIES

GAMMAS = ou_rates(5, 0.1, 100.0)  # the BM plus 5 OU processes
GRID = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)


@pytest.mark.parametrize("hurst", [0.3, 0.4, 0.6, 0.7])
def test_ou_mixture_covariance_matches_fbm(hurst):
    omega = optimal_weights(hurst, GAMMAS)
    approx = ma_fbm_covariance(GRID, GRID, omega, GAMMAS)
    exact = fbm_covariance(GRID[:, None], GRID[None, :], hurst)
    assert (approx - exact).abs().max() < 0.015  # measured 0.0065 (0.3), 0.0010, 0.0007, 0.0103 (0.7)


def test_hurst_half_is_brownian_motion():
    omega = optimal_weights(0.5, GAMMAS)
    assert approximation_error(0.5, GAMMAS) < 1e-10
    assert torch.allclose(omega, torch.eye(len(GAMMAS), dtype=torch.float64)[0], atol=1e-8)
    cov = ma_fbm_covariance(GRID, GRID, omega, GAMMAS)
    assert torch.allclose(cov, torch.minimum(GRID[:, None], GRID[None, :]), atol=1e-8)


def test_error_grows_away_from_half_and_shrinks_with_k():
    low = [approximation_error(h, GAMMAS) for h in (0.5, 0.4, 0.3, 0.2, 0.1)]
    high = [approximation_error(h, GAMMAS) for h in (0.5, 0.6, 0.7, 0.8, 0.9)]
    assert all(a < b for a, b in zip(low, low[1:])) and all(a < b for a, b in zip(high, high[1:]))
    assert approximation_error(0.2, ou_rates(20, 0.01, 1e4)) < 0.2 * approximation_error(0.2, GAMMAS)


def test_weights_gradient_matches_finite_difference():
    h = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    optimal_weights(h, GAMMAS).sum().backward()
    fd = (optimal_weights(0.301, GAMMAS).sum() - optimal_weights(0.299, GAMMAS).sum()) / 0.002
    assert abs(float(h.grad) - float(fd)) < 1e-3 * max(1.0, abs(float(fd)))


def test_exact_fbm_sampler_covariance():
    d = fbm_paths(4000, 8, 0.3, torch.Generator().manual_seed(0))
    x, t = d["x"][..., 0].double(), d["t"][0].double()
    emp = x.T @ x / len(x)
    assert (emp - fbm_covariance(t[:, None], t[None, :], 0.3)).abs().max() < 0.05


@pytest.mark.parametrize("true_h", [0.3, 0.7])
def test_hurst_index_learned_from_fbm_paths(true_h):
    """The model's learnable Hurst index, fitted by the exact evidence of the MA-fBM prior (what the ELBO bounds)."""
    L.seed_everything(0)
    d = fbm_paths(64, 32, true_h, torch.Generator().manual_seed(1))
    m = FBMSDE(hurst=0.5, gamma_max=100.0, dt=0.01)
    opt = torch.optim.Adam([m.hurst_raw, m.log_sigma], lr=0.15)
    for _ in range(50):
        ll = ma_fbm_log_likelihood(d["x"][..., 0], d["t"][0], m.hurst.double(), m.gammas.double(),
                                   m.sigma[0].double(), obs_std=1e-2).mean()
        opt.zero_grad()
        (-ll).backward()
        opt.step()
    assert abs(float(m.hurst.detach()) - true_h) < 0.06  # measured 0.334 (0.3) and 0.717 (0.7); K=5 bias


def _elbo_hurst(true_h: float, seed: int = 0, steps: int = 100) -> float:
    L.seed_everything(seed)
    d = fbm_paths(64, 16, true_h, torch.Generator().manual_seed(seed + 1))
    m = FBMSDE(hurst=0.5, dt=1 / 16, gamma_max=16.0, hidden=32, context_dim=16, obs_std=0.02, lr=0.05)
    opt = torch.optim.Adam(m.parameters(), lr=m.hparams.lr)
    for _ in range(steps):
        out = m.objective(d)
        loss = out["recon"] + out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(m.hurst.detach())


def test_hurst_index_learned_through_the_elbo():
    """Training the whole model (torchsde, Girsanov KL; 100 full-batch steps from H = 0.5) orders rough (H = 0.3)
    and smooth (H = 0.7) paths, but the estimates are biased toward 1/2.

    The amortised posterior control absorbs part of the paths' roughness, so the ELBO's optimum in H lies
    between the truth and 1/2 (docs/sequence.md); the exact-evidence fit above has no such bias. Seeds 0, 1, 2:
    H = 0.386, 0.445, 0.507 (true 0.3) and 0.548, 0.590, 0.606 (true 0.7): the rough estimate is not reliably
    below 1/2 (seed 2), so the test asserts what holds on all three, with margin.
    """
    h_lo, h_hi = _elbo_hurst(0.3), _elbo_hurst(0.7)
    print(f"fbm_sde Hurst through the ELBO: {h_lo:.3f} (true 0.3), {h_hi:.3f} (true 0.7)")
    assert h_hi - h_lo > 0.05, (h_lo, h_hi)  # ordering; measured 0.162, 0.145, 0.099
    assert 0.5 < h_hi < 0.7 and 0.3 < h_lo < 0.56, (h_lo, h_hi)  # between the truth and (about) 1/2
    assert abs(h_lo - 0.3) < 0.25 and abs(h_hi - 0.7) < 0.18, (h_lo, h_hi)  # measured 0.09-0.21 and 0.09-0.15


def test_bad_hurst_and_times():
    for bad in (0.0, 1.0, 1.2, -0.1):
        with pytest.raises(ValueError, match="hurst"):
            FBMSDE(hurst=bad)
        with pytest.raises(ValueError, match="hurst"):
            fbm_paths(2, 4, bad, torch.Generator())
        with pytest.raises(ValueError, match="hurst"):
            optimal_weights(bad, GAMMAS)
    with pytest.raises(ValueError, match="dt=0.1 is too large for gamma_max=50"):
        FBMSDE(dt=0.1, gamma_max=50.0)
    m = FBMSDE()
    x = torch.zeros(2, 4, 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        m.objective({"x": x, "t": torch.tensor([[0.1, 0.2, 0.2, 0.3]] * 2)})
    with pytest.raises(ValueError, match="time steps"):
        m.objective({"x": x, "t": torch.tensor([[0.1, 0.2, 0.3]] * 2)})


def test_registered_trains_and_reloads(tmp_path):
    assert FAMILIES.get("fbm_sde") is FBMSDE
    L.seed_everything(0)
    dm = FBMDataModule(n=40, length=16, hurst=0.3, batch_size=32)
    m = FBMSDE(hurst=0.5, dt=1 / 16, gamma_max=16.0, lr=0.02)
    trainer = quiet_trainer(tmp_path, max_epochs=3)
    trainer.fit(m, dm)
    assert float(m.hurst.detach()) != 0.5  # the Hurst index is trained through the ELBO
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    m2 = FBMSDE.load_from_checkpoint(path)
    x = dm.splits["val"]["x"]
    assert float(m2.hurst) == pytest.approx(float(m.hurst))
    assert torch.allclose(m.weights(), m2.weights())
    assert torch.equal(m.encoder(x.new_zeros(2, 5, 3))[0], m2.encoder(x.new_zeros(2, 5, 3))[0])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


def test_imports_without_torchsde():
    """torchsde is an optional extra: without it the package and this module import; the family says what to install."""
    code = textwrap.dedent("""
        import sys
        sys.modules["torchsde"] = None  # makes `import torchsde` raise ImportError
        import torch
        import lightning_vi.families.sequence  # what registry discovery imports
        from lightning_vi.families.sequence import fbm_sde
        from lightning_vi.registry import FAMILIES
        assert FAMILIES.get("fbm_sde").requires == ("torchsde",)
        assert fbm_sde.approximation_error(0.5, fbm_sde.ou_rates(2)) < 1e-10  # closed forms need no torchsde
        for build in (lambda: fbm_sde.FBMSDE(), lambda: fbm_sde._torchsde()):
            try:
                build()
            except ImportError as err:
                print("MSG", err)
            else:
                raise SystemExit("no ImportError")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = [line[4:] for line in proc.stdout.splitlines() if line.startswith("MSG ")]
    assert msgs == ["fbm_sde needs torchsde: pip install 'lightning-vi[sequence]'"] * 2, proc.stdout


class _NoiseRecorder(L.Callback):
    """Draws from the global torch and NumPy RNGs at each training epoch's start (what the training noise sees)."""

    def __init__(self) -> None:
        self.draws: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.draws.append((float(torch.rand(1)), float(np.random.rand())))


def test_sample_paths_plot_leaves_training_noise_alone(tmp_path):
    """SamplePathsPlot samples with its own seeded generator every validation epoch; the global RNG state that
    drives the training noise must carry on, not restart from the same state after each validation."""
    L.seed_everything(0)
    dm = FBMDataModule(n=20, length=8, batch_size=16)
    m = FBMSDE(dt=0.125, gamma_max=8.0)
    rec = _NoiseRecorder()
    trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=[SamplePathsPlot(n=3), rec], limit_train_batches=1,
                            limit_val_batches=1)
    trainer.fit(m, dm)
    assert len(rec.draws) == 4
    torch_draws, np_draws = zip(*rec.draws)
    assert len(set(torch_draws)) == 4 and len(set(np_draws)) == 4, rec.draws

    t = dm.splits["val"]["t"][0]
    state, np_state = torch.get_rng_state(), np.random.get_state()
    a = m.sample_paths(3, t, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(np.array_equal(u, v) for u, v in zip(np.random.get_state()[1:], np_state[1:]))
    assert torch.equal(a, m.sample_paths(3, t, torch.Generator().manual_seed(5)))  # the generator fixes the paths
    assert not torch.equal(a, m.sample_paths(3, t, torch.Generator().manual_seed(6)))
    SamplePathsPlot(n=3).on_validation_epoch_end(trainer, m)  # the callback itself
    assert torch.equal(torch.get_rng_state(), state)
