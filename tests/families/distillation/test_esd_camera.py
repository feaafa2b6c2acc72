"""ESD in its text-to-3D setting (issue 16, P31): one smooth object ``g_theta(c)`` rendered at continuous
cameras, distilled from the exact score of the 8-Gaussian ring (radius 2, std 0.2), 1500 steps, ``t_max``
0.3, measured on a 512-camera grid. Seeds 0, 1, 2; same settings for every run, no per-seed tuning.

What holds and is asserted: SDS sends every view to the same mode (the Janus problem: 1 mode covered,
>= 85% of the views on it); ESD (``lambda = 0.5``) covers at least as many modes as view-conditioned VSD
(``lambda = 1``), with a higher entropy of its renders' mode occupancy, at higher quality (on-mode share
>= 0.8 and >= VSD's + 0.05). What does not hold (strict xfail): a *matched* quality in the brief's sense
(VSD's on-mode share >= 0.8: view-conditioned VSD scatters, 0.65-0.77, rather than collapsing per view),
and a higher k-NN entropy on every seed (seed 1: 0.41 vs 0.60, the scattered renders' entropy).
Against plain view-conditioned VSD (``p_uncond = 0``, no null branch; measured in docs/distillation.md,
not run here to keep the test short) ESD is not ahead: that fake score generalises across cameras like the
marginal score and covers 8, 8, 6 modes.

All measures are recomputed here with numpy from the renders and the ring's known means (modes covered
= modes holding >= 5% of the views within 4 data stds; Kozachenko-Leonenko k-NN entropy written here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import digamma, gammaln

from lightning_vi.families.distillation.camera import CameraScoreDistillation, fit_camera

SEEDS = (0, 1, 2)
RING = {"n_modes": 8, "radius": 2.0, "std": 0.2}
STEPS = 1500
SETTING = {"t_max": 0.3, "eval_views": 512}
RUNS = {"sds": {"method": "sds"}, "vsd": {"method": "esd", "esd_lambda": 1.0},
        "esd": {"method": "esd", "esd_lambda": 0.5}}

_CACHE: dict[tuple[str, int], dict[str, float]] = {}


def ring_means() -> np.ndarray:
    a = 2 * np.pi * np.arange(8) / 8
    return 2.0 * np.stack([np.cos(a), np.sin(a)], 1)


def knn_entropy_np(x: np.ndarray, k: int = 3) -> float:
    """Kozachenko-Leonenko: psi(N) - psi(k) + log V_d + d mean log r_k (nats)."""
    n, d = x.shape
    dist = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    r = np.sort(dist, 1)[:, k - 1]
    log_vd = (d / 2) * math.log(math.pi) - gammaln(d / 2 + 1)
    return float(digamma(n) - digamma(k) + log_vd + d * np.log(r).mean())


def measure(x: np.ndarray) -> dict[str, float]:
    d = np.linalg.norm(x[:, None] - ring_means()[None], axis=-1)
    k, on = d.argmin(1), d.min(1) < 4 * RING["std"]
    frac = np.bincount(k[on], minlength=8) / len(x)
    p = frac[frac > 0] / frac.sum() if frac.sum() > 0 else np.ones(1)
    return {"covered": int((frac >= 0.05).sum()), "on": float(on.mean()),
            "mode_entropy": float(-(p * np.log(p)).sum()), "knn_entropy": knn_entropy_np(x)}


def result(name: str, seed: int) -> dict[str, float]:
    """Train (once per module run) and measure one object on the dense camera grid."""
    if (name, seed) not in _CACHE:
        torch.manual_seed(seed)
        model = CameraScoreDistillation(teacher="ring", teacher_args=RING, seed=seed, **SETTING, **RUNS[name])
        fit_camera(model, STEPS)
        x = model.sample().numpy()
        _CACHE[name, seed] = measure(x)
        print(name, seed, {a: round(b, 3) for a, b in _CACHE[name, seed].items()})
    return _CACHE[name, seed]


@pytest.mark.parametrize("seed", SEEDS)
def test_sds_sends_every_view_to_one_mode(seed):
    r = result("sds", seed)
    assert r["covered"] == 1 and r["on"] >= 0.85, r


@pytest.mark.parametrize("seed", SEEDS)
def test_esd_covers_more_evenly_than_view_conditioned_vsd_at_no_lower_quality(seed):
    lo, hi = result("esd", seed), result("vsd", seed)
    assert lo["on"] >= 0.8 and lo["on"] >= hi["on"] + 0.05, (lo, hi)
    assert lo["covered"] >= max(hi["covered"], 6), (lo, hi)
    assert lo["mode_entropy"] >= hi["mode_entropy"] + 0.04, (lo, hi)


@pytest.mark.xfail(strict=True, reason="not reproduced (docs/distillation.md): view-conditioned VSD scatters "
                   "(on-mode 0.65, 0.67, 0.77 on seeds 0-2) instead of collapsing per view, so quality is not "
                   "matched; k-NN entropy ESD 1.94, 0.41, 1.40 vs VSD 1.04, 0.60, 0.46; modes 8, 8, 6 vs 5, 6, 6")
def test_esd_beats_vsd_in_knn_entropy_and_coverage_at_matched_quality():
    for seed in SEEDS:
        lo, hi = result("esd", seed), result("vsd", seed)
        assert lo["on"] >= 0.8 and hi["on"] >= 0.8, (seed, lo, hi)
        assert lo["knn_entropy"] > hi["knn_entropy"] and lo["covered"] > hi["covered"], (seed, lo, hi)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"method='vsd' is not allowed; choose one of \['sds', 'esd'\]"):
        CameraScoreDistillation(method="vsd")
    with pytest.raises(ValueError, match="p_uncond=1.0 is out of range for method='esd'"):
        CameraScoreDistillation(method="esd", p_uncond=1.0)
    with pytest.raises(ValueError, match="p_uncond=0.0 is out of range for method='esd' with esd_lambda=0.5"):
        CameraScoreDistillation(method="esd", esd_lambda=0.5, p_uncond=0.0)
    CameraScoreDistillation(method="esd", esd_lambda=1.0, p_uncond=0.0)  # plain view-conditioned VSD
    with pytest.raises(ValueError, match=r"esd_lambda=-0.5 is out of range"):
        CameraScoreDistillation(esd_lambda=-0.5)
