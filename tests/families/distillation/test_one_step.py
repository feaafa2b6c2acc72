"""One-step students (f-distill, SNOOPI): the weighting h(r) against f''(r) r^2 of the f-divergences
written here, the sign of the distribution-matching gradient against a closed-form Gaussian case, the
shared guidance scale of SNOOPI, and the bad-input messages."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_vi.families.distillation.one_step import (FDistill, SNOOPI, NoiseDataModule, f_weight,
                                                         normalise_weights)
from lightning_vi.registry import FAMILIES

torch.set_num_threads(1)

# f-divergences D_f(p || q) = E_q f(p / q) (Xu et al. 2025, Tab. 1), written independently of the module.
F_DIVS = {
    "reverse_kl": lambda r: -torch.log(r),
    "forward_kl": lambda r: r * torch.log(r),
    "js": lambda r: r * torch.log(r) - (1 + r) * torch.log((1 + r) / 2),
}


@pytest.mark.parametrize("name", sorted(F_DIVS))
def test_weight_is_f_second_derivative_times_r_squared(name):
    r = torch.logspace(-2, 2, 41, dtype=torch.float64).requires_grad_(True)
    (d1,) = torch.autograd.grad(F_DIVS[name](r).sum(), r, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), r)
    expected = d2 * r.detach() ** 2
    assert torch.allclose(f_weight(name, r.detach().log()), expected, rtol=1e-9, atol=1e-12)


def test_normalised_weights_have_batch_mean_one():
    h = torch.rand(64).exp()
    out = normalise_weights(h)
    assert out.mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(out / out[0], h / h[0])


class ExactGaussianEps(nn.Module):
    """eps of N(m, v I) noised by the teacher's schedule: sqrt(1 - a) (x - sqrt(a) m) / (a v + 1 - a)."""

    def __init__(self, abar: torch.Tensor, m: torch.Tensor, v: float) -> None:
        super().__init__()
        self.abar, self.m, self.v = abar, m, v

    def forward(self, x, t, y=None, cond=None):
        a = self.abar[t].reshape(-1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.m) / (a * self.v + 1 - a)


def test_gradient_is_reverse_kl_gradient_between_gaussians():
    """Student N(0, I) (exact fake score), teacher N((3, 0), I): descending the gradient moves the samples
    toward the teacher, and its mean is the closed-form sample gradient of KL(q || p), E[grad log q - grad
    log p] = -(mu_p - mu_q) / 1, up to DMD's positive per-sample normaliser."""
    torch.manual_seed(0)
    m = FDistill(teacher="mixture", teacher_args={"means": [[3.0, 0.0]], "stds": 1.0}, weighting="reverse_kl")
    m.fake = ExactGaussianEps(m.teacher.alphas_cumprod, torch.zeros(2), 1.0)
    x = torch.randn(4096, 2)
    grad, _ = m.distill_grad(x, None)
    g = grad.mean(0)
    assert g[0] < -0.2 and abs(g[1]) < 0.1 * abs(g[0])
    # student already equal to the teacher: no gradient
    m.fake = ExactGaussianEps(m.teacher.alphas_cumprod, torch.tensor([3.0, 0.0]), 1.0)
    grad, _ = m.distill_grad(x + torch.tensor([3.0, 0.0]), None)
    assert grad.abs().max() < 2e-3


class TeacherAsFake(nn.Module):
    """A fake score equal to the conditional teacher (label K = null), so guided(fake, s) = guided(teacher, s)."""

    def __init__(self, teacher) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x, t, y=None, cond=None):
        return self.teacher.eps(x, t, y)


def test_snoopi_draws_one_scale_per_step_for_teacher_and_fake():
    torch.manual_seed(0)
    m = SNOOPI(teacher="ring", guidance_range=[2.0, 6.0])
    scales = [m.draw_scale() for _ in range(200)]
    assert min(scales) >= 2.0 and max(scales) <= 6.0 and max(scales) - min(scales) > 3.0
    # fake == teacher: the gradient vanishes only if both use the same drawn scale
    m.fake = TeacherAsFake(m.teacher)
    x = m.teacher.sample(256)
    y = torch.randint(0, 8, (256,))
    grad, diag = m.distill_grad(x, y)
    assert 2.0 <= float(diag["guidance_scale"]) <= 6.0
    assert grad.abs().max() < 1e-4
    # and it does not vanish when the fake is guided with another scale than the teacher
    t = m.sample_t(256, x.device)
    x_t = m.add_noise(x, t, torch.randn_like(x))
    assert (m.teacher_eps(x_t, t, y, 4.0) - m.fake_eps(x_t, t, y, 1.0)).abs().max() > 1e-2


def test_registered_and_lightning_fit_runs(tmp_path):
    from helpers import quiet_trainer

    assert FAMILIES.get("f_distill") is FDistill and FAMILIES.get("snoopi") is SNOOPI
    m = FDistill(weighting="forward_kl", hidden=32, fake_hidden=32, disc_hidden=32)
    dm = NoiseDataModule(latent_dim=2, batch_size=32, batches_per_epoch=3, val_batches=1)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1)
    trainer.fit(m, dm)
    logged = trainer.callback_metrics
    for k in ("train/loss", "train/fake_dsm", "train/disc", "val/teacher_nll"):
        assert k in logged and bool(torch.isfinite(logged[k])), sorted(logged)
    assert m.sample(5).shape == (5, 2)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    back = FDistill.load_from_checkpoint(path)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert back.hparams.weighting == "forward_kl" and torch.equal(back.sample(7, g()), m.sample(7, g()))


# -- bad input ---------------------------------------------------------------------------------------
def test_guidance_range_low_above_high_is_rejected():
    with pytest.raises(ValueError, match=r"guidance_range=\[5.0, 2.0\] has low=5.0 > high=2.0"):
        SNOOPI(teacher="ring", guidance_range=[5.0, 2.0])


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match=r"weighting='chi2' is not allowed; choose one of \['reverse_kl', 'forward_kl', 'js'\]"):
        FDistill(weighting="chi2")


def test_guidance_needs_a_conditional_teacher():
    uncond = {"means": [[0.0, 0.0], [2.0, 0.0]], "stds": 0.1, "classes": []}  # num_classes = 0
    with pytest.raises(ValueError, match="needs a class-conditional teacher; teacher='mixture' has num_classes=0"):
        SNOOPI(teacher="mixture", teacher_args=uncond, guidance_range=[2.0, 3.0])
    with pytest.raises(ValueError, match=r"guidance_range=\[2.0, 3.0\] needs conditional=True"):
        FDistill(teacher="ring", guidance_range=[2.0, 3.0], conditional=False)


def test_wrong_family_teacher_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "vae.ckpt"
    torch.save({"hyper_parameters": {"input_shape": [1, 8, 8], "latent_dim": 8},
                "lvi_class_path": "lightning_vi.families.vae.vae.VAE", "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"was written by 'vae'; f_distill needs a 'ddpm' or 'flow_matching' checkpoint"):
        FDistill(teacher=str(path))
