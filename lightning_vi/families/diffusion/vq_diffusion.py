"""VQ-Diffusion (Gu et al. 2022, "Vector Quantized Diffusion Model for Text-to-Image Synthesis"): discrete
diffusion over the code indices of a frozen, trained ``vqvae`` with the mask-and-replace transition of
:mod:`mask_replace`, class-conditional with classifier-free guidance.

- **x0 parametrisation** (Sec. 3.3, "Reparameterization trick"): a small transformer (``nn.TransformerEncoder``
  over the tokens, with time and class embeddings) predicts ``p_theta(x0 | x_t, y)`` over the K codes; the
  reverse step is ``p_theta(x_{t-1} | x_t, y) = sum_{x0} q(x_{t-1} | x_t, x0) p_theta(x0 | x_t, y)``.
- **Loss** (Sec. 3.3): ``L = L_vlb + lambda * L_x0``. ``L_vlb = L_T + sum_{t>=1} L_{t-1}`` with
  ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` (``L_0 = -log p_theta(x0 | x_1)``, the same
  KL with ``q(x_0 | x_1, x0) = delta_{x0}``), estimated with one uniform ``t`` per example as ``T * L_{t-1}``;
  ``L_x0 = -log p_theta(x0 | x_t)``. Both are nats per token. The official code weights ``L_x0`` by
  ``5e-4`` with per-token bits; a tiny model on digits learns faster with a larger ``lambda``.
- **Classifier-free guidance** (Tang et al. 2022, "Improved Vector Quantized Diffusion Models", Sec. 3.1):
  labels are dropped to a null class with probability ``p_uncond`` in training; sampling uses
  ``log p(x0 | x_t, y) <- log p(x0 | x_t) + s (log p(x0 | x_t, y) - log p(x0 | x_t))``, renormalised.
- **Sampling** starts from the stationary ``p(x_T)`` (MASK with ``gamma_bar_T``, uniform codes otherwise),
  steps ``T -> 0`` with an optional stride (Sec. 3.3, fast inference), and decodes the codes through the
  VQ-VAE. The VQ-VAE checkpoint is read at the first build only and is then a frozen submodule whose
  spec is stored in ``vqvae_config`` (see :mod:`producer`), so the model's own checkpoint is complete.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.guidance import drop_condition, guided
from lightning_vi.families.diffusion.mask_replace import MaskReplaceSchedule, q_sample, sample_categorical
from lightning_vi.families.diffusion.producer import FrozenProducers, build_producer, read_producer
from lightning_vi.registry import FAMILIES

_TINY = 1e-30  # floor of probabilities inside logs (log = -69; the official code clamps log-probabilities at -70)


def vqvae_make_command(codebook_size: int, input_shape: tuple[int, ...] | list[int]) -> str:
    """``lvi fit`` command writing a ``vqvae`` with this codebook (configs/vae/vqvae.yaml: 64 codes, 8x8)."""
    cmd = "lvi fit --config configs/vae/vqvae.yaml"
    shape = [int(s) for s in input_shape]
    if shape != [1, 8, 8]:
        cmd += f" --model.init_args.input_shape '{shape}' --data.init_args.image_size {shape[-1]}"
    if int(codebook_size) != 64:
        cmd += f" --model.init_args.codebook_size {int(codebook_size)}"
    return cmd


def with_mask(log_p: Tensor) -> Tensor:
    """Probabilities ``[..., K+1]`` from log-probabilities over the K codes (``x0`` is never MASK: exactly 0)."""
    return F.pad(log_p.exp(), (0, 1))


def vlb_terms(schedule: MaskReplaceSchedule, x0: Tensor, x_t: Tensor, t: Tensor, log_p0: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token terms of ``L_vlb`` (nats, ``[B, N]`` each) for codes ``x0``, noisy tokens ``x_t`` at steps ``t``
    ``[B]`` and the network's ``log p_theta(x0 | x_t)`` ``[B, N, K]``:

    - ``L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))``; at ``t = 1`` it is ``-log p_theta(x0 | x_1)``;
    - ``L_T = KL(q(x_T | x0) || p(x_T))`` with the stationary ``p(x_T)`` (no parameters).
    """
    onehot = F.one_hot(x0, schedule.K + 1).to(log_p0.dtype)
    q_post = schedule.posterior(onehot, x_t, t)  # q(x_{t-1} | x_t, x0); delta_{x0} at t = 1
    p_post = schedule.posterior(with_mask(log_p0), x_t, t)  # p_theta(x_{t-1} | x_t)
    kl = (q_post * (q_post.clamp_min(_TINY).log() - p_post.clamp_min(_TINY).log())).sum(-1)
    q_T = schedule.marginal(onehot, torch.full_like(t, schedule.T))
    prior = schedule.prior(x0.shape, log_p0.dtype)
    kl_T = (q_T * (q_T.clamp_min(_TINY).log() - prior.log())).sum(-1)
    return kl, kl_T


class TokenTransformer(nn.Module):
    """``p_theta(x0 | x_t, t, y)`` logits ``[B, N, K]`` from tokens ``x_t`` ``[B, N]`` in ``0..K`` (K = MASK).

    The condition (time embedding + class embedding, class ``num_classes`` = null) is added to every token
    and prepended as an extra token; pre-norm ``nn.TransformerEncoder`` layers; a linear head over the K codes.
    """

    def __init__(self, num_codes: int, num_tokens: int, num_timesteps: int, num_classes: int = 0,
                 d_model: int = 64, depth: int = 2, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.tok = nn.Embedding(num_codes + 1, d_model)
        self.pos = nn.Parameter(torch.randn(1, num_tokens + 1, d_model) * 0.02)
        self.time = nn.Embedding(num_timesteps + 1, d_model)
        self.cls = nn.Embedding(num_classes + 1, d_model) if num_classes > 0 else None
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_codes)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        cond = self.time(t)
        if self.cls is not None and y is not None:
            cond = cond + self.cls(y)
        h = torch.cat([cond.unsqueeze(1), self.tok(x_t) + cond.unsqueeze(1)], 1) + self.pos
        return self.head(self.norm(self.encoder(h)[:, 1:]))


@FAMILIES.register("vq_diffusion")
class VQDiffusion(FrozenProducers, VIModule):
    """Mask-and-replace discrete diffusion over a frozen VQ-VAE's codes.

    Args:
        vqvae_checkpoint: path of a trained ``vqvae`` checkpoint, read at the first build only.
        codebook_size: K, must equal the VQ-VAE's codebook size (checked).
        input_shape: image shape of the VQ-VAE (checked).
        num_classes: 0 = unconditional; > 0 = conditional on ``batch["y"]`` (null class ``num_classes``).
        p_uncond: probability of dropping the label in training (classifier-free guidance).
        num_timesteps: T (paper: 100).
        alpha_bar_end: ``alpha_bar_T`` (paper: 0.000009; ``alpha_bar_1 = 0.99999``).
        gamma_bar_end: ``gamma_bar_T`` (paper: 0.9; ``gamma_bar_1 = 0.000009``).
        aux_weight: lambda of ``L_vlb + lambda * L_x0`` (> 0).
        d_model: transformer width. depth: layers. heads: attention heads. dropout: transformer dropout.
        sample_steps: reverse steps at sampling (T = every step; fewer = strided fast inference).
        guidance_scale: classifier-free guidance scale ``s`` (0 = unconditional, 1 = conditional).
        vqvae_config: written at the first build (the VQ-VAE's family, class path and hyper-parameters);
            leave it unset. With it the VQ-VAE is rebuilt without ``vqvae_checkpoint``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    producers = ("vqvae",)
    hparams_from_checkpoint = ("vqvae_config",)

    def __init__(self, vqvae_checkpoint: str = "", codebook_size: int = 64, input_shape: list[int] = (1, 8, 8),
                 num_classes: int = 10, p_uncond: float = 0.1, num_timesteps: int = 100,
                 alpha_bar_end: float = 0.000009, gamma_bar_end: float = 0.9, aux_weight: float = 1.0,
                 d_model: int = 64, depth: int = 2, heads: int = 4, dropout: float = 0.0,
                 sample_steps: int = 100, guidance_scale: float = 1.0, vqvae_config: dict | None = None,
                 **kwargs: Any) -> None:
        check_range("aux_weight", aux_weight, 0.0, low_open=True)
        check_range("codebook_size", codebook_size, 1)
        check_range("num_classes", num_classes, 0)
        check_range("p_uncond", p_uncond, 0.0, 1.0)
        check_range("sample_steps", sample_steps, 1, num_timesteps)
        check_range("guidance_scale", guidance_scale, 0.0)
        make = vqvae_make_command(codebook_size, input_shape)
        if vqvae_config:
            vqvae, spec = build_producer(vqvae_config), dict(vqvae_config)
        else:
            vqvae, spec = read_producer(vqvae_checkpoint, arg="vqvae_checkpoint", consumer="vq_diffusion",
                                        families=("vqvae",), make=make,
                                        shapes={"input_shape": list(input_shape)})
        if int(vqvae.codebook_size) != int(codebook_size):
            where = f"vqvae_checkpoint={vqvae_checkpoint!r}" if not vqvae_config else "the stored vqvae_config"
            raise ValueError(f"codebook_size={codebook_size} does not match {where}, whose vqvae has "
                             f"codebook_size {vqvae.codebook_size}; set model.init_args.codebook_size to "
                             f"{vqvae.codebook_size}, or make a matching checkpoint with: {make}")
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.hparams["vqvae_config"] = spec
        self.vqvae = vqvae
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_codes, self.num_tokens, self.num_classes = int(codebook_size), int(vqvae.num_latents), num_classes
        self.schedule = MaskReplaceSchedule(self.num_codes, num_timesteps, gamma_bar_end=gamma_bar_end,
                                            alpha_bar_end=alpha_bar_end)
        self.net = TokenTransformer(self.num_codes, self.num_tokens, num_timesteps, num_classes, d_model, depth,
                                    heads, dropout)
        self.term_weights = {"vlb": 1.0, "x0_nll": float(aux_weight)}

    # -- tokens ----------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Code indices ``[B, N]`` of images ``x`` under the frozen VQ-VAE."""
        return self.vqvae.quantize(x)[1]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Images from code indices ``[B, N]`` (the VQ-VAE's decoder mean)."""
        return self.vqvae.mean(self.vqvae.decode(self.vqvae.quantizer.codebook[codes]))

    # -- network ---------------------------------------------------------------------------------
    def log_p0(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """``log p_theta(x0 | x_t, y)`` over the K codes, ``[B, N, K]``."""
        return F.log_softmax(self.net(x_t, t, y if self.num_classes > 0 else None).float(), -1)

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.log_p0(x_t, t, y)

    # -- training --------------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0 = self.encode(batch["x"])
        B, T = x0.shape[0], self.schedule.T
        t = torch.randint(1, T + 1, (B,), device=x0.device)
        x_t = q_sample(self.schedule, x0, t)
        y = batch.get("y")
        if y is not None and self.num_classes > 0:
            y = drop_condition(y, self.hparams.p_uncond, self.num_classes)
        log_p0 = self.log_p0(x_t, t, y)
        kl, kl_T = vlb_terms(self.schedule, x0, x_t, t, log_p0)
        x0_nll = -log_p0.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        return {"vlb": T * kl.mean() + kl_T.mean(), "x0_nll": x0_nll.mean(),
                "acc_x0": (log_p0.argmax(-1) == x0).float().mean()}

    # -- sampling --------------------------------------------------------------------------------
    def timesteps(self, steps: int | None = None) -> list[int]:
        """Reverse schedule ``T = t_0 > t_1 > ... > 0`` with ``steps`` strides (evenly spaced, rounded)."""
        steps = int(steps or self.hparams.sample_steps)
        check_range("steps", steps, 1, self.schedule.T)
        ts = torch.linspace(self.schedule.T, 0, steps + 1).round().long().tolist()
        return list(dict.fromkeys(ts))

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
                     guidance_scale: float | None = None, steps: int | None = None) -> Tensor:
        """``n`` code grids ``[n, N]`` by ancestral sampling ``x_T ~ p(x_T)``, ``x_s ~ p_theta(x_s | x_t)``."""
        was_training = self.training
        self.eval()
        try:
            if self.num_classes > 0 and y is None:
                y = torch.arange(n, device=self.device) % self.num_classes
            scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
            log_p0 = self.log_p0
            if self.num_classes > 0:
                fn = guided(lambda x, t, yy: log_p0(x, t, yy), y.to(self.device), self.num_classes, scale)
            else:
                fn = lambda x, t: log_p0(x, t)  # noqa: E731
            x = sample_categorical(self.schedule.prior((n, self.num_tokens)), generator)
            ts = self.timesteps(steps)
            for t, s in zip(ts[:-1], ts[1:]):
                tt = torch.full((n,), t, device=self.device, dtype=torch.long)
                p0 = with_mask(F.log_softmax(fn(x, tt), -1))  # guided log-probabilities, renormalised
                x = sample_categorical(self.schedule.posterior(p0, x, tt, torch.full_like(tt, s)), generator)
            return x
        finally:
            self.train(was_training)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
               guidance_scale: float | None = None, steps: int | None = None) -> Tensor:
        """``n`` images decoded through the VQ-VAE (labels ``y`` default to cycling through the classes)."""
        return self.decode(self.sample_codes(n, generator, y, guidance_scale, steps))

