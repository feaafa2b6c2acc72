"""Oracles for schedules, prediction-type conversions and guidance (samplers: test_samplers.py)."""

from __future__ import annotations


import pytest
import torch

from lightning_vi.families.diffusion.ddim_scheduler import ddim_timesteps
from lightning_vi.families.diffusion.guidance import drop_condition, guided
from lightning_vi.families.diffusion.schedules import NoiseSchedule, cosine_alpha_bar, make_betas


def test_linear_and_scaled_linear_closed_forms():
    s = NoiseSchedule(1000, "linear")
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 1000))
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float())
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-05, rel=1e-3)  # diffusers' number
    sl = NoiseSchedule(1000, "scaled_linear", 0.00085, 0.012)
    ref = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(sl.betas.double(), ref)
    assert sl.betas[0].item() == pytest.approx(0.00085) and sl.betas[-1].item() == pytest.approx(0.012)


def test_cosine_reproduces_alpha_bar_and_cap():
    T = 1000
    betas = make_betas("squaredcos_cap_v2", T)
    assert betas.max().item() == pytest.approx(0.999)  # the cap binds at the end
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, T + 1, dtype=torch.float64) / T
    exact = cosine_alpha_bar(t) / cosine_alpha_bar(torch.zeros(1, dtype=torch.float64))
    uncapped = betas < 0.999
    assert torch.allclose(abar[uncapped], exact[uncapped], rtol=1e-9)
    assert (make_betas("squaredcos_cap_v2", 10) <= 0.999).all()


@pytest.mark.parametrize("pred", ["epsilon", "v", "x0"])
def test_add_noise_conversions_round_trip(pred):
    torch.manual_seed(0)
    s = NoiseSchedule(1000, "squaredcos_cap_v2", prediction_type=pred)
    x0, noise = torch.randn(64, 3, 4, 4, dtype=torch.float64), torch.randn(64, 3, 4, 4, dtype=torch.float64)
    t = torch.randint(0, 990, (64,))
    s = s.double()
    x_t = s.add_noise(x0, noise, t)
    x0_hat, eps_hat = s.split(s.target(x0, noise, t), x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-9) and torch.allclose(eps_hat, noise, atol=1e-9)


def test_guidance_combination_and_dropout():
    fn = lambda x, t, y: x * 0 + y[:, None].float()
    g = guided(fn, torch.tensor([2, 2]), null_value=0, scale=3.0)
    assert torch.allclose(g(torch.zeros(2, 1), torch.zeros(2)), torch.full((2, 1), 6.0))
    y = torch.zeros(20000, dtype=torch.long)
    frac = (drop_condition(y, 0.3, 10, torch.Generator().manual_seed(0)) == 10).float().mean()
    assert frac.item() == pytest.approx(0.3, abs=0.02)


def test_bad_input():
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        NoiseSchedule(10, "cosine")
    with pytest.raises(ValueError, match="prediction_type='score'"):
        NoiseSchedule(10, prediction_type="score")
    with pytest.raises(ValueError, match="num_train_timesteps=0"):
        NoiseSchedule(0)
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        ddim_timesteps(1000, 0)
    with pytest.raises(ValueError, match="timestep_spacing='uniform'"):
        ddim_timesteps(1000, 10, "uniform")
