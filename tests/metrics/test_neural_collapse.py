"""NC1-NC4 (lightning_vi.metrics.neural_collapse) against closed forms and a numpy reference.

* Noisy simplex ETF: class means a unit-norm ETF (C=4, d=8), features ``mu_c + b + sigma eps``. With
  ``Sigma_W = sigma^2 I`` and ``Sigma_B = 1/C sum_c mu_c mu_c^T`` (eigenvalue 1/(C-1) on the (C-1)-dim span),
  ``NC1 = tr(Sigma_W Sigma_B^+)/C = sigma^2 (C-1)^2 / C`` (0.0225 for sigma = 0.1). The offset ``b`` makes
  uncentred means wrong.
* Exact collapse (features = ETF means + offset, head = centred means): NC1 = NC2 = NC3 = NC4 = 0.
* Random features in unequal batches: every metric equals a numpy computation on the whole set at once.
* Imbalanced deep linear network (Dang et al. 2023, bias-free MSE, unconstrained features): see the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_vi.metrics.neural_collapse import NC1, NC2, NC3, NC4, ClassMeans, simplex_etf_gram

C, D = 4, 8


def unit_etf(c: int = C, d: int = D) -> torch.Tensor:
    """Rows: a unit-norm simplex ETF in R^d (Gram (C/(C-1))(I - 11^T/C)), built from e_c - 1/C."""
    v = torch.eye(c, dtype=torch.float64) - 1.0 / c
    v = v / v.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(d, c, generator=torch.Generator().manual_seed(123), dtype=torch.float64))
    return v @ q.T  # rotate the C-dim vectors into d dims (orthonormal columns keep the Gram)


def feed(metric, *tensors, sizes=(3, 50, 7, 200, 1)):
    """Update in unequal batches (cycling through ``sizes``), including batches that miss classes."""
    n, start, i = tensors[0].shape[0], 0, 0
    while start < n:
        stop = min(n, start + sizes[i % len(sizes)])
        metric.update(*(t[start:stop] if t.ndim and t.shape[0] == n else t for t in tensors))
        start, i = stop, i + 1
    return metric.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nc1_of_noisy_simplex_etf_is_closed_form(seed):
    sigma, n_per = 0.1, 5000
    g = torch.Generator().manual_seed(seed)
    mu = unit_etf()
    assert torch.allclose(mu @ mu.T, simplex_etf_gram(C), atol=1e-12)
    y = torch.arange(C).repeat_interleave(n_per)[torch.randperm(C * n_per, generator=g)]
    offset = 3.0 * torch.randn(D, generator=g, dtype=torch.float64)
    h = mu[y] + offset + sigma * torch.randn(C * n_per, D, generator=g, dtype=torch.float64)
    expected = sigma ** 2 * (C - 1) ** 2 / C
    assert expected == pytest.approx(0.0225)
    got = float(feed(NC1(C, D), h, y, sizes=(777, 1234, 5)))
    # relative sd of the (C-1)-dim within-class trace ~ sqrt(2 / ((C-1) N)); 6 sd, plus the means' noise
    tol = 6 * math.sqrt(2 / ((C - 1) * C * n_per))
    assert got == pytest.approx(expected, rel=tol), (got, expected, tol)


def test_exact_collapse_gives_zero():
    mu = 2.5 * unit_etf()
    offset = torch.linspace(-1.0, 2.0, D, dtype=torch.float64)
    y = torch.arange(C).repeat(30)
    h = mu[y] + offset
    weight = 3.0 * mu  # head = centred means up to scale
    logits = (h - offset) @ weight.T
    assert float(feed(NC1(C, D), h, y)) == pytest.approx(0.0, abs=1e-10)
    nc2 = feed(NC2(C, D), h, y)
    for k, v in nc2.items():
        assert float(v) == pytest.approx(0.0, abs=1e-7), (k, float(v))
    assert float(feed(NC3(C, D), h, y, weight)) == pytest.approx(0.0, abs=1e-12)
    means = feed(ClassMeans(C, D), h, y)
    assert torch.allclose(means, mu + offset)
    assert float(feed(NC4(), h, logits, means)) == 0.0


def reference(h: np.ndarray, y: np.ndarray, w: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """numpy, whole set at once: per-class covariances, global mean, pinv, cosines, NCC by brute force."""
    c = int(y.max()) + 1
    mu = np.stack([h[y == k].mean(0) for k in range(c)])
    mg = h.mean(0)
    sw = sum(np.cov(h[y == k].T, bias=True) * (y == k).sum() for k in range(c)) / len(y)
    m = mu - mg
    sb = m.T @ m / c
    nc1 = np.trace(sw @ np.linalg.pinv(sb)) / c
    norms = np.linalg.norm(m, axis=1)
    cos = [m[i] @ m[j] / norms[i] / norms[j] for i in range(c) for j in range(c) if i != j]
    g = m @ m.T
    e = np.eye(c) - 1.0 / c
    ncc = np.array([np.argmin([np.sum((x - mu[k]) ** 2) for k in range(c)]) for x in h])
    return {"nc1": nc1, "equinorm": norms.std() / norms.mean(), "angle_std": np.std(cos),
            "equiangle": np.mean(np.abs(np.array(cos) + 1 / (c - 1))),
            "etf": np.linalg.norm(g / np.linalg.norm(g) - e / np.linalg.norm(e)),
            "nc3": np.sum((w / np.linalg.norm(w) - m / np.linalg.norm(m)) ** 2),
            "nc4": np.mean(ncc != logits.argmax(1))}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_over_unequal_batches_equal_numpy_on_the_whole_set(seed):
    g = torch.Generator().manual_seed(seed)
    n = 301
    y = torch.randint(0, C, (n,), generator=g)
    y[:C] = torch.arange(C)
    h = torch.randn(C, D, generator=g, dtype=torch.float64)[y] + 0.8 * torch.randn(n, D, generator=g, dtype=torch.float64) + 1.5
    w = torch.randn(C, D, generator=g, dtype=torch.float64)
    logits = h @ w.T
    ref = reference(h.numpy(), y.numpy(), w.numpy(), logits.numpy())
    nc2 = feed(NC2(C, D), h.float(), y)  # float32 input is accumulated in float64
    got = {"nc1": feed(NC1(C, D), h, y), **nc2, "nc3": feed(NC3(C, D), h, y, w),
           "nc4": feed(NC4(), h, logits, feed(ClassMeans(C, D), h, y))}
    for k, v in ref.items():
        assert float(got[k]) == pytest.approx(v, rel=1e-5, abs=1e-9), (k, float(got[k]), v)
    assert 0.05 < ref["nc4"] < 0.95 and ref["nc1"] > 0.1  # not a degenerate case


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"num_classes=1 is out of range"):
        NC1(1, D)
    m = NC1(C, D)
    m.update(torch.randn(5, D), torch.tensor([0, 1, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"classes \[3\] have no examples"):
        m.compute()
    with pytest.raises(ValueError, match=r"labels span \[0, 4\]; allowed: 0..3"):
        m.update(torch.randn(2, D), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"features have d=3"):
        m.update(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"weight has shape \(3, 8\)"):
        NC3(C, D).update(torch.randn(2, D), torch.tensor([0, 1]), torch.randn(3, D))


# --- imbalanced classes: bias-free deep linear network with MSE (Dang et al. 2023) ----------------------------
def reduced_solution(n: list[int], lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed form of the per-class problem the global minimiser reduces to (orthogonal class directions).

    Loss ``1/(2N) ||W3 W2 W1 H - Y||^2 + lam/2 (||W1||^2 + ||W2||^2 + ||W3||^2 + ||H||^2 / N)``. Along class k
    the head row norm a, the two middle singular values s1, s2 and the feature length b (each of the n_k
    features of the class) balance their penalties: ``lam a^2 = lam s_l^2 = lam n_k/N b^2 = t``, and the
    output ``p = a s2 s1 b`` minimises ``n_k/(2N) (p-1)^2 + 2 lam (n_k/N)^(1/4) sqrt(p)``. Then
    ``a = p^(1/4) (n_k/N)^(1/8)`` and the penultimate class mean ``s2 s1 b = p / a``: with small weight decay
    the head rows are *longer* and the penultimate class means *shorter* for larger classes.
    """
    big_n = sum(n)
    p_grid = np.linspace(0.0, 1.0, 200001)
    heads, means = [], []
    for nk in n:
        r = nk / big_n
        p = p_grid[np.argmin(r / 2 * (p_grid - 1) ** 2 + 2 * lam * r ** 0.25 * np.sqrt(p_grid))]
        a = p ** 0.25 * r ** 0.125
        heads.append(a)
        means.append(p / a)
    return np.array(heads), np.array(means)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_imbalanced_deep_linear_network_lengths_follow_class_sizes(seed):
    torch.manual_seed(seed)
    n, d, lam = [60, 40, 20, 10], 16, 1e-3
    c = len(n)
    g = torch.Generator().manual_seed(seed)
    y = torch.repeat_interleave(torch.arange(c), torch.tensor(n))
    big_n = len(y)
    target = torch.nn.functional.one_hot(y, c).double()
    h = (0.1 * torch.randn(big_n, d, generator=g, dtype=torch.float64)).requires_grad_()
    ws = [(0.5 * torch.randn(o, i, generator=g, dtype=torch.float64) / i ** 0.5).requires_grad_()
          for i, o in [(d, d), (d, d), (d, c)]]  # three bias-free linear layers on unconstrained features
    opt = torch.optim.Adam([h, *ws], lr=1e-2)
    for _ in range(2000):
        opt.zero_grad()
        out = h @ ws[0].T @ ws[1].T @ ws[2].T
        loss = 0.5 * (out - target).pow(2).sum() / big_n + lam / 2 * (sum(w.pow(2).sum() for w in ws) + h.pow(2).sum() / big_n)
        loss.backward()
        opt.step()
    with torch.no_grad():
        penultimate = h @ ws[0].T @ ws[1].T
        mu = feed(ClassMeans(c, d), penultimate, y)  # uncentred: the bias-free geometry is about the origin
        head = ws[2].norm(dim=1).numpy()
    lengths = mu.norm(dim=1).numpy()
    unit = mu / mu.norm(dim=1, keepdim=True)
    assert float((unit @ unit.T - torch.eye(c, dtype=unit.dtype)).abs().max()) < 0.02  # orthogonal frame
    pred_head, pred_mean = reduced_solution(n, lam)
    assert np.all(np.diff(pred_head) < 0) and np.all(np.diff(pred_mean) > 0)  # n decreasing along the classes
    assert np.all(np.diff(head) < 0), head  # larger class -> longer head row
    assert np.all(np.diff(lengths) > 0), lengths  # larger class -> shorter penultimate class mean
    np.testing.assert_allclose(head, pred_head, rtol=0.01)
    np.testing.assert_allclose(lengths, pred_mean, rtol=0.01)
