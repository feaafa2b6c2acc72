"""Teachers: the analytic mixture score against autograd of a log-density written here, and the
checkpoint teachers' eps against closed-form Gaussian posteriors (DDPM and flow matching)."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from lightning_vi.families.diffusion.schedules import NoiseSchedule
from lightning_vi.families.distillation.teachers import (
    CheckpointTeacher,
    GaussianMixtureTeacher,
    guided_eps,
    load_teacher,
    resolve_teacher,
)

D = torch.float64


def mixture_logpdf(x, means, covs, weights, abar):
    """log p_t(x) of the noised mixture, per row of x with its own abar (written independently)."""
    out = []
    for xi, a in zip(x, abar):
        comp = MultivariateNormal(a.sqrt() * means, covariance_matrix=a * covs + (1 - a) * torch.eye(means.shape[1], dtype=D))
        out.append(MixtureSameFamily(Categorical(probs=weights), comp).log_prob(xi))
    return torch.stack(out)


def autograd_score(x, means, covs, weights, abar):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(mixture_logpdf(x, means, covs, weights, abar).sum(), x)
    return g


@pytest.fixture(scope="module")
def full_cov_mixture():
    g = torch.Generator().manual_seed(0)
    K, d = 3, 2
    means = torch.randn(K, d, generator=g, dtype=D) * 2
    A = torch.randn(K, d, d, generator=g, dtype=D) * 0.5
    covs = A @ A.transpose(-1, -2) + 0.05 * torch.eye(d, dtype=D)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=D)
    return means, covs, weights


def test_score_matches_autograd_of_noised_mixture(full_cov_mixture):
    means, covs, weights = full_cov_mixture
    teacher = GaussianMixtureTeacher(means, covs=covs, weights=weights, classes=[[0, 2], [1]]).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 2, generator=g, dtype=D) * 2
    t = torch.randint(0, 1000, (16,), generator=g)
    abar = NoiseSchedule(1000, "linear").alphas_cumprod.double()[t]
    want = autograd_score(x, means, covs, weights, abar)
    torch.testing.assert_close(teacher.score(x, t), want, rtol=1e-4, atol=1e-6)
    # eps = -sqrt(1 - abar) * score
    torch.testing.assert_close(teacher.eps(x, t), -(1 - abar).sqrt()[:, None] * want, rtol=1e-4, atol=1e-6)
    # log density itself
    torch.testing.assert_close(teacher.log_prob_abar(x, abar), mixture_logpdf(x, means, covs, weights, abar), rtol=1e-5, atol=1e-6)
    # the condition restricts to a subset with renormalised weights (class 0 = modes {0, 2})
    sub = torch.tensor([0, 2])
    cond = torch.zeros(16, dtype=torch.long)
    want_c = autograd_score(x, means[sub], covs[sub], weights[sub] / weights[sub].sum(), abar)
    torch.testing.assert_close(teacher.score(x, t, cond), want_c, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(teacher.log_prob_abar(x, abar, cond),
                               mixture_logpdf(x, means[sub], covs[sub], weights[sub] / weights[sub].sum(), abar),
                               rtol=1e-5, atol=1e-6)
    # the null token (= num_classes) is the whole mixture
    null = torch.full((16,), teacher.num_classes, dtype=torch.long)
    torch.testing.assert_close(teacher.score(x, t, null), want, rtol=1e-4, atol=1e-6)


def test_score_at_abar_one_is_data_score_and_t0_is_close():
    teacher = GaussianMixtureTeacher.ring(8, radius=2.0, std=0.3).double()
    a = 2 * math.pi * torch.arange(8, dtype=D) / 8
    means = 2.0 * torch.stack([a.cos(), a.sin()], 1)
    covs = 0.09 * torch.eye(2, dtype=D).expand(8, 2, 2)
    w = torch.full((8,), 1 / 8, dtype=D)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), dtype=D) * 2
    data = autograd_score(x, means, covs, w, torch.ones(32, dtype=D))
    torch.testing.assert_close(teacher.score_abar(x, torch.ones(32, dtype=D)), data, rtol=1e-5, atol=1e-6)
    at0 = teacher.score(x, torch.zeros(32, dtype=torch.long))  # abar_0 = 1 - 1e-4
    assert (at0 - data).abs().max() < 1e-2 * data.abs().max()
    torch.testing.assert_close(teacher.means.double(), means)
    torch.testing.assert_close(teacher.stds.double(), torch.full((8, 2), 0.3, dtype=D), rtol=1e-5, atol=1e-6)


def test_eps_is_posterior_mean_noise_by_monte_carlo():
    """E[eps | x_t] is the MSE-optimal denoiser: it beats small perturbations on a fresh sample."""
    teacher = GaussianMixtureTeacher.ring(8, std=0.1)
    g = torch.Generator().manual_seed(3)
    x0 = teacher.sample(20000, g)
    t = torch.full((20000,), 300)
    noise = torch.randn(x0.shape, generator=g)
    x_t = NoiseSchedule(1000).add_noise(x0, noise, t)
    e = teacher.eps(x_t, t)
    base = ((e - noise) ** 2).sum(-1).mean()
    for scale in (0.9, 1.1):
        assert ((scale * e - noise) ** 2).sum(-1).mean() > base


def test_sample_moments_and_modes():
    teacher = GaussianMixtureTeacher.ring(8, radius=2.0, std=0.1)
    x = teacher.sample(8000, torch.Generator().manual_seed(4))
    k = teacher.assign_modes(x)
    counts = torch.bincount(k, minlength=8).float() / 8000
    assert (counts - 1 / 8).abs().max() < 0.02
    resid = x - teacher.means[k]
    assert abs(resid.std().item() - 0.1) < 0.005
    c = torch.full((100,), 3)
    assert (teacher.assign_modes(teacher.sample(100, cond=c)) == 3).all()


def test_guided_eps_is_cfg_combination():
    teacher = GaussianMixtureTeacher.ring(8, std=0.2)
    x = torch.randn(10, 2)
    t = torch.full((10,), 500)
    c = torch.arange(10) % 8
    e_c, e_u = teacher.eps(x, t, c), teacher.eps(x, t)
    torch.testing.assert_close(guided_eps(teacher, x, t, c, 3.0), e_u + 3.0 * (e_c - e_u))
    torch.testing.assert_close(guided_eps(teacher, x, t, None, 3.0), e_u)


def test_bad_teacher_arguments():
    with pytest.raises(ValueError, match="exactly one of stds"):
        GaussianMixtureTeacher([[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"stds must be"):
        GaussianMixtureTeacher([[0.0, 0.0]], stds=[0.1, 0.2, 0.3])
    teacher = GaussianMixtureTeacher.ring(4)
    with pytest.raises(ValueError, match=r"cond must be long class indices .* in \[0, 4\]"):
        teacher.eps(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), torch.tensor([0, 9]))
    with pytest.raises(ValueError, match=r"t must be integer timesteps in \[0, 1000\)"):
        teacher.eps(torch.zeros(2, 2), torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match=r"teacher='nope' is not allowed; choose one of \['ring', 'mixture'\]"):
        resolve_teacher("nope")


# -- checkpoint teachers ------------------------------------------------------------------------
MU, SIG = torch.tensor([1.0, -0.5]), 0.4


def gauss_eps(x_t, abar):
    """E[eps | x_t] for data N(MU, SIG^2 I) under the DDPM forward process."""
    return (1 - abar).sqrt() / (abar * SIG ** 2 + 1 - abar) * (x_t - abar.sqrt() * MU)


class ExactVNet(nn.Module):
    """DDPM v-prediction of Gaussian data: v = sqrt(a) E[eps] - sqrt(1-a) E[x0]."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, t, y=None, cond=None):
        a = self.schedule.alphas_cumprod[t][:, None]
        e = gauss_eps(x, a)
        x0 = (x - (1 - a).sqrt() * e) / a.sqrt()
        return a.sqrt() * e - (1 - a).sqrt() * x0


class ExactVelocity(nn.Module):
    """Flow-matching velocity E[x1 - x0 | x_s] on x_s = (1-s) x0 + s x1, x0 ~ N(0, I), x1 ~ N(MU, SIG^2 I)."""

    def forward(self, x, s, y=None, cond=None):
        s = s[:, None]
        var = s ** 2 * SIG ** 2 + (1 - s) ** 2
        e0 = (1 - s) / var * (x - s * MU)
        e1 = MU + s * SIG ** 2 / var * (x - s * MU)
        return e1 - e0


def test_ddpm_teacher_converts_v_prediction_to_eps():
    from lightning_vi.families.diffusion.ddpm import DDPM

    model = DDPM(input_shape=[2], prediction_type="v", hidden=8, depth=1)
    model.net = ExactVNet(model.schedule)
    teacher = CheckpointTeacher(model, "ddpm")
    x = torch.randn(12, 2)
    t = torch.randint(0, 1000, (12,))
    a = model.schedule.alphas_cumprod[t][:, None]
    torch.testing.assert_close(teacher.eps(x, t), gauss_eps(x, a), rtol=1e-4, atol=1e-5)
    assert teacher.num_timesteps == 1000 and teacher.data_shape == (2,) and teacher.num_classes == 0


def test_flow_matching_teacher_velocity_to_eps():
    from lightning_vi.families.diffusion.flow_matching import FlowMatching

    model = FlowMatching(input_shape=[2], hidden=8, depth=1)
    model.net = ExactVelocity()
    teacher = CheckpointTeacher(model, "flow_matching", {"num_train_timesteps": 500, "beta_schedule": "squaredcos_cap_v2"})
    x = torch.randn(12, 2) * 2
    t = torch.randint(0, 500, (12,))
    a = teacher.alphas_cumprod[t][:, None]
    torch.testing.assert_close(teacher.eps(x, t), gauss_eps(x, a), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(teacher.score(x, t), -gauss_eps(x, a) / (1 - a).sqrt(), rtol=1e-4, atol=1e-5)
    assert teacher.num_timesteps == 500


def _save(model, path, tmp_path):
    from torch.utils.data import DataLoader

    from helpers import quiet_trainer
    from lightning_vi.data.base import TensorDictDataset

    ds = TensorDictDataset({"x": torch.randn(16, 2), "y": torch.arange(16) % 4})
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, DataLoader(ds, batch_size=16, collate_fn=lambda b: b))
    trainer.save_checkpoint(path)
    return str(path)


def test_load_teacher_from_checkpoints_and_wrong_family(tmp_path):
    from lightning_vi.families.diffusion.ddpm import DDPM
    from lightning_vi.families.diffusion.flow_matching import FlowMatching
    from lightning_vi.families.vae.vae import VAE

    L.seed_everything(0)
    ddpm = DDPM(input_shape=[2], hidden=16, depth=1, num_classes=4, data_scale=2.0)
    p = _save(ddpm, tmp_path / "ddpm.ckpt", tmp_path)
    teacher, spec = load_teacher(p)
    assert spec["family"] == "ddpm" and teacher.num_classes == 4
    x, t, c = torch.randn(6, 2), torch.randint(0, 1000, (6,)), torch.tensor([0, 1, 2, 3, 4, 4])
    ddpm.eval()
    torch.testing.assert_close(teacher.eps(x, t, c), ddpm.net(x, t, c))
    torch.testing.assert_close(teacher.eps(x, t), ddpm.net(x, t, torch.full((6,), 4)))
    torch.testing.assert_close(teacher.to_model_space(torch.ones(1, 2)), torch.full((1, 2), 0.5))
    # rebuilt from its spec (weights from the consumer's state_dict)
    again, _ = resolve_teacher(p, teacher_config=spec)
    again.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(again.eps(x, t, c), teacher.eps(x, t, c))

    fm = FlowMatching(input_shape=[2], hidden=16, depth=1)
    teacher, spec = load_teacher(_save(fm, tmp_path / "fm.ckpt", tmp_path))
    assert spec["family"] == "flow_matching" and teacher.eps(x, t).shape == (6, 2)

    vae = VAE(input_shape=[2], latent_dim=2, hidden_dims=[8])
    bad = _save(vae, tmp_path / "vae.ckpt", tmp_path)
    with pytest.raises(ValueError, match=r"was written by 'vae'; distillation needs a 'ddpm' or 'flow_matching' checkpoint"):
        load_teacher(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_teacher(str(tmp_path / "missing.ckpt"))
