"""LMD (Ma et al. 2023, "LMD: Faster Image Reconstruction with Latent Masking Diffusion"): images are
projected to the latent space of a pre-trained VAE; a fraction ``r`` of the latent coordinates is
masked (replaced by a learned mask token) and a network reconstructs the full latent, with ``r``
rising over training ("progressive masking") by one of three schedulers (Sec. 3.3):

- ``linear``:    ``r(s) = r0 + (r1 - r0) s``
- ``cosine``:    ``r(s) = r0 + (r1 - r0) (1 - cos(pi s)) / 2``
- ``piecewise``: ``r`` steps through ``num_stages`` equal levels from r0 to r1

with ``s = step / total_steps`` in [0, 1]. Loss: MSE on the masked latent coordinates (MAE-style).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.latent_diffusion import producer_vae
from lightning_vi.families.diffusion.producer import FrozenProducers
from lightning_vi.nn import MLP
from lightning_vi.registry import FAMILIES

MASK_SCHEDULERS = ("linear", "cosine", "piecewise")


def mask_ratio(scheduler: str, progress: float, r0: float = 0.1, r1: float = 0.75, num_stages: int = 4) -> float:
    """Mask ratio at training progress ``progress`` in [0, 1] (clipped)."""
    check_choice("mask_scheduler", scheduler, MASK_SCHEDULERS)
    s = min(max(progress, 0.0), 1.0)
    if scheduler == "linear":
        return r0 + (r1 - r0) * s
    if scheduler == "cosine":
        return r0 + (r1 - r0) * (1 - math.cos(math.pi * s)) / 2
    stage = min(int(s * num_stages), num_stages - 1)
    return r0 + (r1 - r0) * stage / max(num_stages - 1, 1)


def random_mask(shape: tuple[int, int], ratio: float, device=None, generator: torch.Generator | None = None) -> Tensor:
    """Boolean ``[B, D]`` mask with exactly ``round(ratio * D)`` True entries per row (True = masked)."""
    B, D = shape
    k = int(round(ratio * D))
    order = torch.rand(B, D, generator=generator).argsort(1).to(device)
    return order < k


@FAMILIES.register("lmd")
class LMD(FrozenProducers, VIModule):
    """Progressive latent masking over a frozen VAE's latents.

    Args:
        vae_checkpoint: trained ``vae`` path, read at the first build; latent_dim and input_shape must
            match it. The VAE is then a frozen submodule, saved in this model's checkpoints.
        latent_dim: latent size of the VAE (checked).
        input_shape: image shape of the VAE (checked).
        mask_scheduler: ``linear``/``cosine``/``piecewise``.
        mask_start: masking ratio r0 at the start of the schedule.
        mask_end: masking ratio r1 at its end.
        num_stages: piecewise levels.
        total_steps: steps over which the schedule runs.
        hidden_dims: widths of the latent reconstruction MLP.
        vae_config: written at the first build (see :class:`LatentDiffusion`); leave it unset.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    producers = ("vae",)

    def __init__(self, vae_checkpoint: str = "", latent_dim: int = 8, input_shape: list[int] = (1, 8, 8),
                 mask_scheduler: str = "linear", mask_start: float = 0.1, mask_end: float = 0.75, num_stages: int = 4,
                 total_steps: int = 1000, hidden_dims: list[int] = (256, 256), vae_config: dict | None = None,
                 **kwargs: Any) -> None:
        vae, spec = producer_vae("lmd", vae_checkpoint, vae_config, input_shape, latent_dim)
        super().__init__(**kwargs)
        check_choice("mask_scheduler", mask_scheduler, MASK_SCHEDULERS)
        check_range("mask_start", mask_start, 0.0, 1.0)
        check_range("mask_end", mask_end, mask_start, 1.0)
        check_range("total_steps", total_steps, 1)
        self.save_hyperparameters()
        self.hparams["vae_config"] = spec
        self.vae = vae
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim = latent_dim
        self.mask_token = nn.Parameter(torch.zeros(latent_dim))
        self.net = MLP(2 * latent_dim, list(hidden_dims), latent_dim, act="silu")
        self.term_weights = {"masked_mse": 1.0}

    def current_ratio(self) -> float:
        h = self.hparams
        return mask_ratio(h.mask_scheduler, self.global_step / h.total_steps, h.mask_start, h.mask_end, h.num_stages)

    def forward(self, z: Tensor, mask: Tensor) -> Tensor:
        """Reconstructed latents from ``z`` with ``mask`` (True = hidden)."""
        zin = torch.where(mask, self.mask_token.expand_as(z), z)
        return self.net(torch.cat([zin, mask.float()], 1))

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.no_grad():
            z = self.vae.encode(batch["x"])[0]
        ratio = self.current_ratio()
        mask = random_mask(tuple(z.shape), ratio, z.device)
        z_hat = self(z, mask)
        m = mask.float()
        loss = ((z_hat - z) ** 2 * m).sum() / m.sum().clamp(min=1)
        return {"masked_mse": loss, "mask_ratio": torch.tensor(float(ratio))}

    @torch.no_grad()
    def reconstruct(self, x: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
        """Images decoded from latents with a ``ratio`` fraction masked and filled in by the model; the visible
        coordinates keep their values (the loss trains only the masked ones, as in MAE)."""
        z = self.vae.encode(x)[0]
        mask = random_mask(tuple(z.shape), ratio, z.device, generator)
        return self.vae.mean(self.vae.decode(torch.where(mask, self(z, mask), z)))
