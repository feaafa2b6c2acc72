"""Synthetic correspondences (P14): exact outlier counts, rigid inliers, uniform rotations, bad input."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.data.correspondences import CorrespondenceDataModule, make_correspondences, random_rotation


def test_inliers_follow_the_motion_and_outliers_do_not() -> None:
    b = make_correspondences(50, 200, 0.7, torch.Generator().manual_seed(0), noise=0.01)
    assert torch.equal(b["y"].sum(-1), torch.full((50,), 60.0))  # exactly 30% inliers in every problem
    res = (b["p"] @ b["R"].transpose(-1, -2) + b["t"][:, None] - b["q"]).norm(dim=-1)
    inl, out = res[b["y"].bool()], res[~b["y"].bool()]
    assert inl.max() < 0.01 * 6 and out.min() > 1e-3 and out.median() > 0.3
    assert torch.equal(b["x"], torch.cat([b["p"], b["q"]], -1))


def test_rotations_are_proper_and_uniform() -> None:
    r = random_rotation(20000, torch.Generator().manual_seed(0), torch.float64)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(20000, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(r), torch.ones(20000, dtype=torch.float64), atol=1e-12)
    # Haar measure on SO(3): E[R] = 0 and the trace has mean 0 and variance 1
    tr = r.diagonal(dim1=-2, dim2=-1).sum(-1)
    assert r.mean(0).abs().max() < 0.03 and abs(tr.mean()) < 0.03 and abs(tr.var() - 1) < 0.05


def test_ranges_and_data_module() -> None:
    b = make_correspondences(200, 100, (0.5, 0.9), torch.Generator().manual_seed(1))
    assert 0.5 <= b["outlier_ratio"].min() and b["outlier_ratio"].max() <= 0.9 and b["outlier_ratio"].std() > 0.05
    dm = CorrespondenceDataModule(num_problems=20, num_points=64, batch_size=4)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["p"].shape == (4, 64, 3) and batch["R"].shape == (4, 3, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(outlier_ratio=1.0), "outlier_ratio"),
    (dict(outlier_ratio=0.99, num_points=100), "leaves 1 inliers"),
    (dict(num_points=2), "num_points"),
])
def test_bad_input_is_named(kwargs, match) -> None:
    args = dict(num_points=100, outlier_ratio=0.5) | kwargs
    with pytest.raises(ValueError, match=match):
        make_correspondences(2, args["num_points"], args["outlier_ratio"], torch.Generator())


def test_structured_outliers_follow_a_second_motion_and_features_are_noisy_but_informative() -> None:
    from lightning_vi.families.vision.registration import weighted_kabsch
    b = make_correspondences(20, 128, 0.9, torch.Generator().manual_seed(3), structured=0.15, feature_dim=8)
    s, y = b["structured"].bool(), b["y"].bool()
    assert torch.equal(s.sum(-1), torch.full((20,), 17)) and not (s & y).any()  # round(0.15 * 115) of the outliers
    r2, t2 = weighted_kabsch(b["p"], b["q"], s.float())  # one rigid motion explains all structured outliers
    res2 = (b["p"] @ r2.transpose(-1, -2) + t2[:, None] - b["q"]).norm(dim=-1)
    assert res2[s].max() < 0.1 and torch.linalg.matrix_norm(r2 - b["R"]).min() > 0.1
    res = (b["p"] @ b["R"].transpose(-1, -2) + b["t"][:, None] - b["q"]).norm(dim=-1)
    assert res[y].max() < 0.06
    a, d = b["f"].chunk(2, -1)
    cos = (a * d).sum(-1)  # informative on average, overlapping pair by pair
    assert b["f"].shape == (20, 128, 16) and cos[y].mean() > cos[~y].mean() + 0.1 and cos[~y].max() > cos[y].median()
    plain = make_correspondences(20, 128, 0.9, torch.Generator().manual_seed(3))
    assert torch.equal(plain["p"], b["p"]) and torch.equal(plain["q"][~s], b["q"][~s])  # same draws otherwise
    with pytest.raises(ValueError, match="structured"):
        make_correspondences(2, 100, 0.5, torch.Generator(), structured=1.5)
