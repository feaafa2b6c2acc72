"""Oracles for schedules, prediction-type conversions and guidance (samplers: test_samplers.py)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vi.families.diffusion.ddim_scheduler import ddim_timesteps
from lightning_vi.families.diffusion.guidance import drop_condition, guided
from lightning_vi.families.diffusion.schedules import NoiseSchedule, make_betas


def _linear_beta(i: int, T: int, b0: float, b1: float) -> float:
    """DDPM Sec. 4: betas evenly spaced from b0 to b1 (written out, not via linspace)."""
    return b0 + i * (b1 - b0) / (T - 1)


def _scaled_linear_beta(i: int, T: int, b0: float, b1: float) -> float:
    """Latent diffusion / diffusers: square roots evenly spaced, then squared."""
    return (math.sqrt(b0) + i * (math.sqrt(b1) - math.sqrt(b0)) / (T - 1)) ** 2


def _abar_from_betas(beta, t: int, T: int, *args) -> float:
    """alpha_bar_t = prod_{i<=t} (1 - beta_i) (DDPM Eq. 4), a plain product in float64."""
    return math.prod(1.0 - beta(i, T, *args) for i in range(t + 1))


def _nd_alpha_bar(t: float, T: int, s: float = 0.008) -> float:
    """Nichol & Dhariwal 2021, Eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s) / (1 + s) * pi / 2)."""
    f = lambda u: math.cos(((u / T) + s) / (1 + s) * math.pi / 2) ** 2
    return f(t) / f(0)


def _nd_beta(i: int, T: int) -> float:
    """Nichol & Dhariwal Sec. 3.2: beta_i = 1 - alpha_bar(i+1) / alpha_bar(i), clipped at 0.999."""
    return min(1.0 - _nd_alpha_bar(i + 1, T) / _nd_alpha_bar(i, T), 0.999)


T_CHECK = (0, 1, 499, 500, 998, 999)


def test_linear_schedule_known_values():
    T = 1000
    s = NoiseSchedule(T, "linear")
    for t in T_CHECK:
        assert s.betas[t].item() == pytest.approx(_linear_beta(t, T, 1e-4, 0.02), rel=1e-6), t
        assert s.alphas_cumprod[t].item() == pytest.approx(_abar_from_betas(_linear_beta, t, T, 1e-4, 0.02), rel=1e-5), t
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.0358e-05, rel=1e-3)  # DDPM T=1000: abar_T ~ 4.04e-5
    assert s.alphas_cumprod[499].item() == pytest.approx(0.078587, rel=1e-3)


def test_scaled_linear_schedule_known_values():
    T, b0, b1 = 1000, 0.00085, 0.012  # Stable Diffusion's numbers
    s = NoiseSchedule(T, "scaled_linear", b0, b1)
    for t in T_CHECK:
        assert s.betas[t].item() == pytest.approx(_scaled_linear_beta(t, T, b0, b1), rel=1e-6), t
        assert s.alphas_cumprod[t].item() == pytest.approx(_abar_from_betas(_scaled_linear_beta, t, T, b0, b1), rel=1e-5), t
    assert s.betas[0].item() == pytest.approx(b0) and s.betas[-1].item() == pytest.approx(b1)
    # the midpoint differs from the linear one: ((sqrt(b0) + sqrt(b1)) / 2)^2 < (b0 + b1) / 2
    assert s.betas[499].item() == pytest.approx(0.0048038, rel=1e-4)
    assert s.alphas_cumprod[-1].item() == pytest.approx(0.0046601, rel=1e-3)


def test_cosine_schedule_known_values():
    T = 1000
    s = NoiseSchedule(T, "squaredcos_cap_v2")
    betas = make_betas("squaredcos_cap_v2", T)
    for t in T_CHECK:
        assert betas[t].item() == pytest.approx(_nd_beta(t, T), rel=1e-9), t
        assert s.alphas_cumprod[t].item() == pytest.approx(_abar_from_betas(_nd_beta, t, T), rel=1e-5), t
    # discrete alpha_bar_t is the continuous one at (t + 1) / T wherever the clip does not bind
    for t in (0, 499, 998):
        assert s.alphas_cumprod[t].item() == pytest.approx(_nd_alpha_bar(t + 1, T), rel=1e-5), t
    # known numbers (s = 0.008): beta_0 ~ 4.128e-5, abar at T/2 ~ 0.4923, beta_{T-2} ~ 0.75, clipped last beta
    assert betas[0].item() == pytest.approx(4.1284e-05, rel=1e-4)
    assert s.alphas_cumprod[500].item() == pytest.approx(0.49229, rel=1e-4)
    assert betas[998].item() == pytest.approx(0.75, rel=1e-4)
    assert betas[999].item() == 0.999 and (betas[:999] < 0.999).all()  # only the last beta is clipped
    assert s.alphas_cumprod[999].item() == pytest.approx(s.alphas_cumprod[998].item() * (1 - 0.999), rel=1e-5)
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
