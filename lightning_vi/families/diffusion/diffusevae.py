"""DiffuseVAE (Pandey et al. 2022, "DiffuseVAE: Efficient, Controllable and High-Fidelity Generation
from Low-Dimensional Latents"): a DDPM conditioned on the reconstruction ``x_hat`` of a trained VAE.

- Formulation 1 (Sec. 3.2, Eq. 7-8): the forward process is the usual DDPM; the reverse network
  sees ``x_hat`` concatenated to ``x_t``.
- Formulation 2 (Sec. 3.2, Eq. 9-10): the forward process also carries ``x_hat``:
  ``q(x_t | x_0, x_hat) = N(sqrt(abar_t) x_0 + (1 - sqrt(abar_t)) x_hat, (1 - abar_t) I)``, so
  ``x_T ~ N(x_hat, I)``. Equivalently the residual ``x_0 - x_hat`` is diffused and ``x_hat`` added
  back, which is how it is computed here; with ``x_hat = 0`` it is exactly formulation 1.

Guidance: the conditioning signal is zeroed with probability ``p_uncond`` in training, and sampling
combines ``uncond + w (cond - uncond)`` (classifier-free guidance on ``x_hat``). Generation: z ~ N(0, I)
-> ``x_hat = VAE decode(z)`` -> DDPM/DDIM refinement.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.guidance import guided
from lightning_vi.families.diffusion.latent_diffusion import producer_vae
from lightning_vi.families.diffusion.producer import FrozenProducers
from lightning_vi.registry import FAMILIES


@FAMILIES.register("diffusevae")
class DiffuseVAE(FrozenProducers, DDPM):
    """DDPM refining VAE reconstructions (see :class:`DDPM` for the diffusion args).

    Args:
        vae_checkpoint: path of a trained ``vae`` checkpoint, read at the first build (``""`` = no VAE:
            pass ``x_hat`` explicitly to ``objective``/``generate``, e.g. in tests). The VAE is then a
            frozen submodule, saved in this model's checkpoints.
        vae_config: written at the first build (see :class:`LatentDiffusion`); leave it unset.
        formulation: 1 or 2 (see the module docstring). input_shape: image shape.
        p_cond_drop: probability of zeroing ``x_hat`` for the network in training (guidance).
        cond_guidance_scale: guidance weight on ``x_hat`` at sampling (1 = plain conditional).
    """

    cond_channels = 1
    producers = ("vae",)

    def __init__(self, vae_checkpoint: str = "", formulation: int = 1, input_shape: list[int] = (1, 8, 8),
                 p_cond_drop: float = 0.0, cond_guidance_scale: float = 1.0, vae_config: dict | None = None,
                 **kwargs: Any) -> None:
        check_choice("formulation", formulation, (1, 2))
        vae, spec = (producer_vae("diffusevae", vae_checkpoint, vae_config, input_shape, None)
                     if vae_checkpoint or vae_config else (None, None))
        super().__init__(input_shape=input_shape, **kwargs)
        self.save_hyperparameters()
        self.hparams["vae_config"] = spec
        self.vae = vae

    def _require_vae(self):
        if self.vae is None:
            raise RuntimeError("DiffuseVAE was built without vae_checkpoint; pass x_hat explicitly "
                               "(objective: batch['x_hat']; generate(x_hat))")
        return self.vae

    def reconstruction(self, x: Tensor) -> Tensor:
        """``x_hat`` in model space: the VAE's reconstruction of ``x``."""
        with torch.no_grad():
            return self.to_model_space(self._require_vae()(x))

    def _drop(self, cond: Tensor) -> Tensor:
        p = self.hparams.p_cond_drop
        if p <= 0:
            return cond
        keep = (torch.rand(cond.shape[0], device=cond.device) >= p).float().view(-1, *([1] * (cond.ndim - 1)))
        return cond * keep

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0 = self.to_model_space(batch["x"])
        x_hat = batch["x_hat"] if "x_hat" in batch else self.reconstruction(batch["x"])
        shift = x_hat if self.hparams.formulation == 2 else None
        return {"mse": self.diffusion_loss(x0, batch.get("y"), cond=self._drop(x_hat), shift=shift)}

    @torch.no_grad()
    def generate(self, x_hat: Tensor, generator: torch.Generator | None = None, sampler: str | None = None,
                 steps: int | None = None, guidance_scale: float | None = None, use_ema: bool | None = True) -> Tensor:
        """Refine model-space reconstructions ``x_hat``; returns model-space samples."""
        net = self.network(use_ema)
        w = self.hparams.cond_guidance_scale if guidance_scale is None else guidance_scale
        shift = x_hat if self.hparams.formulation == 2 else torch.zeros_like(x_hat)
        fn = guided(lambda x, t, c: net(x, t, None, c), x_hat, torch.zeros_like(x_hat), w)  # guidance on x_hat
        return self.run_sampler(lambda r, t: fn(r + shift, t), tuple(x_hat.shape), sampler, steps, generator) + shift

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, **kw: Any) -> Tensor:
        """z ~ N(0, I) -> VAE decode -> refinement; returns data-space images."""
        x_hat = self.to_model_space(self._require_vae().sample(n, generator=generator).to(self.device))
        return self.from_model_space(self.generate(x_hat, generator, **kw))
