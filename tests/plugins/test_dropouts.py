"""Oracles of the dropout-type plugins: nested (PCA ordering), ordered (SVD), multi-sample, dream."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from lightning_vi.data import DigitsDataModule
from lightning_vi.families.classifier import Classifier
from lightning_vi.plugins.multisample_dropout import MultiSampleDropout
from lightning_vi.plugins.nested_dropout import NestedDropout, sample_truncation
from lightning_vi.plugins.ordered_dropout import OrderedDropout
from plugin_helpers import LinearAE, LinearRegressor, fit_full_batch, one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def prefix_angles(w: np.ndarray, ref: np.ndarray) -> list[float]:
    """Largest principal angle (degrees) between span(w[:, :j]) and span(ref[:, :j]) for every j."""
    return [float(np.degrees(subspace_angles(w[:, :j], ref[:, :j]).max())) for j in range(1, w.shape[1] + 1)]


def test_nested_dropout_linear_ae_recovers_pca_ordering():
    L.seed_everything(0)
    d, k = 8, 4
    q, _ = torch.linalg.qr(torch.randn(d, d))
    x = (torch.randn(2000, d) * torch.tensor([3.0, 2.5, 2.0, 1.5, 0.6, 0.4, 0.2, 0.1])) @ q.T
    pcs = PCA(k).fit(x.numpy()).components_.T
    angles = {}
    for nested in (False, True):
        L.seed_everything(1)
        m = LinearAE(d, k, plugins=[NestedDropout(rho=0.3, layer="encoder")] if nested else None)
        fit_full_batch(m, {"x": x}, 1500, 1e-2)
        angles[nested] = prefix_angles(m.decoder.weight.detach().numpy(), pcs)
    # Every prefix of the nested-dropout code spans the matching PCA subspace (ordering recovered) ...
    assert max(angles[True]) < 2.0, angles
    # ... which a plain autoencoder does not (only the full k-dim subspace is identified).
    assert max(angles[False][:-1]) > 20.0 and angles[False][-1] < 2.0, angles


def test_nested_dropout_index_distributions_and_eval_truncation():
    torch.manual_seed(0)
    b = sample_truncation(200_000, 50, "geometric", 0.2, 1.0)
    emp = torch.bincount(b, minlength=51)[1:6].float() / len(b)
    expected = 0.2 * 0.8 ** torch.arange(5.0)
    assert torch.allclose(emp, expected, atol=3e-3)
    h = sample_truncation(200_000, 50, "half_normal", 0.0, 10.0)
    assert abs(float((h - 1).float().mean()) - (10.0 * (2 / np.pi) ** 0.5 - 0.5)) < 0.1  # E floor|N(0, s^2)| ~ s sqrt(2/pi) - 1/2
    m = Classifier(backbone="mlp", feature_dim=16, plugins=[NestedDropout(eval_k=5)]).eval()
    feats = m.backbone(torch.rand(3, 1, 8, 8))
    assert (feats[:, 5:] == 0).all() and (feats[:, :5] != 0).any()
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    scores = m.plugin("nested_dropout").select_truncation(m, [dm.splits["val"]], [1, 4, 16], metric="acc")
    assert int(m.nested_dropout_eval_k) == max(scores, key=scores.get)


def test_ordered_dropout_recovers_svd_of_linear_map():
    L.seed_everything(0)
    u, _ = torch.linalg.qr(torch.randn(5, 5))
    v, _ = torch.linalg.qr(torch.randn(6, 6))
    a = u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5])) @ v[:, :5].T
    x = torch.rand(4000, 6) * 2 - 1  # uniform data (Maestro Thm. 1)
    L.seed_everything(1)
    m = LinearRegressor(6, 5, plugins=[OrderedDropout(layers=["map"], init="random")])
    fit_full_batch(m, {"x": x, "y": x @ a.T}, 1200, 1e-2)
    lr = m.map
    au = prefix_angles(lr.u.detach().numpy(), u.numpy())
    av = prefix_angles(lr.v.detach().numpy().T, v[:, :5].numpy())
    assert max(au) < 3.0 and max(av) < 3.0, (au, av)
    # importance ordering: the norms of the rank-one terms decrease like the singular values
    norms = (lr.u.norm(dim=0) * lr.v.norm(dim=1)).detach()
    assert torch.all(norms[:-1] > norms[1:])


def test_ordered_dropout_svd_init_shrinking_and_group_lasso():
    torch.manual_seed(0)
    m = Classifier(backbone="conv", channels=[8, 16], feature_dim=16,
                   plugins=[OrderedDropout(layers=["head", "backbone.conv.2"], group_lasso=1e-3, shrink_threshold=0.5)])
    m.eval()
    ref = Classifier(backbone="conv", channels=[8, 16], feature_dim=16)
    torch.manual_seed(0)
    ref = Classifier(backbone="conv", channels=[8, 16], feature_dim=16).eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(m(x), ref(x), atol=1e-5)  # SVD init keeps the function (conv and linear)
    _, terms = m.train().compute_loss({"x": x, "y": torch.tensor([0, 1, 2, 3])}, "train")
    assert float(terms["group_lasso"].detach()) > 0
    head = m.plugin("ordered_dropout").decomposed["head"]
    with torch.no_grad():
        head.u[:, 6:] *= 1e-4
        head.v[6:] *= 1e-4
    assert m.plugin("ordered_dropout").shrink()["head"] == 6


def test_multisample_k1_equals_dropout_exactly():
    batch = {"x": torch.rand(16, 1, 8, 8), "y": torch.randint(0, 10, (16,))}
    L.seed_everything(0)
    plain = Classifier(backbone="mlp", dropout=0.5).train()
    L.seed_everything(0)
    ms = Classifier(backbone="mlp", dropout=0.0, plugins=[MultiSampleDropout(k=1, p=0.5)]).train()
    torch.manual_seed(3)
    la, _ = plain.compute_loss(batch, "train")
    torch.manual_seed(3)
    lb, _ = ms.compute_loss(batch, "train")
    assert la.item() == lb.item()
    la.backward()
    lb.backward()
    assert torch.equal(plain.head.weight.grad, ms.head.head.weight.grad)
    assert torch.equal(plain(batch["x"]) if not plain.eval() else plain(batch["x"]), ms.eval()(batch["x"]))


def test_multisample_loss_is_mean_of_per_sample_losses_and_inference_single_pass():
    L.seed_everything(0)
    m = Classifier(backbone="mlp", plugins=[MultiSampleDropout(k=6, p=0.5)]).train()
    batch = {"x": torch.rand(32, 1, 8, 8), "y": torch.randint(0, 10, (32,))}
    torch.manual_seed(5)
    _, terms = m.compute_loss(batch, "train")
    torch.manual_seed(5)
    logits = m.head(m.backbone(batch["x"]))
    assert logits.shape == (6, 32, 10)
    per_sample = torch.stack([F.cross_entropy(logits[i], batch["y"]) for i in range(6)])
    assert torch.allclose(terms["ce"], per_sample.mean(), atol=1e-6)
    assert abs(float(per_sample.mean() - F.cross_entropy(logits.mean(0), batch["y"]))) > 1e-3  # not mean of logits
    assert float(per_sample.std()) > 0  # different masks per sample
    m.eval()
    out = m(batch["x"])
    assert out.shape == (32, 10) and torch.equal(out, m(batch["x"]))


def _dropout_samples(m: Classifier, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features h [B, F], the K dropped copies [K, B, F] the shared head receives) in one training pass."""
    seen = {}
    hooks = [m.backbone.register_forward_hook(lambda mod, args, out: seen.__setitem__("h", out.detach())),
             m.head.head.register_forward_pre_hook(lambda mod, args: seen.__setitem__("hk", args[0].detach()))]
    try:
        m.train().compute_loss({"x": x, "y": torch.zeros(len(x), dtype=torch.long)}, "train")
    finally:
        for hk in hooks:
            hk.remove()
    return seen["h"], seen["hk"]


def check_dropout_active(m: Classifier, x: torch.Tensor, k: int, p: float) -> list[float]:
    """Inoue (2019) Sec. 2: each of the K samples is an independent inverted-dropout draw of h, so every
    copy keeps h / (1 - p) or 0, each zeroes a fraction ~p of the units, and no two copies share a mask.
    Returns the per-sample zeroed fractions."""
    h, hk = _dropout_samples(m, x)
    assert hk.shape == (k, *h.shape), hk.shape
    live = h != 0
    n = int(live.sum())
    fracs = []
    for i in range(k):
        kept = hk[i] != 0
        assert torch.allclose(hk[i][kept], (h / (1 - p))[kept], rtol=1e-5), f"sample {i}: kept units not scaled by 1/(1-p)"
        frac = float((~kept & live).sum()) / n
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(frac - p) < 5 * sd, f"sample {i}: zeroed fraction {frac:.4f}, expected p={p} +- {5 * sd:.4f}"
        fracs.append(frac)
    for i in range(k):
        for j in range(i + 1, k):
            assert not torch.equal(hk[i] != 0, hk[j] != 0), f"samples {i} and {j} share a dropout mask"
    return fracs


@pytest.mark.parametrize("k,p", [(8, 0.5), (4, 0.2), (3, 0.7)])
def test_multisample_dropout_active_in_every_sample(k, p):
    L.seed_everything(0)
    m = Classifier(backbone="mlp", hidden_dims=[128], feature_dim=128, plugins=[MultiSampleDropout(k=k, p=p)])
    fracs = check_dropout_active(m, torch.rand(256, 1, 8, 8), k, p)
    print(f"K={k} p={p} zeroed fractions", np.round(fracs, 3))


def _epochs_to(curve: list[float], target: float) -> int:
    return next((i + 1 for i, v in enumerate(curve) if v <= target), len(curve) + 1)


def test_multisample_dropout_converges_in_fewer_epochs_on_digits():
    """Inoue (2019): same budget, validation NLL reaches a target in fewer epochs (mean of 3 seeds)."""
    dm = DigitsDataModule(batch_size=256)
    dm.setup()
    tr, va = dm.splits["train"], dm.splits["val"]

    def run(multi: bool, seed: int, epochs: int = 9) -> tuple[list[float], Classifier]:
        L.seed_everything(seed)
        m = Classifier(backbone="mlp", hidden_dims=[128], feature_dim=128, dropout=0.0 if multi else 0.7,
                       plugins=[MultiSampleDropout(k=8, p=0.7)] if multi else None)
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        g, curve = torch.Generator().manual_seed(seed), []
        for _ in range(epochs):
            m.train()
            for idx in torch.randperm(len(tr["x"]), generator=g).split(256):
                opt.zero_grad()
                m.compute_loss({k: v[idx] for k, v in tr.items()}, "train")[0].backward()
                opt.step()
            with torch.no_grad():
                curve.append(float(m.eval().compute_loss(va, "val")[1]["nll"]))
        return curve, m

    plain = np.mean([run(False, s)[0] for s in range(3)], axis=0).tolist()
    runs = [run(True, s) for s in range(3)]
    multi = np.mean([c for c, _ in runs], axis=0).tolist()
    for _, trained in runs:  # the gain comes with dropout on in each of the K samples of the trained model
        check_dropout_active(trained, tr["x"][:256], 8, 0.7)
    print("val NLL per epoch, dropout:", np.round(plain, 3), "multi-sample K=8:", np.round(multi, 3))
    assert _epochs_to(multi, 0.3) < _epochs_to(plain, 0.3), (plain, multi)
    assert np.mean(multi) < np.mean(plain)


def test_dream_dropout_frozen_within_rollout_different_across():
    L.seed_everything(0)
    m = Classifier(backbone="mlp", dropout=0.3, plugins=["dream_dropout"]).eval()
    plug = m.plugin("dream_dropout")
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(m(x), m(x))  # awake, eval: deterministic, no dropout
    with plug.dream():
        a1, a2 = m(x), m(x)  # same dream: identical on every step of the rollout
        a_step = m(x[:, :, :, :])
    with plug.dream():
        b1 = m(x)
    assert torch.equal(a1, a2) and torch.equal(a1, a_step)
    assert not torch.allclose(a1, b1)
    # different rows (episodes) of one batch dream differently
    with plug.dream():
        same = m(x[:1].expand(4, -1, -1, -1))
    assert not torch.allclose(same[0], same[1])
    mean, std = plug.mc_predict(lambda: m(x), n=16)
    assert mean.shape == (4, 10) and float(std.mean()) > 0


def test_dream_dropout_per_batch_masks_in_training():
    L.seed_everything(0)
    m = Classifier(backbone="mlp", dropout=0.3, plugins=["dream_dropout"]).train()
    plug = m.plugin("dream_dropout")
    x = torch.rand(4, 1, 8, 8)
    plug.on_train_batch_start(None, m, None, 0)
    a, b = m(x), m(x)
    plug.on_train_batch_end(None, m, None, None, 0)
    plug.on_train_batch_start(None, m, None, 1)
    c = m(x)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_ordered_dropout_shrinking_reduces_rank_and_keeps_fit():
    """Maestro: on a rank-2 linear map, group lasso + shrinking finds rank 2 without losing the fit."""
    L.seed_everything(0)
    u, _ = torch.linalg.qr(torch.randn(5, 5))
    v, _ = torch.linalg.qr(torch.randn(6, 6))
    a = u[:, :2] @ torch.diag(torch.tensor([3.0, 2.0])) @ v[:, :2].T
    x = torch.rand(2000, 6) * 2 - 1
    batch = {"x": x, "y": x @ a.T}
    m = LinearRegressor(6, 5, plugins=[OrderedDropout(layers=["map"], init="random", group_lasso=1e-2,
                                                      shrink_threshold=0.05)])
    fit_full_batch(m, batch, 800, 1e-2)
    ranks = m.plugin("ordered_dropout").shrink()
    m.eval()
    with torch.no_grad():
        rel = float((m.map(x) - batch["y"]).pow(2).sum() / batch["y"].pow(2).sum())
    assert ranks == {"map": 2}, ranks
    assert rel < 0.02, rel
