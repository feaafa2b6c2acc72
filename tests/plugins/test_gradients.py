"""Oracles of the gradient plugins: clipping (fp32, bf16-mixed, 16-mixed, manual), AGC, PGC, gradient dropout."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from helpers import quiet_trainer
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.classifier import Classifier
from lightning_vi.families.vae.vae import VAE
from lightning_vi.plugins.gradient_clipping import GradientClipping, adaptive_clip_, unitwise_norm
from lightning_vi.plugins.gradient_dropout import GradientDropout, drop_gradient, keep_probability
from lightning_vi.plugins.pixel_grad_clip import PixelGradClip, pixel_clip
from plugin_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingClassifier(Classifier):
    """Records the unscaled total gradient norm Lightning's optimizer step will use (module hook runs
    after all callback hooks, i.e. after the plugins)."""

    def on_before_optimizer_step(self, optimizer):
        grads = [p.grad.float() for p in self.parameters() if p.grad is not None]
        self.norms = getattr(self, "norms", []) + [float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))]
        scaler = getattr(self.trainer.precision_plugin if hasattr(self.trainer, "precision_plugin") else self.trainer.precision, "scaler", None)
        self.scales = getattr(self, "scales", []) + [None if scaler is None else float(scaler.get_scale())]


class ManualClassifier(RecordingClassifier):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss, _ = self.compute_loss(batch, "train")
        self.manual_backward(loss * 100.0)
        opt.step()


@pytest.mark.parametrize("precision,manual", [("32-true", False), ("bf16-mixed", False), ("16-mixed", False),
                                              ("32-true", True)])
def test_gradient_clipping_norm_bounded_on_unscaled_grads(tmp_path, precision, manual):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=64)
    cls = ManualClassifier if manual else RecordingClassifier
    m = cls(backbone="mlp", lr=1e-3, plugins=[GradientClipping(threshold=0.05)])
    kw = {"precision": precision}
    if precision == "16-mixed":  # fp16 AMP with a GradScaler, forced on CPU (the GPU code path)
        from lightning.pytorch.plugins import MixedPrecision

        kw = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))]}
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0, **kw)
    trainer.fit(m, dm)
    plug = m.plugin("gradient_clipping")
    assert len(m.norms) == 4
    assert all(n <= 0.05 * (1 + 1e-4) for n in m.norms), m.norms
    assert max(plug.last_norms) > 0.05  # clipping was active (pre-clip norm above the threshold)
    if precision == "16-mixed":
        assert m.scales[0] is not None and m.scales[0] > 1  # grads were scaled in backward, unscaled here


def test_gradient_clipping_value_and_per_group_thresholds():
    a, b = torch.nn.Parameter(torch.zeros(10)), torch.nn.Parameter(torch.zeros(3, 4))
    a.grad, b.grad = torch.full((10,), 3.0), torch.full((3, 4), 2.0)
    GradientClipping(threshold=1.0, group_thresholds=[0.5, None]).clip([[a], [b]])
    assert abs(float(a.grad.norm()) - 0.5) < 1e-5 and torch.equal(b.grad, torch.full((3, 4), 2.0))
    GradientClipping(algorithm="value", threshold=0.1).clip([[a, b]])
    assert float(b.grad.abs().max()) <= 0.1 + 1e-6


def test_agc_leaves_small_unitwise_gradients_unchanged():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 5))
    g = torch.randn(4, 5) * 1e-3
    g[2] = w.detach()[2] * 5.0  # unit 2: gradient norm 5x its weight norm
    w.grad = g.clone()
    adaptive_clip_([w], clip=0.1)
    ratio = unitwise_norm(w.grad) / unitwise_norm(w.detach())
    for i in (0, 1, 3):
        assert torch.equal(w.grad[i], g[i])  # small unit-wise grads untouched
    assert abs(float(ratio[2]) - 0.1) < 1e-5  # big one clipped to lambda * ||W_i||
    assert torch.allclose(torch.nn.functional.normalize(w.grad[2], dim=0), torch.nn.functional.normalize(g[2], dim=0))


def test_pixel_grad_clip_bounds_every_pixel_keeps_direction():
    torch.manual_seed(0)
    src = torch.randn(2, 3, 5, 7, requires_grad=True)
    w = torch.randn(2, 3, 5, 7) * torch.linspace(0.01, 10, 7)  # some pixels get big, some small gradients
    grads = {}
    for clip in (False, True):
        img = src * 2.0
        if clip:
            PixelGradClip(target="img", threshold=1.0).extra_terms({"img": img}, {}, None)
        img.retain_grad()
        (img * w).sum().backward()
        grads[clip] = img.grad.clone()
        src.grad = None
    norms, raw = grads[True].norm(dim=1), grads[False].norm(dim=1)
    assert float(norms.max()) <= 1.0 + 1e-5 and float(raw.max()) > 1.0
    cos = torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    small = raw <= 1.0
    assert torch.allclose(grads[True].permute(0, 2, 3, 1)[small], grads[False].permute(0, 2, 3, 1)[small])
    g = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(pixel_clip(g, 1.0), torch.tensor([[0.6, 0.8]]))


def test_pixel_grad_clip_in_a_classifier_changes_parameter_gradients():
    torch.manual_seed(0)
    batch = {"x": torch.rand(8, 1, 8, 8), "y": torch.randint(0, 10, (8,))}
    grads = []
    for plugins in (None, [PixelGradClip(target="features", threshold=1e-4, channel_dim=None)]):
        torch.manual_seed(1)
        m = Classifier(backbone="mlp", plugins=plugins)
        m.compute_loss(batch, "train")[0].backward()
        grads.append(m.backbone.net[0].weight.grad.norm())
    assert grads[1] < grads[0]


def test_gradient_dropout_keep_rate_matches_formula():
    torch.manual_seed(0)
    g_t = torch.randn(2000)
    g_r = torch.randn(2000)
    p = keep_probability(g_t, g_r)
    assert torch.allclose(p, 0.5 * (1 + g_t / (g_t.abs() + g_r.abs())))
    g = g_t + g_r
    gen = torch.Generator().manual_seed(0)
    kept = torch.stack([(drop_gradient(g, g_t, g_r, 1.0, gen) != 0).float() for _ in range(400)]).mean(0)
    assert float((kept - p).abs().max()) < 0.1  # per entry, 400 draws: 4 sigma
    assert abs(float(kept.mean() - p.mean())) < 0.01
    half = drop_gradient(g, g_t, g_r, 0.5, gen)  # lambda=0.5: dropped entries keep half
    assert set(torch.unique((half / g).round(decimals=4)).tolist()) <= {0.5, 1.0}


def test_gradient_dropout_lambda_zero_is_identity_and_runs_in_trainer(tmp_path):
    batch = {"x": torch.rand(8, 1, 8, 8), "y": torch.zeros(8, dtype=torch.long)}
    grads = []
    for lam in (None, 0.0, 1.0):
        L.seed_everything(0)
        m = VAE(architecture="mlp", plugins=None if lam is None else [GradientDropout(reg_term="kl", lam=lam)])
        torch.manual_seed(1)
        loss, _ = m.compute_loss(batch, "train")
        loss.backward()
        for p in m.plugins:
            p.on_before_optimizer_step(None, m, None)
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    assert torch.equal(grads[0], grads[1])
    assert not torch.equal(grads[0], grads[2]) and float((grads[2] == 0).float().mean()) > 0.05
    L.seed_everything(0)
    m = VAE(architecture="mlp", plugins=[{"gradient_dropout": {"lam": 0.5}}])
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(m, DigitsDataModule(batch_size=32))
