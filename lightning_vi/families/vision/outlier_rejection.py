"""Variational outlier rejection for 3D registration (P14: Jiang et al. 2023, "Robust Outlier Rejection for 3D
Registration with Variational Bayes", CVPR).

Given ``N`` putative correspondences ``(p_i, q_i)`` the family classifies inliers and solves the rigid motion:

1. **Embedding.** ``f_i = MLP([p_i - mean p, q_i - mean q, d_i])`` (translation removed; ``d_i`` the optional
   per-correspondence descriptor features, ``feature_dim`` wide, batch key ``f``).
2. **Variational non-local layers** (their Sec. 3.2). The query, key and value features of each correspondence
   are latent: a prior ``p(z_i | f_i) = N(mu_p, sigma_p^2)`` and a label-conditioned posterior
   ``q(z_i | f_i, y_i)`` (``y_i`` the inlier label, embedded). Training samples the posterior (reparameterised);
   evaluation takes the prior mean. The non-local aggregation is compatibility-guided as in PointDSC (Bai et al.
   2021, eq. 3): ``A = softmax_j(beta_ij * q_i . k_j / sqrt(d))`` with the length-consistency ``beta``
   (:func:`~lightning_vi.families.vision.registration.compatibility`), ``f_i <- f_i + MLP([f_i, sum_j A_ij v_j])``.
3. **ELBO** (their eq. 6): ``E_q[log p(y | z)] - KL(q || p)``, i.e. ``bce_posterior + kl_weight * kl`` (the BCE
   class-balanced by ``pos_weight = #outliers / #inliers`` of the batch), the KL summed over the latent features
   of a correspondence and averaged over correspondences; plus the BCE of the prior path ``bce`` that is used at
   test time (the hybrid objective of Sohn et al. 2015, eq. 10, which closes the train/test gap of a
   label-conditioned posterior).
4. **Voting-based inlier search** (their Sec. 3.3, simplified): the ``num_seeds`` most confident correspondences
   seed hypotheses; each seed's consensus set is its ``consensus`` most compatible-and-confident neighbours,
   solved by weighted Kabsch; every hypothesis is scored by the confidence-weighted vote of the pairs it explains
   (residual ``< inlier_threshold``); the winner is refit by weighted Kabsch on its inliers.

``variational=False`` is the deterministic non-local baseline of the same size (prior means only, no KL).
Batches come from :class:`~lightning_vi.data.correspondences.CorrespondenceDataModule` (``p``, ``q``, ``y``, ``R``,
``t``). Logged: ``bce``, ``kl``, ``acc``; in validation/test also ``precision``/``recall`` of the found inliers,
``rotation_error`` (degrees), ``translation_error`` and ``recall_registration`` (RE < 5 deg and TE < 0.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.families.vision.registration import (check_correspondences, compatibility, rotation_error_deg,
                                                       transform, translation_error, weighted_kabsch)
from lightning_vi.registry import FAMILIES


class VariationalNonLocal(nn.Module):
    """One compatibility-guided non-local layer whose query/key/value are latent Gaussians (prior from the
    feature, posterior from the feature and the inlier label)."""

    def __init__(self, dim: int, variational: bool = True) -> None:
        super().__init__()
        self.dim, self.variational = dim, variational
        self.prior = nn.Linear(dim, 6 * dim if variational else 3 * dim)
        if variational:
            self.label = nn.Embedding(2, dim)
            self.posterior = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, 6 * dim))
        self.update = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, f: Tensor, beta: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``f [B, N, d]``, ``beta [B, N, N]``, ``y [B, N]`` (training labels, or None) -> (new f, KL ``[B, N]``)."""
        kl = f.new_zeros(f.shape[:-1])
        if self.variational:
            mu_p, lv_p = self.prior(f).chunk(2, -1)
            lv_p = lv_p.clamp(-8, 8)
            if y is not None:
                mu_q, lv_q = self.posterior(torch.cat([f, self.label(y.long())], -1)).chunk(2, -1)
                lv_q = lv_q.clamp(-8, 8)
                z = mu_q + torch.randn_like(mu_q) * (0.5 * lv_q).exp()
                kl = gaussian_kl(mu_q, lv_q, mu_p, lv_p).sum(-1)
            else:
                z = mu_p
        else:
            z = self.prior(f)
        qry, key, val = z.chunk(3, -1)
        attn = torch.softmax(beta * (qry @ key.transpose(-1, -2)) / math.sqrt(self.dim), -1)
        return self.norm(f + self.update(torch.cat([f, attn @ val], -1))), kl


@FAMILIES.register("outlier_rejection")
class VariationalOutlierRejection(VIModule):
    """Inlier classification + robust rigid registration from correspondences (Jiang et al. 2023).

    Args:
        hidden_dim: feature width ``d``.
        num_layers: variational non-local layers.
        variational: latent q/k/v with prior and label-conditioned posterior (the paper); False = the
            deterministic non-local network of the same layout.
        kl_weight: weight of ``KL(q || p)`` in the loss.
        sigma_d: length-consistency scale of the compatibility ``beta`` (about 10x the inlier noise).
        inlier_threshold: residual below which a pair counts as explained by a hypothesis.
        num_seeds: hypotheses (seeds) of the voting search.
        consensus: neighbours of a seed in its Kabsch solve.
        feature_dim: width of the per-correspondence descriptor features ``f`` (0 = coordinates only).
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(self, hidden_dim: int = 64, num_layers: int = 3, variational: bool = True, kl_weight: float = 0.1,
                 sigma_d: float = 0.1, inlier_threshold: float = 0.05, num_seeds: int = 64, consensus: int = 24,
                 feature_dim: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range("hidden_dim", hidden_dim, 1)
        check_range("num_layers", num_layers, 1)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("sigma_d", sigma_d, 0.0, low_open=True)
        check_range("inlier_threshold", inlier_threshold, 0.0, low_open=True)
        check_range("num_seeds", num_seeds, 1)
        check_range("consensus", consensus, 3)
        check_range("feature_dim", feature_dim, 0)
        self.save_hyperparameters()
        self.variational, self.kl_weight = bool(variational), float(kl_weight)
        self.sigma_d, self.inlier_threshold = float(sigma_d), float(inlier_threshold)
        self.num_seeds, self.consensus = int(num_seeds), int(consensus)
        self.feature_dim = int(feature_dim)
        self.embed = nn.Sequential(nn.Linear(6 + self.feature_dim, hidden_dim), nn.ReLU(),
                                   nn.Linear(hidden_dim, hidden_dim))
        self.layers = nn.ModuleList(VariationalNonLocal(hidden_dim, self.variational) for _ in range(num_layers))
        self.head = nn.Linear(hidden_dim, 1)
        self.term_weights = {"bce": 1.0, "bce_posterior": 1.0, "kl": self.kl_weight if self.variational else 0.0}

    def forward(self, p: Tensor, q: Tensor, y: Tensor | None = None,
                feat: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Inlier logits ``[B, N]`` and the per-correspondence KL ``[B, N]`` (zeros without labels)."""
        check_correspondences(p, q)
        self._check_features(p, feat)
        beta = compatibility(p, q, self.sigma_d)
        x = [p - p.mean(-2, keepdim=True), q - q.mean(-2, keepdim=True)] + ([feat] if self.feature_dim else [])
        f = self.embed(torch.cat(x, -1))
        kl = f.new_zeros(f.shape[:-1])
        for layer in self.layers:
            f, k = layer(f, beta, y)
            kl = kl + k
        return self.head(f)[..., 0], kl

    def _check_features(self, p: Tensor, feat: Tensor | None) -> None:
        want = (*p.shape[:-1], self.feature_dim)
        if self.feature_dim and (feat is None or tuple(feat.shape) != want):
            raise ValueError(f"feature_dim={self.feature_dim} needs descriptor features feat of shape {want}; got "
                             f"{None if feat is None else tuple(feat.shape)}")

    @torch.no_grad()
    def register(self, p: Tensor, q: Tensor, feat: Tensor | None = None) -> dict[str, Tensor]:
        """Inlier scores, the voting search and the final weighted Kabsch for ``p, q [B, N, 3]``.

        Returns ``R [B, 3, 3]``, ``t [B, 3]``, ``inliers [B, N]`` (bool) and ``scores [B, N]`` (inlier
        probabilities of the network).
        """
        check_correspondences(p, q)
        w = torch.sigmoid(self(p, q, feat=feat)[0])
        return vote(p, q, w, compatibility(p, q, self.sigma_d), self.inlier_threshold, self.num_seeds, self.consensus)

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        p, q, y, feat = batch["p"], batch["q"], batch["y"].float(), batch.get("f")
        pos = y.sum().clamp_min(1.0)  # class-balanced: inliers are 5-50% of the pairs
        bce = lambda lg: F.binary_cross_entropy_with_logits(lg, y, pos_weight=(y.numel() - pos) / pos)  # noqa: E731
        logits, kl = self(p, q, feat=feat)  # the prior path, used at test time
        out = {"bce": bce(logits), "kl": kl.mean()}
        if self.training and self.variational:
            post_logits, kl = self(p, q, y, feat)
            out.update(bce_posterior=bce(post_logits), kl=kl.mean())
        out.update({
               "acc": ((logits > 0).float() == y).float().mean()})
        if not self.training and "R" in batch:
            res = vote(p, q, torch.sigmoid(logits), compatibility(p, q, self.sigma_d), self.inlier_threshold,
                       self.num_seeds, self.consensus)
            out.update(registration_metrics(res, batch))
        return out


def vote(p: Tensor, q: Tensor, w: Tensor, beta: Tensor, tau: float, num_seeds: int, consensus: int) -> dict[str, Tensor]:
    """Voting-based inlier search: seeds = the most confident pairs; each seed's hypothesis is the weighted
    Kabsch of its ``consensus`` neighbours ranked by ``beta_sj * w_j``; the hypothesis with the largest
    confidence-weighted inlier vote wins and is refit on its inliers (twice). All seeds are solved at once."""
    b, n, _ = p.shape
    m, k = min(num_seeds, n), min(consensus, n)
    seeds = w.topk(m, -1).indices  # [B, m]
    rel = torch.gather(beta, 1, seeds[..., None].expand(b, m, n)) * w[:, None]  # [B, m, N]
    nb_w, nb = rel.topk(k, -1)  # [B, m, k]
    gather = lambda x: torch.gather(x[:, None].expand(b, m, n, 3), 2, nb[..., None].expand(b, m, k, 3))  # noqa: E731
    r, t = weighted_kabsch(gather(p), gather(q), nb_w + 1e-9)
    res = (transform(r, t, p[:, None]) - q[:, None]).norm(dim=-1)  # [B, m, N]
    votes = ((res < tau).to(w.dtype) * w[:, None]).sum(-1)
    best = votes.argmax(-1)
    pick = torch.arange(b, device=p.device)
    r, t = r[pick, best], t[pick, best]
    for _ in range(2):
        inl = (transform(r, t, p) - q).norm(dim=-1) < tau
        r, t = weighted_kabsch(p, q, inl.to(p.dtype) + 1e-9)
    inliers = (transform(r, t, p) - q).norm(dim=-1) < tau
    return {"R": r, "t": t, "inliers": inliers, "scores": w}


def registration_metrics(result: dict[str, Tensor], batch: dict[str, Tensor], max_rotation_deg: float = 5.0,
                         max_translation: float = 0.1) -> dict[str, Tensor]:
    """Inlier precision/recall of ``result["inliers"]`` against ``batch["y"]``, mean rotation error (degrees),
    translation error, and registration recall (both errors under the thresholds)."""
    y = batch["y"].bool()
    found = result["inliers"]
    tp = (found & y).sum(-1).float()
    re, te = rotation_error_deg(result["R"], batch["R"]), translation_error(result["t"], batch["t"])
    return {"precision": (tp / found.sum(-1).clamp_min(1)).mean(), "recall": (tp / y.sum(-1).clamp_min(1)).mean(),
            "rotation_error": re.mean(), "translation_error": te.mean(),
            "recall_registration": ((re < max_rotation_deg) & (te < max_translation)).float().mean()}
