"""Oracles for the reverse loop and its DDPM / DDIM schedulers (known properties, closed forms)."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.families.diffusion.ddim_scheduler import DDIMScheduler, ddim_timesteps
from lightning_vi.families.diffusion.ddpm_scheduler import DDPMScheduler
from lightning_vi.families.diffusion.sample_loop import sample_loop
from lightning_vi.families.diffusion.schedules import NoiseSchedule


def test_timestep_spacings_match_diffusers():
    assert ddim_timesteps(1000, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ddim_timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ddim_timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert DDPMScheduler(NoiseSchedule(1000), 4).timesteps == [750, 500, 250, 0]


def _perfect_eps(point, s):
    """Exact noise predictor for the one-point data set {point}."""
    def fn(x, t):
        a = s._abar(t, x)
        return (x - a.sqrt() * point) / (1 - a).sqrt()
    return fn


def test_ddim_eta0_deterministic_and_lands_on_point():
    s = NoiseSchedule(1000, "linear")
    point = torch.tensor([1.5, -0.7])
    run = lambda sch, seed=1: sample_loop(_perfect_eps(point, s), sch, (16, 2), torch.Generator().manual_seed(seed))
    out1 = run(DDIMScheduler(s, 50, eta=0.0))
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    out2 = sample_loop(_perfect_eps(point, s), DDIMScheduler(s, 50), x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out1, out2)  # eta = 0: the generator only draws x_T
    assert torch.allclose(out1, point.expand_as(out1), atol=1e-4)
    for spacing in ("trailing", "linspace"):
        out = run(DDIMScheduler(s, 20, spacing=spacing))
        assert torch.allclose(out, point.expand_as(out), atol=1e-4)
    noisy = run(DDPMScheduler(s, 100), seed=3)
    assert torch.allclose(noisy, point.expand_as(noisy), atol=1e-3)


def test_ddpm_step_is_eq11_with_beta_tilde_variance():
    """steps = T: mean = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) (Ho et al. Eq. 11), std = sqrt(beta_tilde)."""
    s = NoiseSchedule(100, "linear", 1e-4, 0.2)
    sch = DDPMScheduler(s)
    assert sch.timesteps == list(range(99, -1, -1))
    x_t, eps = torch.randn(4000, 3), torch.randn(4000, 3)
    b, abar = s.betas.double(), s.alphas_cumprod.double()
    for t in (50, 1):
        mean = (x_t.double() - b[t] / (1 - abar[t]).sqrt() * eps.double()) / (1 - b[t]).sqrt()
        var = (1 - abar[t - 1]) / (1 - abar[t]) * b[t]
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t)).double()
        out = sch.step(eps, t, x_t, torch.Generator().manual_seed(t)).double()
        assert torch.allclose(out, mean + var.sqrt() * z, atol=1e-4)
    assert torch.allclose(sch.step(eps, 0, x_t).double(), (x_t.double() - b[0] / (1 - abar[0]).sqrt() * eps.double())
                          / (1 - b[0]).sqrt(), atol=1e-4)  # no noise at t = 0


@pytest.mark.parametrize("steps", [10, 100])
def test_ddim_eta1_is_ddpm(steps):
    """Song et al. 2021 (Eq. 16): eta = 1 gives DDPM's ancestral sampler, draw for draw."""
    s = NoiseSchedule(100, "squaredcos_cap_v2", prediction_type="v")
    W = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)) * 0.5
    fn = lambda x, t: torch.tanh(x @ W) * (t[:, None] / 100.0)
    ddpm = sample_loop(fn, DDPMScheduler(s, steps), (64, 3), torch.Generator().manual_seed(5))
    ddim = sample_loop(fn, DDIMScheduler(s, steps, eta=1.0, spacing="leading"), (64, 3), torch.Generator().manual_seed(5))
    assert torch.allclose(ddpm, ddim, atol=1e-5)
    eta0 = sample_loop(fn, DDIMScheduler(s, steps, eta=0.0, spacing="leading"), (64, 3), torch.Generator().manual_seed(5))
    assert not torch.allclose(ddpm, eta0, atol=1e-2)


def test_sample_loop_visits_each_timestep_once_in_order():
    class Recorder:
        timesteps = [7, 3, 0]

        def __init__(self):
            self.seen = []

        def step(self, out, t, x, generator=None):
            self.seen.append((t, out[0].item()))
            return x + 1

    rec = Recorder()
    out = sample_loop(lambda x, t: t.float() + 0 * x.sum(1), rec, x_T=torch.zeros(2, 1))
    assert rec.seen == [(7, 7.0), (3, 3.0), (0, 0.0)] and torch.equal(out, torch.full((2, 1), 3.0))
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        DDPMScheduler(NoiseSchedule(10), 0)
    with pytest.raises(ValueError, match="eta=-1"):
        DDIMScheduler(NoiseSchedule(10), 5, eta=-1.0)
    with pytest.raises(ValueError, match="needs shape"):
        sample_loop(lambda x, t: x, rec)


def test_flow_matching_guidance_is_the_cfg_combination():
    from lightning_vi.families.diffusion.flow_matching import FlowMatching

    torch.manual_seed(0)
    fm = FlowMatching(hidden=16, depth=1, num_classes=3).eval()
    x, t, c = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 1])
    vc, vu = fm.net(x, t, c), fm.net(x, t, torch.full_like(c, 3))
    assert torch.allclose(fm.velocity_fn(c, 3, 2.5)(x, t), vu + 2.5 * (vc - vu), atol=1e-5)
    assert torch.allclose(fm.velocity_fn(c, 3, 0.0)(x, t), vu, atol=1e-6)
