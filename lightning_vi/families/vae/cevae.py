"""Context-encoding VAE (Zimmerer et al. 2018, "Context-encoding Variational Autoencoder for
Unsupervised Anomaly Detection") as used by StRegA (Chatterjee et al. 2022; P37).

Loss (ceVAE, Eq. 3): the VAE's negative ELBO plus ``ce_weight`` times the context-encoding
(inpainting) loss of the shared encoder/decoder: patches of the input are replaced by noise and the
network reconstructs the clean image from the posterior mean of the corrupted one.

Anomaly maps: ``"recon"`` = ``|x - x_hat|``; ``"combined"`` (ceVAE Sec. 2.3) = ``|x - x_hat|`` times
``|grad_x loss|`` (the ELBO gradient with respect to the input). StRegA pre-processing: per-image
min-max normalisation (:func:`preprocess`); post-processing: threshold at a quantile and a
morphological opening to drop isolated pixels (:func:`postprocess`).
"""

from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import Likelihood, gaussian_kl
from lightning_vi.families.vae.vae import VAE
from lightning_vi.registry import FAMILIES


def preprocess(x: Tensor) -> Tensor:
    """StRegA pre-processing: per-image min-max normalisation to [0, 1]."""
    flat = x.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (x.ndim - 1)
    return (x - lo.view(shape)) / (hi - lo).clamp_min(1e-8).view(shape)


def postprocess(amap: Tensor, quantile: float = 0.95, opening: int = 3) -> Tensor:
    """StRegA post-processing: binary mask of pixels above the map's ``quantile`` (per image), then a
    morphological opening with a ``opening x opening`` square (erosion then dilation)."""
    check_range("quantile", quantile, 0.0, 1.0)
    thr = torch.quantile(amap.flatten(1), quantile, dim=1).view(-1, *([1] * (amap.ndim - 1)))
    mask = (amap > thr).float()
    if opening > 1:
        pad = opening // 2
        eroded = -F.max_pool2d(-mask, opening, stride=1, padding=pad)
        mask = F.max_pool2d(eroded, opening, stride=1, padding=pad)
    return mask


def random_patch_mask(x: Tensor, size: float, n_patches: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """Boolean ``[B, 1, H, W]`` masks of ``n_patches`` squares of side ``size * H`` at random places."""
    b, _, h, w = x.shape
    s = max(1, int(round(size * h)))
    top = torch.randint(0, h - s + 1, (b, n_patches), generator=generator).to(x.device)
    left = torch.randint(0, w - s + 1, (b, n_patches), generator=generator).to(x.device)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = ((rows >= top[..., None, None]) & (rows < top[..., None, None] + s)
              & (cols >= left[..., None, None]) & (cols < left[..., None, None] + s))
    return inside.any(1, keepdim=True)


@FAMILIES.register("cevae")
class CEVAE(VAE):
    """Context-encoding VAE with anomaly scores and maps (image inputs ``[C, H, W]``).

    The other arguments are the VAE's (:class:`VAE`); the encoder and decoder are the VAE's parts.

    Args:
        input_shape: image shape ``[C, H, W]``.
        latent_dim: number of latent dimensions.
        hidden_dims: MLP hidden widths.
        likelihood: as for ``vae`` (default ``"bernoulli"``).
        ce_weight: weight of the context-encoding (inpainting) loss; 0 gives the plain VAE.
        patch_size: side of the corrupted squares as a fraction of the image side.
        n_patches: corrupted squares per image.
        map_method: ``"recon"`` or ``"combined"`` anomaly map.
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 32, 32),
        latent_dim: int = 16,
        hidden_dims: list[int] = (512, 256),
        likelihood: Union[str, Likelihood] = "bernoulli",
        ce_weight: float = 1.0,
        patch_size: float = 0.25,
        n_patches: int = 1,
        map_method: str = "recon",
        **kwargs: Any,
    ) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"input_shape={list(input_shape)!r}: cevae needs images [C, H, W]")
        check_range("ce_weight", ce_weight, 0.0)
        check_range("patch_size", patch_size, 0.0, 1.0, low_open=True)
        check_range("n_patches", n_patches, 1)
        check_choice("map_method", map_method, ("recon", "combined"))
        super().__init__(input_shape=input_shape, latent_dim=latent_dim, hidden_dims=hidden_dims,
                         likelihood=likelihood, **kwargs)
        self.save_hyperparameters()
        self.ce_weight, self.patch_size, self.n_patches, self.map_method = ce_weight, patch_size, n_patches, map_method
        if ce_weight > 0:
            self.term_weights["ce"] = ce_weight

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = super().objective(batch)
        if self.ce_weight > 0:
            x = batch["x"]
            mask = random_patch_mask(x, self.patch_size, self.n_patches)
            corrupted = torch.where(mask, torch.rand_like(x), x)
            params = self.decode(self.encode(corrupted)[0])
            out["ce"] = -self.observation(params).log_prob(x).mean()
        return out

    def anomaly_map(self, x: Tensor, method: str | None = None) -> Tensor:
        """Pixel-wise anomaly map ``[B, C, H, W]`` (higher = more anomalous)."""
        method = method or self.map_method
        check_choice("method", method, ("recon", "combined"))
        with torch.no_grad():
            rec = self(x)
        err = (x - rec).abs()
        if method == "recon":
            return err
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            mu, log_var = self.encode(xg)
            kl = gaussian_kl(mu, log_var).sum()
            rec_loss = -self.observation(self.decode(mu)).log_prob(xg).sum()
            (grad,) = torch.autograd.grad(kl + rec_loss, xg)
        return err * grad.abs()

    def anomaly_score(self, x: Tensor, method: str | None = None) -> Tensor:
        """Per-image anomaly score: mean of the anomaly map."""
        return self.anomaly_map(x, method).flatten(1).mean(1)
