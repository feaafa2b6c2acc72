"""DDPM family (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"): the simple loss
``L_simple = E_{t, x0, eps} ||target - net(x_t, t)||^2`` (Eq. 14) with the target of the configured
prediction type, EMA weights for sampling, and optional class conditioning with classifier-free
guidance (condition dropout during training; Ho & Salimans 2022, Alg. 1).

Images use the small UNet of ``lightning_vi.nn.unet`` (``architecture: unet``), vectors (2D toys) or
tiny images an MLP (``architecture: mlp``). Samples come from DDPM ancestral sampling or DDIM.
"""

from __future__ import annotations

import copy
from typing import Any, Union

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.ddim_sampler import SPACINGS, ddim_sample
from lightning_vi.families.diffusion.ddpm_sampler import ddpm_sample
from lightning_vi.families.diffusion.guidance import drop_condition, guided
from lightning_vi.families.diffusion.schedules import NoiseSchedule
from lightning_vi.nn.unet import UNet, MLPDenoiser
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES


def build_denoiser(architecture: str, data_shape: tuple[int, ...], hidden: int, depth: int, channels: list[int],
                   num_classes: int, cond_channels: int = 0, time_scale: float = 1.0) -> nn.Module:
    check_choice("architecture", architecture, ("mlp", "unet"))
    if architecture == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"architecture='unet' needs input_shape [C, H, W], got {list(data_shape)}")
        return UNet(data_shape, channels, num_classes, cond_channels * data_shape[0], time_scale)
    return MLPDenoiser(data_shape, hidden, depth, num_classes, cond_channels, time_scale)


@FAMILIES.register("ddpm")
class DDPM(VIModule):
    """Denoising diffusion model with EMA and classifier-free guidance.

    Args:
        input_shape: shape of one example (``[2]`` for toys, ``[1, 8, 8]`` for digits).
        architecture: ``mlp`` or ``unet``. hidden, depth: MLP size. channels: UNet widths per level.
        num_classes: 0 = unconditional; K > 0 = class-conditional on ``batch["y"]`` (null token K).
        p_uncond: probability of dropping the label in training (classifier-free guidance).
        num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type: see ``schedules``.
        ema_decay: decay of the EMA copy used for sampling (0 = no EMA).
        sampler: ``ddpm`` or ``ddim``; sample_steps: reverse steps; eta, timestep_spacing: DDIM.
        guidance_scale: classifier-free guidance weight at sampling (1 = plain conditional).
        data_scale, data_shift: the model works on ``(x - shift) / scale`` (e.g. 0.5, 0.5 maps
            [0, 1] images to [-1, 1]); samples are mapped back.
    """

    cond_channels = 0

    def __init__(
        self,
        input_shape: list[int] = (2,),
        architecture: str = "mlp",
        hidden: int = 128,
        depth: int = 3,
        channels: list[int] = (32, 64),
        num_classes: int = 0,
        p_uncond: float = 0.1,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        ema_decay: float = 0.999,
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        timestep_spacing: str = "trailing",
        guidance_scale: float = 1.0,
        data_scale: float = 1.0,
        data_shift: float = 0.0,
        plugins: list[Union[Plugin, str, dict]] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr: float = 1e-3,
        check_finite: bool = True,
    ) -> None:
        super().__init__(plugins=plugins, optimizer=optimizer, lr_scheduler=lr_scheduler, lr=lr, check_finite=check_finite)
        check_range("num_classes", num_classes, 0)
        check_range("ema_decay", ema_decay, 0.0, 1.0, high_open=True)
        check_choice("sampler", sampler, ("ddpm", "ddim"))
        check_choice("timestep_spacing", timestep_spacing, SPACINGS)
        check_range("data_scale", data_scale, 0.0, low_open=True)
        self.save_hyperparameters()
        self.schedule = NoiseSchedule(num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.data_shape = self.model_shape()
        self.num_classes = num_classes
        self.net = build_denoiser(architecture, self.data_shape, hidden, depth, list(channels), num_classes, self.cond_channels)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False) if ema_decay > 0 else None
        self.term_weights = {"mse": 1.0}

    # -- hooks for subclasses ---------------------------------------------------------------------
    def model_shape(self) -> tuple[int, ...]:
        """Shape the diffusion runs on (latent diffusion overrides)."""
        return tuple(int(s) for s in self.hparams.input_shape)

    def to_model_space(self, x: Tensor) -> Tensor:
        return (x - self.hparams.data_shift) / self.hparams.data_scale

    def from_model_space(self, z: Tensor) -> Tensor:
        return z * self.hparams.data_scale + self.hparams.data_shift

    # -- network ---------------------------------------------------------------------------------
    def network(self, use_ema: bool | None = None) -> nn.Module:
        """The EMA copy in eval mode (if any) and the trained net in training."""
        use_ema = (not self.training) if use_ema is None else use_ema
        return self.ema_net if (use_ema and self.ema_net is not None) else self.net

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        return self.network()(x_t, t, y, cond)

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.ema_net is None:
            return
        d = self.hparams.ema_decay
        for pe, p in zip(self.ema_net.parameters(), self.net.parameters()):
            pe.lerp_(p.detach(), 1 - d)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_ema()
        super().on_train_batch_end(outputs, batch, batch_idx)

    # -- training --------------------------------------------------------------------------------
    def diffusion_loss(self, x0: Tensor, y: Tensor | None = None, cond: Tensor | None = None,
                       shift: Tensor | None = None) -> Tensor:
        """``L_simple`` on model-space data ``x0``. With ``shift`` the process runs on ``x0 - shift``
        and the network sees ``x_t + shift`` (DiffuseVAE formulation 2)."""
        t = self.schedule.sample_timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        if shift is not None:
            x0 = x0 - shift
        x_t = self.schedule.add_noise(x0, noise, t)
        if shift is not None:
            x_t = x_t + shift
        if y is not None and self.num_classes > 0:
            y = drop_condition(y, self.hparams.p_uncond, self.num_classes)
        out = self.net(x_t, t, y if self.num_classes > 0 else None, cond)
        return F.mse_loss(out, self.schedule.target(x0, noise, t))

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x0 = self.to_model_space(batch["x"])
        return {"mse": self.diffusion_loss(x0, batch.get("y"))}

    # -- sampling --------------------------------------------------------------------------------
    def model_fn(self, y: Tensor | None, guidance_scale: float, cond: Tensor | None = None, use_ema: bool | None = None):
        net = self.network(use_ema)
        if self.num_classes == 0 or y is None:
            return lambda x, t: net(x, t, None, cond)
        cond2 = None if cond is None else torch.cat([cond, cond])
        return guided(lambda x, t, yy: net(x, t, yy, cond if x.shape[0] == y.shape[0] else cond2), y,
                      self.num_classes, guidance_scale)

    def run_sampler(self, fn, x_T: Tensor, sampler: str | None, steps: int | None, generator: torch.Generator | None,
                    eta: float | None = None) -> Tensor:
        sampler = sampler or self.hparams.sampler
        check_choice("sampler", sampler, ("ddpm", "ddim"))
        steps = steps or self.hparams.sample_steps
        if sampler == "ddpm":
            return ddpm_sample(fn, self.schedule, x_T, steps, generator)
        return ddim_sample(fn, self.schedule, x_T, steps, self.hparams.eta if eta is None else eta,
                           self.hparams.timestep_spacing, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
               guidance_scale: float | None = None, sampler: str | None = None, steps: int | None = None,
               eta: float | None = None, use_ema: bool | None = True) -> Tensor:
        """``n`` samples in data space. ``y``: labels ``[n]`` (class-conditional models; default
        cycles through the classes). ``sampler``/``steps``/``eta`` override the configured ones."""
        if self.num_classes > 0 and y is None:
            y = torch.arange(n, device=self.device) % self.num_classes
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        x_T = torch.randn((n, *self.data_shape), generator=generator).to(self.device)
        fn = self.model_fn(y, scale, use_ema=use_ema)
        return self.from_model_space(self.run_sampler(fn, x_T, sampler, steps, generator, eta))
