"""ID^2 origin identification (P46): a linear map between VAE latents of translations and origins.

One VAE and two SDEdit "image-to-image models" (DDPMs of width 64 and 96, trained from different seeds on
the faded-digits domain) a seed (seeds 0-2); ``W`` is fit on 1000 model-A pairs, retrieval is over the 797
held-out origins. mAP is recomputed here from its definition (one relevant origin: AP = 1 / rank).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_vi.families.vision.origin_id import (apply_map, cosine_scores, fit_linear_map, make_pairs,
                                                    mean_average_precision, sdedit)

SEEDS = (0, 1, 2)
NUM_TRAIN = 1000
RIDGE = 1e-4


@pytest.fixture(scope="module")
def pairs() -> dict[int, dict]:
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    return {s: make_pairs(s) for s in SEEDS}


def mrr(queries: np.ndarray, origins: np.ndarray) -> float:
    """Mean reciprocal rank of origin i for query i under cosine similarity, ties counted against it."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    o = origins / np.linalg.norm(origins, axis=1, keepdims=True)
    s = q @ o.T
    ranks = [1 + np.sum(np.delete(s[i], i) >= s[i, i]) for i in range(len(s))]
    return float(np.mean(1.0 / np.asarray(ranks)))


def ridge_closed_form(zt: np.ndarray, zo: np.ndarray, ridge: float) -> np.ndarray:
    """argmin_W mean ||zt W - zo||^2 + ridge ||W||^2 from the normal equations."""
    n, d = zt.shape
    return np.linalg.solve(zt.T @ zt + n * ridge * np.eye(d), zt.T @ zo)


def split(p: dict) -> tuple[np.ndarray, ...]:
    zo, za, zb = (p[k].double().numpy() for k in ("zo", "za", "zb"))
    return za[:NUM_TRAIN], zo[:NUM_TRAIN], za[NUM_TRAIN:], zb[NUM_TRAIN:], zo[NUM_TRAIN:]


def mapped_map(p: dict, method: str, which: str = "za", ridge: float = RIDGE, **kw) -> tuple[float, torch.Tensor]:
    w = fit_linear_map(p["za"][:NUM_TRAIN], p["zo"][:NUM_TRAIN], method, ridge, **kw)
    q = apply_map(p[which][NUM_TRAIN:], w)
    return mrr(q.double().numpy(), p["zo"][NUM_TRAIN:].double().numpy()), w


def test_mean_average_precision_matches_definition() -> None:
    """Several relevant items: AP = mean over relevant r of (#relevant ranked <= r) / rank(r)."""
    g = torch.Generator().manual_seed(0)
    scores, rel = torch.rand(7, 11, generator=g), torch.rand(7, 11, generator=g) < 0.3
    rel[:, 0] = True
    aps = []
    for s, r in zip(scores.numpy(), rel.numpy()):
        order = np.argsort(-s)
        hits, precs = 0, []
        for k, j in enumerate(order, 1):
            if r[j]:
                hits += 1
                precs.append(hits / k)
        aps.append(np.mean(precs))
    assert mean_average_precision(scores, rel) == pytest.approx(float(np.mean(aps)), abs=1e-10)
    assert mean_average_precision(torch.zeros(3, 4), torch.eye(3, 4, dtype=torch.bool)) == pytest.approx(0.25)


@pytest.mark.parametrize("seed", SEEDS)
def test_linear_map_beats_raw_embeddings(pairs, seed: int) -> None:
    """Measured (seeds 0/1/2): raw 0.51/0.26/0.38, closed-form W 0.92/0.70/0.90, GD W 0.92/0.67/0.89."""
    p = pairs[seed]
    _, _, qa, _, go = split(p)
    raw = mrr(qa, go)
    ls, _ = mapped_map(p, "lstsq")
    gd, _ = mapped_map(p, "gd", steps=3000)
    assert ls > raw + 0.3 and gd > raw + 0.3, (raw, ls, gd)
    assert mean_average_precision(cosine_scores(p["za"][NUM_TRAIN:], p["zo"][NUM_TRAIN:]),
                                  torch.eye(len(go), dtype=torch.bool)) == pytest.approx(raw, abs=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_map_trained_on_model_a_generalises_to_model_b(pairs, seed: int) -> None:
    """Measured A -> B (seeds 0/1/2): 0.92 -> 0.91, 0.70 -> 0.64, 0.90 -> 0.86 (raw B 0.43/0.24/0.35)."""
    p = pairs[seed]
    _, _, _, qb, go = split(p)
    on_a, _ = mapped_map(p, "lstsq")
    on_b, _ = mapped_map(p, "lstsq", which="zb")
    assert on_a - on_b < 0.1, (on_a, on_b)
    assert on_b > mrr(qb, go) + 0.25, (on_b, mrr(qb, go))


@pytest.mark.parametrize("seed", SEEDS)
def test_closed_form_and_gradient_descent_agree_with_normal_equations(pairs, seed: int) -> None:
    p = pairs[seed]
    ta, to, qa, _, _ = split(p)
    ridge = 1e-2  # bounds the condition number so that GD converges in the step budget
    ref = ridge_closed_form(ta, to, ridge)
    w_ls = fit_linear_map(p["za"][:NUM_TRAIN], p["zo"][:NUM_TRAIN], "lstsq", ridge).double().numpy()
    w_gd = fit_linear_map(p["za"][:NUM_TRAIN], p["zo"][:NUM_TRAIN], "gd", ridge, steps=20000).double().numpy()
    assert np.linalg.norm(w_ls - ref) / np.linalg.norm(ref) < 1e-4
    assert np.linalg.norm(w_gd - ref) / np.linalg.norm(ref) < 1e-3
    w0 = ridge_closed_form(ta, to, 0.0)
    w_ls0 = fit_linear_map(p["za"][:NUM_TRAIN], p["zo"][:NUM_TRAIN], "lstsq", 0.0).double().numpy()
    assert np.linalg.norm(w_ls0 - w0) / np.linalg.norm(w0) < 1e-4
    np.testing.assert_allclose(apply_map(p["za"][NUM_TRAIN:], torch.from_numpy(ref).float()).numpy(), qa @ ref,
                               rtol=1e-4, atol=1e-4)


def test_sdedit_strength_controls_distance_to_origin(pairs) -> None:
    p = pairs[0]
    x = p["x"][:200]
    g = torch.Generator().manual_seed(0)
    near = sdedit(p["models"]["a"], x, 0.1, 10, generator=g)
    far = sdedit(p["models"]["a"], x, 1.0, 10, generator=g)
    d_near, d_far = (near - x).pow(2).mean().item(), (far - x).pow(2).mean().item()
    assert d_near < 0.5 * d_far, (d_near, d_far)


def test_bad_inputs_have_clear_messages(pairs) -> None:
    z = torch.randn(10, 16)
    with pytest.raises(ValueError, match="10 translations but 9 origins"):
        fit_linear_map(z, torch.randn(9, 16))
    with pytest.raises(ValueError, match="dim 16 but origin latents dim 8"):
        fit_linear_map(z, torch.randn(10, 8))
    with pytest.raises(ValueError, match=r"must be \[N, d\]"):
        fit_linear_map(z[0], z[0])
    with pytest.raises(ValueError, match="method"):
        fit_linear_map(z, z, "svd")
    with pytest.raises(ValueError, match=r"W of shape \[8, 8\] cannot map latents of dim 16"):
        apply_map(z, torch.eye(8))
    with pytest.raises(ValueError, match="strength"):
        sdedit(pairs[0]["models"]["a"], pairs[0]["x"][:2], 1.5)
    with pytest.raises(ValueError, match=r"\[1, 4, 4\] do not match the model's input_shape \[1, 8, 8\]"):
        sdedit(pairs[0]["models"]["a"], torch.rand(2, 1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="same \\[Q, G\\] shape"):
        mean_average_precision(torch.rand(3, 4), torch.ones(3, 5, dtype=torch.bool))
