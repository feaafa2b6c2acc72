"""CutMix / mixup oracles: the mixed label weight is the exact fraction of pixels from each source."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.families.classifier import Classifier
from lightning_vi.families.vae.vae import VAE
from lightning_vi.plugins.cutmix import CutMix
from lightning_vi.plugins.mixup import Mixup
from plugin_helpers import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("b,h,w", [(7, 9, 16), (5, 12, 5), (8, 8, 8)])
def test_cutmix_label_weight_equals_exact_pixel_fraction(b, h, w):
    """Pixels carry their source index; label i is unique to image i (num_classes = B)."""
    m = Classifier(input_shape=[2, h, w], num_classes=b, backbone="mlp", plugins=[CutMix(alpha=1.0)])
    plug = m.plugin("cutmix")
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, h, w).clone()
    y = torch.arange(b)
    torch.manual_seed(0)
    for _ in range(30):
        out = plug.transform_batch({"x": x, "y": y}, m)
        src = out["x"][:, 0].long().flatten(1)  # [B, H*W] source of every pixel
        frac = torch.zeros(b, b).scatter_add_(1, src, torch.ones_like(src, dtype=torch.float32)) / (h * w)
        assert torch.allclose(out["y_soft"], frac, atol=1e-6)
        assert torch.equal(out["x"][:, 0], out["x"][:, 1])  # one box for all channels
        assert torch.allclose(out["y_soft"].sum(1), torch.ones(b))


def test_cutmix_area_statistics_and_probability():
    m = Classifier(backbone="mlp", plugins=[CutMix(alpha=1.0)])
    plug = m.plugin("cutmix")
    x, y = torch.rand(4, 1, 32, 32), torch.arange(4)
    torch.manual_seed(0)
    lams = [plug.transform_batch({"x": x, "y": y}, m) and plug.last_lam for _ in range(500)]
    # lam ~ U(0,1) before clipping; clipping at the border only increases lam: E[lam'] in (0.5, 0.8)
    assert 0.5 < sum(lams) / len(lams) < 0.8
    never = Classifier(backbone="mlp", plugins=[CutMix(prob=0.0)])
    batch = {"x": x, "y": y}
    assert never.plugin("cutmix").transform_batch(batch, never) is batch


@pytest.mark.parametrize("seed", [3, 6, 7])
def test_mixup_labels_and_inputs_mix_with_the_same_lambda(seed):
    """Zhang et al. 2018, Eq. 1. Input i is the constant i and its label is class i; alpha=2 and these seeds
    give lam in [0.25, 0.61] (far from 0 and 1, and from 1/2, so lam and 1 - lam tell the partners apart)
    and partner permutations without fixed points, so every row is a genuine two-source mix."""
    b = 5
    m = Classifier(input_shape=[3], num_classes=b, backbone="mlp", plugins=[Mixup(alpha=2.0)])
    plug = m.plugin("mixup")
    x, y = torch.arange(float(b)).unsqueeze(1).expand(b, 3).clone(), torch.arange(b)
    torch.manual_seed(seed)
    out = plug.transform_batch({"x": x, "y": y}, m)
    lam = plug.last_lam
    assert 0.2 < lam < 0.8 and abs(lam - 0.5) > 0.1, f"seed {seed}: lam={lam} too close to 0, 1/2 or 1"
    # the partner of row i, read off the mixed input x~_i = lam i + (1 - lam) j, must be an integer
    partner = (out["x"][:, 0] - lam * torch.arange(float(b))) / (1 - lam)
    assert torch.allclose(partner, partner.round(), atol=1e-4), partner
    j = partner.round().long()
    assert sorted(j.tolist()) == list(range(b)) and bool((j != torch.arange(b)).all()), j
    expected_y = lam * torch.eye(b) + (1 - lam) * torch.eye(b)[j]  # the same lam on labels, row by row
    assert torch.allclose(out["y_soft"], expected_y, atol=1e-6), (out["y_soft"], lam, j)
    assert torch.allclose(out["y_soft"].max(1).values, torch.full((b,), max(lam, 1 - lam)), atol=1e-6)
    assert torch.equal(out["x"][:, 0], out["x"][:, 2])  # one lam for all features


def test_mixup_then_cutmix_compose_and_classifier_uses_soft_targets():
    torch.manual_seed(0)
    m = Classifier(backbone="mlp", plugins=["cutmix", "mixup"])
    assert [p.name for p in m.plugins] == ["cutmix", "mixup"]  # same order: list order
    batch = {"x": torch.rand(9, 1, 8, 8), "y": torch.randint(0, 10, (9,))}
    loss, terms = m.compute_loss(batch, "train")
    assert torch.isfinite(loss)
    soft = {"x": batch["x"], "y": batch["y"], "y_soft": torch.full((9, 10), 0.1)}
    out = m.objective(soft)
    assert torch.allclose(out["ce"], -(torch.log_softmax(out["logits"], -1) * 0.1).sum(-1).mean())


def test_cutmix_on_a_family_without_labels_fails_at_attach():
    with pytest.raises(TypeError, match="cutmix.*needs a family that .*: VAE lacks the attribute `num_classes`"):
        VAE(plugins=["cutmix"])
    with pytest.raises(TypeError, match="mixup.*needs a family that .*: VAE lacks"):
        VAE(plugins=["mixup"])
