"""Registration geometry (P14): weighted Kabsch, errors, compatibility and RANSAC against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vi.families.vision.registration import (compatibility, iterations_for, ransac,
                                                       ransac_success_probability, rotation_error_deg,
                                                       translation_error, weighted_kabsch)


def rodrigues(axis: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotation by ``angle`` about the unit ``axis`` (Rodrigues' formula, written independently of the package)."""
    k = axis / axis.norm()
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_kabsch_recovers_the_exact_motion_and_ignores_zero_weight_outliers(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    r = rodrigues(torch.randn(3, generator=g, dtype=torch.float64), float(torch.rand(1, generator=g)) * 3.0)
    t = torch.randn(3, generator=g, dtype=torch.float64)
    p = torch.randn(40, 3, generator=g, dtype=torch.float64)
    q = p @ r.T + t
    q_bad = q.clone()
    q_bad[20:] = torch.randn(20, 3, generator=g, dtype=torch.float64) * 5  # half the pairs are garbage
    w = torch.cat([torch.ones(20), torch.zeros(20)]).double()
    for qq, ww in ((q, None), (q_bad, w)):
        r_est, t_est = weighted_kabsch(p, qq, ww)
        assert torch.allclose(r_est, r, atol=1e-10) and torch.allclose(t_est, t, atol=1e-10)
        assert torch.linalg.det(r_est).item() == pytest.approx(1.0, abs=1e-12)
    r_all, _ = weighted_kabsch(p, q_bad)  # uniform weights: the garbage pulls it away
    assert rotation_error_deg(r_all, r) > 1.0


def test_kabsch_returns_a_rotation_not_a_reflection() -> None:
    """Points mirrored through a plane: the best orthogonal map is a reflection; Kabsch must keep det = +1."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(30, 3, generator=g, dtype=torch.float64)
    q = p * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    r, _ = weighted_kabsch(p, q)
    assert torch.linalg.det(r).item() == pytest.approx(1.0, abs=1e-10)


def test_errors_match_their_closed_forms() -> None:
    r = rodrigues(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), math.radians(30))
    assert rotation_error_deg(r, torch.eye(3, dtype=torch.float64)).item() == pytest.approx(30.0, abs=1e-6)
    assert translation_error(torch.tensor([3.0, 4.0, 0.0]), torch.zeros(3)).item() == pytest.approx(5.0)


def test_compatibility_is_one_for_rigid_pairs_and_follows_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    beta = compatibility(p, q, sigma=0.7)
    for i in range(6):
        for j in range(6):
            d = abs(float((p[i] - p[j]).norm()) - float((q[i] - q[j]).norm()))
            assert beta[i, j].item() == pytest.approx(max(0.0, 1 - d * d / 0.49), abs=1e-12)
    r = rodrigues(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 1.0)
    assert torch.allclose(compatibility(p, p @ r.T + 2.0, sigma=0.1), torch.ones(6, 6, dtype=torch.float64))


def test_ransac_iteration_formulas() -> None:
    assert ransac_success_probability(0.1, 1000) == pytest.approx(1 - 0.999 ** 1000)
    assert iterations_for(0.5) == math.ceil(math.log(0.01) / math.log(1 - 0.125))


def test_ransac_solves_an_easy_problem_and_rejects_bad_input() -> None:
    from lightning_vi.data.correspondences import make_correspondences

    b = make_correspondences(4, 100, 0.5, torch.Generator().manual_seed(0))
    r, t, mask = ransac(b["p"], b["q"], 200, 0.05, torch.Generator().manual_seed(1))
    assert rotation_error_deg(r, b["R"]).max() < 2.0 and translation_error(t, b["t"]).max() < 0.05
    assert (mask == b["y"].bool()).float().mean() > 0.97
    with pytest.raises(ValueError, match="mismatched shapes"):
        ransac(b["p"], b["q"][:, :50], 10, 0.05, torch.Generator())
    with pytest.raises(ValueError, match="at least 3 correspondences"):
        ransac(b["p"][:, :2], b["q"][:, :2], 10, 0.05, torch.Generator())
