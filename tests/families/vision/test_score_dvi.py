"""ScoreDVI (P13): on 20 digits (16x16) with spatially varying mixed Gaussian noise (std map 0.05..0.3 along a
random direction, 10% of pixels with std 0.6), the per-image VI beats the noisy input, the same VI with a white
(i.i.d.) Gaussian noise model, and the deep image prior stopped at its best step by clean-image PSNR (an oracle
the method does not get). PSNR is computed here from its definition; noise seeds 0-2, 300 Adam steps, all 20
images in one vectorised optimisation.
"""

from __future__ import annotations

import pytest
import torch

from lightning_vi.families.vision.score_dvi import (DDPMDenoiser, GaussianMMSEDenoiser, digits_benchmark, dip_fit,
                                                     score_dvi)

SEEDS = (0, 1, 2)
STEPS = 300
LEVELS = (0.02, 0.05, 0.1, 0.2)
DDPM_HIDDEN, DDPM_STEPS = 256, 400
DDPM_MARGIN_NOISY, DDPM_MARGIN_WHITE, DDPM_MARGIN_DIP = 6.0, 1.0, 2.5  # measured: +7.8-8.3, +1.9-2.3, +3.7-4.2


def _psnr(x, ref):
    return float((10 * torch.log10(1.0 / (x - ref).pow(2).mean((1, 2, 3)))).mean())


@pytest.fixture(scope="module")
def results():
    torch.set_num_threads(1)  # tiny models: one thread is far faster on a shared CPU
    out = {}
    for seed in SEEDS:
        b = digits_benchmark(20, 16, seed)
        den = GaussianMMSEDenoiser(b["train"], LEVELS)
        full = score_dvi(b["noisy"], den, steps=STEPS, seed=seed)
        white = score_dvi(b["noisy"], den, steps=STEPS, seed=seed, noise_model="white")
        dip = dip_fit(b["noisy"], b["clean"], steps=STEPS, seed=seed)
        out[seed] = {"noisy": _psnr(b["noisy"], b["clean"]), "score_dvi": _psnr(full["x"], b["clean"]),
                     "white_vi": _psnr(white["x"], b["clean"]), "dip_best": _psnr(dip["x"], b["clean"]),
                     "full": full, "std": b["noise_std"]}
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_beats_noisy_input_by_8db(results, seed):
    r = results[seed]
    assert r["score_dvi"] > r["noisy"] + 8.0, {k: v for k, v in r.items() if isinstance(v, float)}


@pytest.mark.parametrize("seed", SEEDS)
def test_beats_white_noise_vi_and_best_step_dip(results, seed):
    r = results[seed]
    assert r["score_dvi"] > r["white_vi"] + 0.5, {k: v for k, v in r.items() if isinstance(v, float)}
    assert r["score_dvi"] > r["dip_best"] + 3.0, {k: v for k, v in r.items() if isinstance(v, float)}


def test_noise_map_tracks_true_noise(results):
    """The estimated per-pixel noise std correlates with the true one (the non-i.i.d. model sees the map)."""
    for seed in SEEDS:
        est, true = results[seed]["full"]["noise_std"].flatten(), results[seed]["std"].flatten()
        c = torch.corrcoef(torch.stack([est, true]))[0, 1]
        assert c > 0.5, (seed, float(c))


def test_bad_input():
    b = digits_benchmark(2, 8, 0)
    den = GaussianMMSEDenoiser(b["train"], LEVELS)
    with pytest.raises(ValueError, match=r"sigma=2\.0 is out of range; allowed"):
        score_dvi(b["noisy"], den, steps=1, sigma_guess=2.0)
    with pytest.raises(ValueError, match=r"sigma=-0\.1 is out of range"):
        GaussianMMSEDenoiser(b["train"], (-0.1, 0.1))
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8\); expected \[N, 1, H, W\]"):
        score_dvi(b["noisy"][:, 0], den, steps=1)
    with pytest.raises(ValueError, match=r"fitted on images of shape \(1, 8, 8\), got \(1, 16, 16\)"):
        score_dvi(torch.zeros(2, 1, 16, 16), den, steps=1)
    with pytest.raises(ValueError, match=r"noise_model='laplace' is unknown; allowed: mixture, white"):
        score_dvi(b["noisy"], den, steps=1, noise_model="laplace")


def test_command_writes_metrics(tmp_path):
    from lightning_vi.families.vision.score_dvi import main

    res = main(["--config", "configs/vision/score_dvi.yml", "--out", str(tmp_path), "--steps", "2", "--seeds", "0"])
    assert (tmp_path / "metrics.json").exists()
    assert set(res["per_seed"][0]) == {"seed", "noisy", "score_dvi", "white_vi", "dip_best_step"}
    with pytest.raises(ValueError, match=r"sigma=5\.0 is out of range"):
        main(["--out", str(tmp_path), "--sigma-guess", "5", "--steps", "1"])


# -- the ddpm score prior ------------------------------------------------------------------------------------------

class _ExactEps(torch.nn.Module):
    """The exact MMSE noise predictor of a Gaussian model-space prior N(m, C):
    eps*(x_t, t) = sqrt(1-a) (a C + (1-a) I)^-1 (x_t - sqrt(a) m), a = abar_t (closed form, written here)."""

    def __init__(self, m, c, abar):
        super().__init__()
        self.m, self.c, self.abar = m.double(), c.double(), abar.double()

    def forward(self, x, t, y=None, cond=None):
        a = self.abar[t.long()].view(-1, 1)
        z = x.flatten(1).double() - a.sqrt() * self.m
        eye = torch.eye(len(self.m), dtype=torch.float64)
        eps = torch.stack([(1 - ai).sqrt() * torch.linalg.solve(ai * self.c + (1 - ai) * eye, zi)
                           for ai, zi in zip(a[:, 0], z)])
        return eps.float().view(x.shape)


def test_ddpm_tweedie_equals_wiener_filter():
    """With the exact noise predictor of a Gaussian prior, the ddpm path (sigma -> t with abar = 1/(1+(sigma/scale)^2),
    Tweedie x0_hat) must reproduce the Wiener filter m + C (C + sigma^2 I)^-1 (x - m) in data space."""
    from lightning_vi.families.diffusion.ddpm import DDPM

    g = torch.Generator().manual_seed(0)
    model = DDPM(input_shape=[1, 4, 4], hidden=8, depth=1, num_train_timesteps=200, data_scale=0.5, data_shift=0.5)
    abar = model.schedule.alphas_cumprod
    a_half = torch.randn(16, 16, generator=g) * 0.1
    c_data = a_half @ a_half.T + 0.01 * torch.eye(16)              # data-space prior covariance
    m_data = torch.rand(16, generator=g)
    model.net = _ExactEps((m_data - 0.5) / 0.5, c_data / 0.25, abar)
    ts = torch.tensor([3, 20, 60])                                    # levels on the schedule's grid
    levels = [float(0.5 * ((1 - abar[t]) / abar[t]).sqrt()) for t in ts]
    den = DDPMDenoiser(model, levels)
    assert den.timesteps.tolist() == ts.tolist()
    x = torch.rand(5, 1, 4, 4, generator=g)
    got = den.denoise(x)
    for j, s in enumerate(levels):
        want = m_data + (c_data @ torch.linalg.solve(c_data + s * s * torch.eye(16), (x.flatten(1) - m_data).T)).T
        torch.testing.assert_close(got[j].flatten(1), want, atol=2e-4, rtol=1e-3)
        torch.testing.assert_close(den.score(x)[j].flatten(1), (want - x.flatten(1)) / s**2, atol=2e-2, rtol=1e-3)


@pytest.fixture(scope="module")
def ddpm_results(results):
    """A small DDPM (MLP, T=200) trained on the clean training digits, used as ScoreDVI's score prior."""
    from lightning_vi.core.plain_loop import fit_objective
    from lightning_vi.families.diffusion.ddpm import DDPM

    train = digits_benchmark(20, 16, 0)["train"]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = DDPM(input_shape=[1, 16, 16], hidden=DDPM_HIDDEN, depth=3, num_train_timesteps=200, data_scale=0.5,
                 data_shift=0.5)
    fit_objective(model, lambda k: {"x": train[torch.randint(len(train), (256,), generator=gen)]}, DDPM_STEPS, 2e-3)
    den = DDPMDenoiser(model, LEVELS)
    out = {}
    for seed in SEEDS:
        b = digits_benchmark(20, 16, seed)
        r = {"noisy": results[seed]["noisy"], "dip_best": results[seed]["dip_best"]}
        for name, kw in (("score_dvi", {}), ("white_vi", {"noise_model": "white"}), ("uniform", {"weighting": "uniform"})):
            r[name] = _psnr(score_dvi(b["noisy"], den, steps=STEPS, seed=seed, **kw)["x"], b["clean"])
        out[seed] = r
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_ddpm_prior_beats_noisy_white_vi_and_dip(ddpm_results, seed):
    r = ddpm_results[seed]
    assert r["score_dvi"] > r["noisy"] + DDPM_MARGIN_NOISY, r
    assert r["score_dvi"] > r["white_vi"] + DDPM_MARGIN_WHITE, r
    assert r["score_dvi"] > r["dip_best"] + DDPM_MARGIN_DIP, r


@pytest.mark.xfail(strict=True, reason="measured: noise-aware level assignment is 0.37-0.55 dB below uniform weights "
                                       "with the ddpm prior (seeds 0-2), see docs/score_dvi.md")
def test_noise_aware_weighting_beats_uniform_with_ddpm(ddpm_results):
    assert all(ddpm_results[s]["score_dvi"] > ddpm_results[s]["uniform"] for s in SEEDS), ddpm_results


def test_ddpm_bad_input():
    from lightning_vi.families.diffusion.ddpm import DDPM

    model = DDPM(input_shape=[1, 4, 4], hidden=8, depth=1, num_train_timesteps=20, data_scale=0.5, data_shift=0.5)
    with pytest.raises(ValueError, match=r"sigma=0\.9 is out of range of the ddpm's schedule; allowed: \["):
        DDPMDenoiser(model, (0.1, 0.9))
    with pytest.raises(ValueError, match=r"sigma=1\.5 is out of range; allowed"):
        DDPMDenoiser(model, (1.5,))
    with pytest.raises(ValueError, match=r"model is a GaussianMMSEDenoiser; expected a DDPM"):
        DDPMDenoiser(GaussianMMSEDenoiser(torch.rand(30, 1, 4, 4), (0.1,)), (0.1,))


def test_command_with_ddpm_checkpoint(tmp_path):
    """The benchmark command loads a ddpm Lightning checkpoint as the score prior (untrained net, 2 steps)."""
    import lightning as L

    from lightning_vi.families.diffusion.ddpm import DDPM
    from lightning_vi.families.vision.score_dvi import main

    model = DDPM(input_shape=[1, 16, 16], hidden=16, depth=1, num_train_timesteps=200, data_scale=0.5, data_shift=0.5)
    path = tmp_path / "ddpm.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    res = main(["--config", "configs/vision/score_dvi.yml", "--out", str(tmp_path), "--steps", "2", "--seeds", "0",
                "--ddpm-checkpoint", str(path)])
    assert res["config"]["ddpm_checkpoint"] == str(path) and len(res["per_seed"]) == 1
