"""Probabilistic U-Net (Kohl et al. 2018, "A Probabilistic U-Net for Segmentation of Ambiguous Images", NeurIPS)
trained with cross entropy or with PULASki's statistical-distance loss (P22: Chatterjee et al. 2023, "PULASki:
Learning inter-rater variability using statistical distances to improve probabilistic segmentation",
arXiv:2312.15686).

Model (Kohl et al. Sec. 2): a U-Net gives features ``f(x) [B, F, H, W]``; a prior net ``p(z | x)`` and a posterior
net ``q(z | x, y)`` (convolutional encoders + global pooling) give diagonal Gaussians over a global latent
``z in R^d``; ``z`` is broadcast to ``H x W``, concatenated to ``f(x)`` and fused by three 1x1 convolutions into the
segmentation logits. Test time: ``z ~ p(z | x)`` (:meth:`ProbUNet.sample`).

Losses (``loss=``):

* ``"ce"``: the Prob. U-Net ELBO (Kohl et al. Eq. 4): ``CE(S(x, z), y_r) + beta KL(q(z | x, y_r) || p(z | x))``
  with ``z ~ q(z | x, y_r)`` and one rater ``r`` drawn per example and step; CE summed over pixels.
* ``"sinkhorn"``: PULASki. The reconstruction is a statistical distance between the *distribution* of predicted
  segmentations and the annotators' masks: for each image the ``R`` predictions ``S_r = sigmoid(S(x, z_r))``,
  ``z_r ~ q(z | x, y_r)``, and the ``R`` masks ``Y_r`` are two empirical measures, compared by the entropic
  optimal-transport (Sinkhorn, Cuturi 2013) cost with :func:`lightning_vi.metrics.optimal_transport.sinkhorn`
  (unrolled gradients). The ground cost is the soft Jaccard distance ``1 - sum(S Y) / sum(S + Y - S Y)``
  (``cost="jaccard"``: size-normalised, so thin, class-imbalanced structures count as much as their background)
  or the per-pixel mean squared distance (``cost="sqeuclidean"``, as with PULASki's Euclidean Sinkhorn). The loss
  is ``distance_weight * sinkhorn + beta * mean_r KL(q(z | x, y_r) || p(z | x))``.
* ``"focal_tversky"``: PULASki's Focal-Tversky variant: the CE of ``"ce"`` replaced by
  ``(1 - TI)^gamma`` with ``TI = TP / (TP + alpha FN + (1 - alpha) FP)`` (Abraham & Khan 2019).

Evaluation: :func:`generalized_energy_distance` (Kohl et al. Eq. 5, ``d = 1 - IoU``, ``d(empty, empty) = 0``)
between ``num_samples`` prior samples and the raters' masks, logged as ``ged`` in validation and test.
Batches: ``x [B, 1, H, W]``, ``masks [B, R, H, W]`` (:class:`~lightning_vi.data.raters.RaterDataModule`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.data.raters import check_masks
from lightning_vi.metrics.optimal_transport import sinkhorn
from lightning_vi.registry import FAMILIES

__all__ = ["ProbUNet", "generalized_energy_distance", "iou_distance", "soft_jaccard_cost", "pearson"]

LOSSES = ("ce", "sinkhorn", "focal_tversky")
COSTS = ("jaccard", "sqeuclidean")


def iou_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - IoU`` of binary masks ``a [..., n, H, W]``, ``b [..., m, H, W]`` for every pair: ``[..., n, m]``;
    two empty masks have distance 0 (Kohl et al. 2018, App. on GED)."""
    a, b = a.flatten(-2).float(), b.flatten(-2).float()
    inter = a @ b.transpose(-1, -2)
    union = a.sum(-1)[..., :, None] + b.sum(-1)[..., None, :] - inter
    return torch.where(union > 0, 1 - inter / union.clamp_min(1e-12), torch.zeros_like(union))


def generalized_energy_distance(samples: Tensor, masks: Tensor) -> Tensor:
    """Squared generalised energy distance per image ``[B]`` (Kohl et al. 2018, Eq. 5)::

        D^2_GED = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')],   d = 1 - IoU,

    between the sampled segmentations ``samples [B, M, H, W]`` and the annotators' masks ``masks [B, R, H, W]``
    (binary); expectations over all ordered pairs, the diagonal (``d = 0``) included."""
    if samples.dim() != 4 or masks.dim() != 4 or samples.shape[0] != masks.shape[0] or samples.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"samples [B, M, H, W] and masks [B, R, H, W] must agree in B, H, W; got "
                         f"{list(samples.shape)} and {list(masks.shape)}")
    return (2 * iou_distance(samples, masks).mean((-2, -1)) - iou_distance(samples, samples).mean((-2, -1))
            - iou_distance(masks, masks).mean((-2, -1)))


def soft_jaccard_cost(p: Tensor, y: Tensor, eps: float = 1.0) -> Tensor:
    """Soft Jaccard distance ``[..., n, m]`` between probability maps ``p [..., n, H, W]`` and masks ``y [..., m, H, W]``
    (``eps`` smooths the empty-empty case to distance 0)."""
    p, y = p.flatten(-2), y.flatten(-2).to(p)
    inter = p @ y.transpose(-1, -2)
    union = p.sum(-1)[..., :, None] + y.sum(-1)[..., None, :] - inter
    return 1 - (inter + eps) / (union + eps)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of two flattened tensors."""
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU())


class SmallUNet(nn.Module):
    """Feature U-Net (Ronneberger et al. 2015): ``len(channels)`` levels, 2x2 average pooling down, bilinear up,
    skip concatenation; returns ``channels[0]`` feature maps at full resolution. (``lightning_vi.nn.unet.UNet`` is
    time-conditioned and maps back to the input channels, so it does not fit here.)"""

    def __init__(self, in_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList(_block(c_in, c) for c_in, c in zip((in_channels, *channels[:-1]), channels))
        self.up = nn.ModuleList(_block(channels[i] + channels[i + 1], channels[i]) for i in range(len(channels) - 1))

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return x


class GaussianEncoder(nn.Module):
    """Prior/posterior net: conv blocks with pooling, global mean, 1x1 conv to ``(mu, log_var)`` of ``z [B, d]``."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_block(c_in, c) for c_in, c in zip((in_channels, *channels[:-1]), channels))
        self.head = nn.Conv2d(channels[-1], 2 * latent_dim, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
        mu, log_var = self.head(x.mean((-2, -1), keepdim=True)).flatten(1).chunk(2, -1)
        return mu, log_var.clamp(-10, 6)


@FAMILIES.register("pulaski")
class ProbUNet(VIModule):
    """Probabilistic U-Net with cross-entropy (Kohl et al. 2018) or PULASki statistical-distance training.

    Args:
        in_channels: image channels. channels: U-Net (and prior/posterior net) widths per level.
        latent_dim: size of the global latent ``z``. loss: one of ``("ce", "sinkhorn", "focal_tversky")``.
        kl_weight: ``beta`` of the KL term. distance_weight: weight of the Sinkhorn (or Focal-Tversky) term.
        cost: Sinkhorn ground cost, ``"jaccard"`` or ``"sqeuclidean"``. sinkhorn_reg: entropic regulariser
            ``epsilon`` (in cost units). sinkhorn_iters: unrolled Sinkhorn iterations.
        tversky_alpha, tversky_gamma: Focal-Tversky ``alpha`` (weight of false negatives) and ``gamma``.
        num_samples: prior samples per image for the validation/test GED.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr``, ...).
    """

    def __init__(self, in_channels: int = 1, channels: list[int] = (16, 32), latent_dim: int = 4, loss: str = "sinkhorn",
                 kl_weight: float = 1.0, distance_weight: float = 100.0, cost: str = "jaccard",
                 sinkhorn_reg: float = 0.05, sinkhorn_iters: int = 30, tversky_alpha: float = 0.7,
                 tversky_gamma: float = 0.75, num_samples: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_range("in_channels", in_channels, 1)
        check_range("latent_dim", latent_dim, 1)
        check_choice("loss", loss, LOSSES)
        check_choice("cost", cost, COSTS)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("distance_weight", distance_weight, 0.0, low_open=True)
        check_range("sinkhorn_reg", sinkhorn_reg, 0.0, low_open=True)
        check_range("sinkhorn_iters", sinkhorn_iters, 1)
        check_range("tversky_alpha", tversky_alpha, 0.0, 1.0)
        check_range("tversky_gamma", tversky_gamma, 0.0, low_open=True)
        check_range("num_samples", num_samples, 2)
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise ValueError(f"channels must be a non-empty list of positive ints, got {list(channels)}")
        self.save_hyperparameters()
        channels = tuple(int(c) for c in channels)
        self.loss_name, self.cost, self.latent_dim = loss, cost, int(latent_dim)
        self.kl_weight, self.distance_weight = float(kl_weight), float(distance_weight)
        self.sinkhorn_reg, self.sinkhorn_iters = float(sinkhorn_reg), int(sinkhorn_iters)
        self.tversky_alpha, self.tversky_gamma, self.num_samples = float(tversky_alpha), float(tversky_gamma), int(num_samples)
        self.unet = SmallUNet(in_channels, channels)
        self.prior = GaussianEncoder(in_channels, channels, latent_dim)
        self.posterior = GaussianEncoder(in_channels + 1, channels, latent_dim)
        f = channels[0]
        self.fcomb = nn.Sequential(nn.Conv2d(f + latent_dim, f, 1), nn.ReLU(), nn.Conv2d(f, f, 1), nn.ReLU(), nn.Conv2d(f, 1, 1))
        nn.init.constant_(self.fcomb[-1].bias, -2.0)  # start near the foreground rate (thin structures: a few %)
        self.term_weights = {"kl": self.kl_weight,
                             "ce": 1.0 if loss == "ce" else 0.0,
                             "sinkhorn": self.distance_weight if loss == "sinkhorn" else 0.0,
                             "focal_tversky": self.distance_weight if loss == "focal_tversky" else 0.0}

    # -- the network -----------------------------------------------------------------------------
    def decode(self, features: Tensor, z: Tensor) -> Tensor:
        """Logits ``[B, H, W]`` from U-Net features ``[B, F, H, W]`` and ``z [B, d]`` broadcast over the pixels."""
        zz = z[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        return self.fcomb(torch.cat([features, zz], 1))[:, 0]

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """Logits ``[B, H, W]`` for ``z`` (default: the prior mean)."""
        if z is None:
            z = self.prior(x)[0]
        return self.decode(self.unet(x), z)

    @torch.no_grad()
    def sample_latents(self, x: Tensor, n: int) -> Tensor:
        """``n`` latents per image from the prior ``p(z | x)``: ``[B, n, d]``."""
        mu, log_var = self.prior(x)
        return mu[:, None] + torch.randn(mu.shape[0], n, mu.shape[1], device=x.device) * (0.5 * log_var[:, None]).exp()

    @torch.no_grad()
    def sample(self, x: Tensor, n: int = 8) -> Tensor:  # type: ignore[override]
        """``n`` binary segmentations per image from the prior (Kohl et al. test time): ``[B, n, H, W]``."""
        b = x.shape[0]
        z = self.sample_latents(x, n)
        feats = self.unet(x).repeat_interleave(n, 0)
        return (self.decode(feats, z.reshape(b * n, -1)) > 0).float().view(b, n, *x.shape[-2:])

    # -- the objective ---------------------------------------------------------------------------
    def _posterior(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu_q, lv_q = self.posterior(torch.cat([x, y[:, None]], 1))
        return mu_q + torch.randn_like(mu_q) * (0.5 * lv_q).exp(), mu_q, lv_q

    def _focal_tversky(self, logits: Tensor, y: Tensor) -> Tensor:
        p = torch.sigmoid(logits).flatten(1)
        y = y.flatten(1)
        tp, fn, fp = (p * y).sum(-1), ((1 - p) * y).sum(-1), (p * (1 - y)).sum(-1)
        ti = (tp + 1) / (tp + self.tversky_alpha * fn + (1 - self.tversky_alpha) * fp + 1)
        return ((1 - ti).clamp_min(0) ** self.tversky_gamma).mean()

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, masks = batch["x"], batch["masks"].float()
        check_masks(x, masks)
        b, r = masks.shape[:2]
        feats = self.unet(x)
        mu_p, lv_p = self.prior(x)
        out: dict[str, Tensor] = {}
        if self.loss_name == "sinkhorn":  # every rater: R posterior samples vs the R masks
            xr = x.repeat_interleave(r, 0)
            z, mu_q, lv_q = self._posterior(xr, masks.flatten(0, 1))
            kl = gaussian_kl(mu_q, lv_q, mu_p.repeat_interleave(r, 0), lv_p.repeat_interleave(r, 0)).sum(-1)
            probs = torch.sigmoid(self.decode(feats.repeat_interleave(r, 0), z)).view(b, r, *x.shape[-2:])
            if self.cost == "jaccard":
                cost = soft_jaccard_cost(probs, masks)
            else:
                cost = ((probs.flatten(2)[:, :, None] - masks.flatten(2)[:, None]) ** 2).mean(-1)
            ot = sinkhorn(cost.double(), reg=self.sinkhorn_reg, max_iter=self.sinkhorn_iters, tol=0.0)
            out["sinkhorn"] = ot.cost.mean().to(x.dtype)
            out["kl"] = kl.mean()
        else:  # one rater per example and step (Kohl et al.)
            pick = torch.randint(r, (b,), device=x.device)
            y = masks[torch.arange(b, device=x.device), pick]
            z, mu_q, lv_q = self._posterior(x, y)
            logits = self.decode(feats, z)
            out["kl"] = gaussian_kl(mu_q, lv_q, mu_p, lv_p).sum(-1).mean()
            if self.loss_name == "ce":
                out["ce"] = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum((-2, -1)).mean()
            else:
                out["focal_tversky"] = self._focal_tversky(logits, y)
        if not self.training:
            out["ged"] = generalized_energy_distance(self.sample(x, self.num_samples), masks).mean()
        return out
