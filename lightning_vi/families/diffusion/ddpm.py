"""DDPM family (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"): the simple loss
``L_simple = E_{t, x0, eps} ||target - net(x_t, t)||^2`` (Eq. 14) with the target of the configured
prediction type, EMA weights for sampling and validation (the ``ema`` plugin), and optional class conditioning with classifier-free
guidance (condition dropout during training; Ho & Salimans 2022, Alg. 1).

Images use the small UNet of ``lightning_vi.nn.unet`` (``architecture: unet``), vectors (2D toys) or
tiny images an MLP (``architecture: mlp``). Samples come from one reverse loop
(:func:`~lightning_vi.families.diffusion.sample_loop.sample_loop`) with a DDPM (ancestral) or DDIM
scheduler.
"""

from __future__ import annotations

import warnings
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.ddim_scheduler import SPACINGS, DDIMScheduler
from lightning_vi.families.diffusion.ddpm_scheduler import DDPMScheduler
from lightning_vi.families.diffusion.guidance import drop_condition, guided
from lightning_vi.families.diffusion.sample_loop import sample_loop
from lightning_vi.families.diffusion.schedules import NoiseSchedule
from lightning_vi.nn.unet import UNet, MLPDenoiser
from lightning_vi.plugins.base import Plugin
from lightning_vi.plugins.ema import EMA
from lightning_vi.registry import FAMILIES

SAMPLERS = ("ddpm", "ddim")


def make_scheduler(sampler: str, schedule: NoiseSchedule, steps: int, eta: float = 0.0,
                   spacing: str = "leading") -> DDPMScheduler | DDIMScheduler:
    """The scheduler named ``ddpm`` (ancestral, leading spacing) or ``ddim`` (``eta``, ``spacing``)."""
    check_choice("sampler", sampler, SAMPLERS)
    if sampler == "ddpm":
        return DDPMScheduler(schedule, steps)
    return DDIMScheduler(schedule, steps, eta, spacing)


def plugins_with_ema(plugins: list | None, ema_decay: float | None, family: str) -> list:
    """``plugins`` plus an :class:`EMA` plugin for the deprecated ``ema_decay`` argument (0 = none)."""
    specs = list(plugins or [])
    if ema_decay is None:
        return specs
    warnings.warn(f"{family}: ema_decay is deprecated and will be removed in the next release; use the ema plugin, "
                  f"e.g. plugins: [{{class_path: ema, init_args: {{decay: {ema_decay}}}}}] (ema_decay=0: leave it out)",
                  DeprecationWarning, stacklevel=3)
    check_range("ema_decay", ema_decay, 0.0, 1.0, high_open=True)
    return specs + [EMA(decay=ema_decay)] if ema_decay > 0 else specs


class EMANetwork:
    """``network()``/``update_ema()`` over the ``ema`` plugin's copy ``ema_net`` of ``net`` (mixin)."""

    ema_net: nn.Module | None

    def network(self, use_ema: bool | None = None) -> nn.Module:
        """The EMA copy in eval mode (if an ``ema`` plugin is attached) and the trained net in training."""
        use_ema = (not self.training) if use_ema is None else use_ema
        return self.ema_net if (use_ema and self.ema_net is not None) else self.net

    def update_ema(self) -> None:
        """One EMA step of every attached ``ema`` plugin (Lightning calls it after each training batch;
        plain-PyTorch loops call this)."""
        for p in self.plugins:
            if isinstance(p, EMA):
                p.update(self)


def build_denoiser(architecture: str, data_shape: tuple[int, ...], hidden: int, depth: int, channels: list[int],
                   num_classes: int, cond_channels: int = 0, time_scale: float = 1.0) -> nn.Module:
    check_choice("architecture", architecture, ("mlp", "unet"))
    if architecture == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"architecture='unet' needs input_shape [C, H, W], got {list(data_shape)}")
        return UNet(data_shape, channels, num_classes, cond_channels * data_shape[0], time_scale)
    return MLPDenoiser(data_shape, hidden, depth, num_classes, cond_channels, time_scale)


@FAMILIES.register("ddpm")
class DDPM(EMANetwork, VIModule):
    """Denoising diffusion model with EMA and classifier-free guidance.

    Args:
        input_shape: shape of one example (``[2]`` for toys, ``[1, 8, 8]`` for digits).
        architecture: ``mlp`` or ``unet``.
        hidden: MLP width.
        depth: MLP depth.
        channels: UNet widths per level.
        num_classes: 0 = unconditional; K > 0 = class-conditional on ``batch["y"]`` (null token K).
        p_uncond: probability of dropping the label in training (classifier-free guidance).
        num_train_timesteps: diffusion steps T (see ``schedules``).
        beta_schedule: noise schedule ``linear``, ``scaled_linear`` or ``squaredcos_cap_v2`` (see ``schedules``).
        beta_start: first noise variance of the schedule.
        beta_end: last noise variance of the schedule.
        prediction_type: what the network predicts, ``epsilon``, ``v`` or ``x0``.
        ema_decay: deprecated; use ``plugins: [{class_path: ema, init_args: {decay: 0.999}}]`` (the EMA
            copy is used for sampling and validation).
        sampler: ``ddpm`` or ``ddim``.
        sample_steps: reverse steps.
        eta: DDIM stochasticity (0 = deterministic).
        timestep_spacing: DDIM timestep spacing, ``leading``, ``trailing`` or ``linspace``.
        guidance_scale: classifier-free guidance weight at sampling (1 = plain conditional).
        data_scale: the model works on ``(x - data_shift) / data_scale`` (0.5 with shift 0.5 maps [0, 1]
            images to [-1, 1]); samples are mapped back.
        data_shift: see ``data_scale``.
        plugins: plugins of ``VIModule`` (an ``ema`` plugin is added when ``ema_decay`` is given).
        **kwargs: the other shared ``VIModule`` arguments (``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
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
        ema_decay: float | None = None,
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        timestep_spacing: str = "trailing",
        guidance_scale: float = 1.0,
        data_scale: float = 1.0,
        data_shift: float = 0.0,
        plugins: list[Union[Plugin, str, dict]] | None = None,
        **kwargs: Any,
    ) -> None:
        specs = plugins_with_ema(plugins, ema_decay, type(self).__name__)
        super().__init__(plugins=specs, **kwargs)
        check_range("num_classes", num_classes, 0)
        check_choice("sampler", sampler, SAMPLERS)
        check_choice("timestep_spacing", timestep_spacing, SPACINGS)
        check_range("data_scale", data_scale, 0.0, low_open=True)
        self.save_hyperparameters()
        self.schedule = NoiseSchedule(num_train_timesteps, beta_schedule, beta_start, beta_end, prediction_type)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.data_shape = self.model_shape()
        self.num_classes = num_classes
        self.net = build_denoiser(architecture, self.data_shape, hidden, depth, list(channels), num_classes, self.cond_channels)
        self.ema_net = None  # set by the ema plugin
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
    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        return self.network()(x_t, t, y, cond)

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
        out = self.network()(x_t, t, y if self.num_classes > 0 else None, cond)  # EMA copy in validation
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

    def scheduler(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None):
        """The configured scheduler; arguments override ``sampler``/``sample_steps``/``eta``."""
        h = self.hparams
        return make_scheduler(sampler or h.sampler, self.schedule, steps or h.sample_steps,
                              h.eta if eta is None else eta, h.timestep_spacing)

    def run_sampler(self, fn, shape: tuple[int, ...], sampler: str | None, steps: int | None,
                    generator: torch.Generator | None, eta: float | None = None) -> Tensor:
        """``x_T ~ N(0, I)`` of ``shape`` (from ``generator``) through the reverse loop with ``fn``."""
        return sample_loop(fn, self.scheduler(sampler, steps, eta), shape, generator, self.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
               guidance_scale: float | None = None, sampler: str | None = None, steps: int | None = None,
               eta: float | None = None, use_ema: bool | None = True) -> Tensor:
        """``n`` samples in data space. ``y``: labels ``[n]`` (class-conditional models; default
        cycles through the classes). ``sampler``/``steps``/``eta`` override the configured ones."""
        if self.num_classes > 0 and y is None:
            y = torch.arange(n, device=self.device) % self.num_classes
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        fn = self.model_fn(y, scale, use_ema=use_ema)
        return self.from_model_space(self.run_sampler(fn, (n, *self.data_shape), sampler, steps, generator, eta))
