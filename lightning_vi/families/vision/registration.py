"""Rigid registration from putative correspondences: weighted Kabsch, spatial compatibility, RANSAC, errors.

Geometry shared by the variational outlier-rejection family (P14, Jiang et al. 2023, "Robust Outlier Rejection
for 3D Registration with Variational Bayes") and its baselines. Everything is batched over problems ``[B, N, 3]``
and over hypotheses; no Python loop runs over correspondences.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def check_correspondences(p: Tensor, q: Tensor) -> None:
    """``p`` and ``q`` must both be ``[..., N, 3]`` with the same ``N``; at least 3 pairs are needed."""
    if p.shape[-1] != 3 or q.shape[-1] != 3:
        raise ValueError(f"correspondences must be 3D points [..., N, 3]; got p {tuple(p.shape)}, q {tuple(q.shape)}")
    if p.shape != q.shape:
        raise ValueError(f"source and target point sets have mismatched shapes: p {tuple(p.shape)} vs "
                         f"q {tuple(q.shape)}; the i-th rows must be one putative correspondence")
    if p.shape[-2] < 3:
        raise ValueError(f"a rigid transform needs at least 3 correspondences; got N={p.shape[-2]}")


def weighted_kabsch(p: Tensor, q: Tensor, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Least-squares rigid transform ``q ~ R p + t`` with weights (Kabsch 1976 / Umeyama 1991, no scale).

    Args:
        p, q: ``[..., N, 3]``; w: ``[..., N]`` non-negative weights (None = uniform).
    Returns:
        ``R [..., 3, 3]`` (a proper rotation, det +1) and ``t [..., 3]``.
    """
    if w is None:
        w = torch.ones(p.shape[:-1], dtype=p.dtype, device=p.device)
    w = w.clamp_min(0)
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    mp, mq = (w[..., None] * p).sum(-2), (w[..., None] * q).sum(-2)
    h = ((p - mp[..., None, :]) * w[..., None]).transpose(-1, -2) @ (q - mq[..., None, :])  # [..., 3, 3]
    u, _, vt = torch.linalg.svd(h)
    d = torch.sign(torch.linalg.det(vt.transpose(-1, -2) @ u.transpose(-1, -2)))
    d = torch.where(d == 0, torch.ones_like(d), d)
    diag = torch.ones(*d.shape, 3, dtype=p.dtype, device=p.device)
    diag[..., 2] = d
    r = vt.transpose(-1, -2) @ (diag[..., None] * u.transpose(-1, -2))
    return r, mq - (r @ mp[..., None])[..., 0]


def transform(r: Tensor, t: Tensor, p: Tensor) -> Tensor:
    """``R p + t`` for ``p [..., N, 3]``."""
    return p @ r.transpose(-1, -2) + t[..., None, :]


def rotation_error_deg(r_est: Tensor, r_true: Tensor) -> Tensor:
    """Geodesic angle ``arccos((tr(R_est^T R) - 1) / 2)`` in degrees."""
    cos = ((r_est.transpose(-1, -2) @ r_true).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def translation_error(t_est: Tensor, t_true: Tensor) -> Tensor:
    """Euclidean ``||t_est - t||``."""
    return (t_est - t_true).norm(dim=-1)


def compatibility(p: Tensor, q: Tensor, sigma: float) -> Tensor:
    """Spatial (length-consistency) compatibility ``beta_ij = max(0, 1 - d_ij^2 / sigma^2)``,
    ``d_ij = | ||p_i - p_j|| - ||q_i - q_j|| |`` (rigid motions keep lengths; PointDSC, Bai et al. 2021, eq. 2),
    ``[..., N, N]``."""
    d = (torch.cdist(p, p) - torch.cdist(q, q)).abs()
    return (1 - d.square() / sigma ** 2).clamp_min(0)


def inlier_count(r: Tensor, t: Tensor, p: Tensor, q: Tensor, tau: float, w: Tensor | None = None) -> Tensor:
    """(Weighted) number of pairs with residual ``||R p + t - q|| < tau`` for hypotheses ``r [..., H, 3, 3]``
    against one problem ``p, q [..., N, 3]``; returns ``[..., H]``."""
    res = (transform(r, t, p[..., None, :, :]) - q[..., None, :, :]).norm(dim=-1)  # [..., H, N]
    ok = (res < tau).to(p.dtype)
    return (ok * (w[..., None, :] if w is not None else 1)).sum(-1)


def ransac(p: Tensor, q: Tensor, iterations: int, tau: float, generator: torch.Generator,
           chunk: int = 1024) -> tuple[Tensor, Tensor, Tensor]:
    """RANSAC (Fischler & Bolles 1981) with minimal 3-point samples, scored by inlier count and refit by
    Kabsch on the best hypothesis' inliers. ``p, q [B, N, 3]``; returns ``R [B, 3, 3]``, ``t [B, 3]`` and the
    inlier mask ``[B, N]``. Hypotheses are drawn and scored ``chunk`` at a time (batched SVDs)."""
    check_correspondences(p, q)
    if iterations < 1:
        raise ValueError(f"iterations={iterations!r} is out of range; allowed: [1, inf)")
    b, n, _ = p.shape
    best = torch.full((b,), -1.0, dtype=p.dtype, device=p.device)
    best_r = torch.eye(3, dtype=p.dtype, device=p.device).expand(b, 3, 3).clone()
    best_t = torch.zeros(b, 3, dtype=p.dtype, device=p.device)
    done = 0
    while done < iterations:
        h = min(chunk, iterations - done)
        idx = torch.rand(b, h, n, generator=generator).argsort(-1)[..., :3].to(p.device)  # 3 distinct indices
        ps = torch.gather(p[:, None].expand(b, h, n, 3), 2, idx[..., None].expand(b, h, 3, 3))
        qs = torch.gather(q[:, None].expand(b, h, n, 3), 2, idx[..., None].expand(b, h, 3, 3))
        r, t = weighted_kabsch(ps, qs)
        score = inlier_count(r, t, p, q, tau)  # [B, h]
        s, k = score.max(-1)
        better = s > best
        best = torch.where(better, s, best)
        pick = torch.arange(b, device=p.device)
        best_r = torch.where(better[:, None, None], r[pick, k], best_r)
        best_t = torch.where(better[:, None], t[pick, k], best_t)
        done += h
    mask = (transform(best_r, best_t, p) - q).norm(dim=-1) < tau
    r, t = weighted_kabsch(p, q, mask.to(p.dtype) + 1e-9)
    return r, t, mask


def ransac_success_probability(inlier_ratio: float, iterations: int, sample_size: int = 3) -> float:
    """``1 - (1 - w^s)^k``: the chance that at least one of ``k`` minimal samples is all inliers."""
    return 1 - (1 - inlier_ratio ** sample_size) ** iterations


def iterations_for(inlier_ratio: float, confidence: float = 0.99, sample_size: int = 3) -> int:
    """RANSAC's classic iteration count ``log(1 - confidence) / log(1 - w^s)``."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - inlier_ratio ** sample_size))
