"""Putative 3D correspondences with known rigid motion and outliers (the P14 registration setting).

Each example is one registration problem: ``N`` source points ``p`` uniform in the unit cube, the target cloud
``R p + t``, and ``N`` putative matches. A fraction ``1 - outlier_ratio`` are inliers ``q_i = R p_i + t + noise``;
the rest pair ``p_i`` with the (noisy) image of another, random source point, as wrong feature matches do.
The rotation is uniform on SO(3) and ``t`` uniform in ``[-translation, translation]^3``. Ground truth is kept:
``y`` (1 = inlier), ``R``, ``t``.

Optionally (closer to real feature matches, as in Jiang et al. 2023 whose correspondences come from descriptor
matching):

- ``structured``: a fraction of the outliers follows a *second* rigid motion (a moving object / repetitive
  structure), so they are mutually length-consistent and geometry alone cannot tell them from the inliers;
- ``feature_dim > 0``: every correspondence carries the two unit descriptors ``f = [a_i, b_i]`` ``[B, N, 2F]`` of
  its source and target point, ``b = normalize(a + s * eps)`` with ``s = feature_noise[0]`` for inliers and
  ``feature_noise[1]`` for outliers (wrong matches were matched because their descriptors look alike, so the two
  distributions overlap: informative but noisy).

With the defaults (no structure, no features) the random draws are those of the plain generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule


def random_rotation(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Tensor:
    """``n`` rotations uniform on SO(3) (unit quaternions from a normalised Gaussian), ``[n, 3, 3]``."""
    a, b, c, d = torch.nn.functional.normalize(torch.randn(n, 4, generator=generator, dtype=dtype), dim=-1).unbind(-1)
    return torch.stack([
        a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c),
        2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b),
        2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d], -1).reshape(n, 3, 3)


def make_correspondences(num_problems: int, num_points: int, outlier_ratio: float | tuple[float, float],
                         generator: torch.Generator, noise: float = 0.01, translation: float = 0.5,
                         structured: float = 0.0, feature_dim: int = 0, feature_noise: tuple[float, float] = (0.6, 1.0)) -> dict[str, Tensor]:
    """``num_problems`` problems; ``outlier_ratio`` is a number or a ``(low, high)`` range drawn per problem.

    Returns ``x`` ``[B, N, 6]`` (``p`` and ``q`` side by side), ``p``, ``q`` ``[B, N, 3]``, ``y`` ``[B, N]``,
    ``R`` ``[B, 3, 3]``, ``t`` ``[B, 3]``, ``outlier_ratio`` ``[B]``; with ``structured > 0`` also ``structured``
    ``[B, N]`` (1 = outlier of the second motion), with ``feature_dim > 0`` also ``f`` ``[B, N, 2 feature_dim]``.
    """
    low, high = (outlier_ratio, outlier_ratio) if isinstance(outlier_ratio, (int, float)) else outlier_ratio
    check_range("outlier_ratio", low, 0.0, 1.0, high_open=True)
    check_range("outlier_ratio", high, low, 1.0, high_open=True)
    check_range("num_points", num_points, 3)
    check_range("structured", structured, 0.0, 1.0)
    check_range("feature_dim", feature_dim, 0)
    if len(feature_noise) != 2 or min(feature_noise) < 0:
        raise ValueError(f"feature_noise={feature_noise!r} must be two non-negative stds (inliers, outliers)")
    n_in_min = int(round(num_points * (1 - high)))
    if n_in_min < 3:
        raise ValueError(f"outlier_ratio={high} with num_points={num_points} leaves {n_in_min} inliers; "
                         "a rigid transform needs at least 3 (lower the ratio or add points)")
    g, b, n = generator, num_problems, num_points
    rot = random_rotation(b, g)
    t = (2 * torch.rand(b, 3, generator=g) - 1) * translation
    p = torch.rand(b, n, 3, generator=g) - 0.5
    ratio = low + (high - low) * torch.rand(b, generator=g)
    n_out = (ratio * n).round().long()
    y = (torch.rand(b, n, generator=g).argsort(-1) >= n_out[:, None]).float()  # exactly n_out outliers, random places
    partner = (torch.arange(n) + torch.randint(1, n, (b, n), generator=g)) % n  # another source point, never itself
    src = torch.where(y.bool()[..., None], p, torch.gather(p, 1, partner[..., None].expand(b, n, 3)))
    q = src @ rot.transpose(-1, -2) + t[:, None] + noise * torch.randn(b, n, 3, generator=g)
    out = {"x": torch.cat([p, q], -1), "p": p, "q": q, "y": y, "R": rot, "t": t, "outlier_ratio": n_out.float() / n}
    if structured > 0:  # the first round(structured * n_out) outliers (in a random order) follow (R2, t2)
        rot2, t2 = random_rotation(b, g), (2 * torch.rand(b, 3, generator=g) - 1) * translation
        order = torch.where(y.bool(), torch.full_like(y, 2.0), torch.rand(b, n, generator=g)).argsort(-1).argsort(-1)
        s2 = (order < (structured * n_out.float()).round()[:, None]) & ~y.bool()
        q2 = p @ rot2.transpose(-1, -2) + t2[:, None] + noise * torch.randn(b, n, 3, generator=g)
        out["q"] = q = torch.where(s2[..., None], q2, q)
        out.update(x=torch.cat([p, q], -1), structured=s2.float())
    if feature_dim > 0:
        a = torch.nn.functional.normalize(torch.randn(b, n, feature_dim, generator=g), dim=-1)
        s = torch.where(y.bool(), feature_noise[0], feature_noise[1])[..., None]
        bd = torch.nn.functional.normalize(a + s * torch.randn(b, n, feature_dim, generator=g) / feature_dim ** 0.5,
                                           dim=-1)
        out["f"] = torch.cat([a, bd], -1)
    return out


class CorrespondenceDataModule(InMemoryDataModule):
    """Registration problems ``{x, p, q, y, R, t}`` (one problem an example) from :func:`make_correspondences`.

    Args:
        num_problems: problems in all (split train/val/test).
        num_points: correspondences per problem ``N``.
        outlier_ratio: ``[low, high]`` range of the per-problem outlier fraction (train, val and test alike),
            or one number.
        noise: std of the inlier noise; translation: half-width of the translation box.
        structured, feature_dim, feature_noise: structured outliers (a second rigid motion) and descriptor
            features, see :func:`make_correspondences` (batch key ``f``; give the model ``feature_dim = 2 *
            feature_dim``).
    """

    def __init__(self, num_problems: int = 2000, num_points: int = 256, outlier_ratio: list[float] = (0.5, 0.9),
                 noise: float = 0.01, translation: float = 0.5, batch_size: int = 16, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, num_workers: int = 0, structured: float = 0.0,
                 feature_dim: int = 0, feature_noise: list[float] = (0.6, 1.0)) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        self.num_problems, self.num_points, self.noise, self.translation = num_problems, num_points, noise, translation
        self.outlier_ratio = (tuple(float(v) for v in outlier_ratio) if isinstance(outlier_ratio, (list, tuple))
                              else float(outlier_ratio))
        self.structured, self.feature_dim = float(structured), int(feature_dim)
        self.feature_noise = tuple(float(v) for v in feature_noise)
        make_correspondences(1, num_points, self.outlier_ratio, torch.Generator().manual_seed(0), noise, translation,
                             self.structured, self.feature_dim, self.feature_noise)

    def generate(self) -> dict[str, Tensor]:
        return make_correspondences(self.num_problems, self.num_points, self.outlier_ratio, self.generator(),
                                    self.noise, self.translation, self.structured, self.feature_dim,
                                    self.feature_noise)
