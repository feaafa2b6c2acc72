"""Flow matching (Lipman et al. 2023, "Flow Matching for Generative Modeling"; rectified flow of
Liu et al. 2023) and CrossFlow (Liu et al. 2024, "Flowing from Words to Pixels").

Straight conditional path ``x_t = (1 - t) x0 + t x1`` with target velocity ``u_t = x1 - x0``
(Lipman et al. Eq. 22-23 with sigma_min = 0); loss ``E ||v(x_t, t) - (x1 - x0)||^2``.

- ``mode: noise``: ``x0 ~ N(0, I)``, ``x1`` = data (``batch["x"]``); optional class labels.
- ``mode: cross``: ``x0`` comes from the source modality ``batch[source_key]`` (labels are one-hot
  encoded). With ``source_encoder: variational`` a Gaussian encoder ``q(x0 | source)`` with a KL to
  N(0, I) weighted by ``kl_weight`` (CrossFlow's Variational Encoder, Sec. 3.1) makes x0 a
  distribution; ``identity`` uses the source as x0 (shapes must match). The CFG indicator
  (CrossFlow Sec. 3.2) is a binary input: with probability ``p_uncond`` it is 0 and the target is a
  random other data point (unconditional flow); sampling combines ``v_0 + w (v_1 - v_0)``.

ODE sampling from t = 0 to 1 with ``euler`` or ``midpoint`` steps.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import gaussian_kl_per_dim
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.ddpm import EMANetwork, build_denoiser, plugins_with_ema
from lightning_vi.families.diffusion.guidance import guided
from lightning_vi.nn import MLP
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES

SOLVERS = ("euler", "midpoint")


def straight_path(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_t, u_t)`` of the straight conditional path: ``x_t = (1-t) x0 + t x1``, ``u_t = x1 - x0``."""
    tt = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - tt) * x0 + tt * x1, x1 - x0


@torch.no_grad()
def integrate(velocity, x0: Tensor, steps: int, solver: str = "euler") -> Tensor:
    """Integrate ``dx/dt = velocity(x, t[B])`` from t=0 to 1 with ``steps`` Euler or midpoint steps."""
    check_choice("solver", solver, SOLVERS)
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps={steps!r} is out of range; allowed: integers >= 1")
    x, h = x0, 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * h, device=x.device)
        if solver == "euler":
            x = x + h * velocity(x, t)
        else:
            x_mid = x + 0.5 * h * velocity(x, t)
            x = x + h * velocity(x_mid, t + 0.5 * h)
    return x


@FAMILIES.register("flow_matching")
class FlowMatching(EMANetwork, VIModule):
    """Conditional flow matching, noise-to-data or source-to-target (CrossFlow).

    Args:
        input_shape: shape of one target example.
        architecture: velocity net, ``mlp`` or ``unet``.
        hidden: MLP width of the velocity net.
        depth: MLP depth of the velocity net.
        channels: UNet widths per level of the velocity net.
        mode: ``noise`` or ``cross``.
        source_key: batch key of the source (cross mode).
        source_encoder: ``variational`` or ``identity``.
        source_dim: size of the flattened source (or number of classes when the source is integer labels).
        encoder_hidden: encoder widths.
        kl_weight: weight of the encoder's KL.
        num_classes: class labels for noise mode (0 = none).
        p_uncond: CFG indicator dropout.
        guidance_scale: classifier-free guidance weight at sampling.
        solver: ODE solver of sampling, ``euler`` or ``midpoint``.
        sample_steps: solver steps.
        ema_decay: deprecated; use ``plugins: [{class_path: ema, init_args: {decay: 0.999}}]`` (EMA of
            the velocity net, used for sampling and validation).
        plugins: plugins of ``VIModule`` (an ``ema`` plugin is added when ``ema_decay`` is given).
        **kwargs: the other shared ``VIModule`` arguments (``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_shape: list[int] = (2,),
        architecture: str = "mlp",
        hidden: int = 128,
        depth: int = 3,
        channels: list[int] = (32, 64),
        mode: str = "noise",
        source_key: str = "source",
        source_encoder: str = "variational",
        source_dim: int = 0,
        encoder_hidden: list[int] = (128,),
        kl_weight: float = 1e-3,
        num_classes: int = 0,
        p_uncond: float = 0.1,
        guidance_scale: float = 1.0,
        solver: str = "euler",
        sample_steps: int = 50,
        ema_decay: float | None = None,
        plugins: list[Union[Plugin, str, dict]] | None = None,
        **kwargs: Any,
    ) -> None:
        specs = plugins_with_ema(plugins, ema_decay, type(self).__name__)
        super().__init__(plugins=specs, **kwargs)
        check_choice("mode", mode, ("noise", "cross"))
        check_choice("source_encoder", source_encoder, ("variational", "identity"))
        check_choice("solver", solver, SOLVERS)
        check_range("p_uncond", p_uncond, 0.0, 1.0)
        check_range("sample_steps", sample_steps, 1)
        if mode == "cross" and source_encoder == "variational":
            check_range("source_dim", source_dim, 1)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.d = math.prod(self.input_shape)
        # cross mode: one "class" slot carries the CFG indicator (0 = unconditional, 1 = conditional)
        n_cls = 1 if mode == "cross" else num_classes
        self.num_classes = num_classes if mode == "noise" else 0
        self.net = build_denoiser(architecture, self.input_shape, hidden, depth, list(channels), n_cls, time_scale=1000.0)
        self.ema_net = None  # set by the ema plugin
        self.encoder = (MLP(source_dim, list(encoder_hidden), 2 * self.d)
                        if mode == "cross" and source_encoder == "variational" else None)
        self.term_weights = {"fm": 1.0, "kl": kl_weight}

    # -- pieces ----------------------------------------------------------------------------------
    def source_features(self, source: Tensor) -> Tensor:
        if not source.is_floating_point():
            return F.one_hot(source.long(), self.hparams.source_dim).float()
        return source.flatten(1)

    def encode_source(self, source: Tensor, sample: bool = True) -> tuple[Tensor, Tensor | None]:
        """``(x0, kl_per_example)``: the variational encoder's sample, or the source itself."""
        if self.encoder is None:
            return source.reshape(source.shape[0], *self.input_shape).float(), None
        mu, log_var = self.encoder(self.source_features(source)).chunk(2, -1)
        log_var = log_var.clamp(-12, 8)
        z = mu + torch.randn_like(mu) * (0.5 * log_var).exp() if sample else mu
        return z.view(-1, *self.input_shape), gaussian_kl_per_dim(mu, log_var).sum(-1)

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """Velocity ``v(x, t, c)`` (``c``: class label, or the CFG indicator in cross mode)."""
        return self.network()(x, t, c)

    # -- training --------------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x1 = batch["x"]
        B = x1.shape[0]
        t = torch.rand(B, device=x1.device)
        out: dict[str, Tensor] = {}
        c = None
        if self.hparams.mode == "noise":
            x0 = torch.randn_like(x1)
            if self.num_classes > 0:
                y = batch["y"]
                drop = torch.rand(B, device=x1.device) < self.hparams.p_uncond
                c = torch.where(drop, torch.full_like(y, self.num_classes), y)
        else:
            x0, kl = self.encode_source(batch[self.hparams.source_key])
            if kl is not None:
                out["kl"] = kl.mean()
            uncond = torch.rand(B, device=x1.device) < self.hparams.p_uncond
            c = (~uncond).long()
            if self.hparams.p_uncond > 0:  # indicator 0: flow to a random target, not the paired one
                x1 = torch.where(uncond.view(-1, *([1] * (x1.ndim - 1))), x1[torch.randperm(B, device=x1.device)], x1)
        x_t, u = straight_path(x0, x1, t)
        out["fm"] = F.mse_loss(self.network()(x_t, t, c), u)  # EMA copy in validation
        return out

    # -- sampling --------------------------------------------------------------------------------
    def velocity_fn(self, c: Tensor | None, null: int | None, scale: float):
        """``(x, t) -> v``, with classifier-free guidance ``v_null + scale (v_c - v_null)`` when ``c`` is given."""
        net = self.network()
        if c is None:
            return lambda x, t: net(x, t, None)
        return guided(net, c, null, scale)

    @torch.no_grad()
    def transport(self, x0: Tensor, c: Tensor | None = None, null: int | None = None, steps: int | None = None,
                  solver: str | None = None, guidance_scale: float | None = None) -> Tensor:
        scale = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        return integrate(self.velocity_fn(c, null, scale), x0, steps or self.hparams.sample_steps,
                         solver or self.hparams.solver)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
               source: Tensor | None = None, steps: int | None = None, solver: str | None = None,
               guidance_scale: float | None = None, source_mean: bool = False) -> Tensor:
        """Noise mode: ``n`` samples (labels ``y`` optional). Cross mode: transport ``source``
        (default: labels ``arange(n) % source_dim``) to the target modality, starting from a draw of
        the variational source encoder (CrossFlow: varied outputs per source), or from its
        mean with ``source_mean=True``."""
        if self.hparams.mode == "noise":
            x0 = torch.randn((n, *self.input_shape), generator=generator).to(self.device)
            if self.num_classes > 0 and y is None:
                y = torch.arange(n, device=self.device) % self.num_classes
            return self.transport(x0, y if self.num_classes > 0 else None, self.num_classes, steps, solver, guidance_scale)
        if source is None:
            source = torch.arange(n, device=self.device) % max(self.hparams.source_dim, 1)
        x0, _ = self.encode_source(source.to(self.device), sample=not source_mean)
        c = torch.ones(x0.shape[0], dtype=torch.long, device=self.device)
        return self.transport(x0, c, 0, steps, solver, guidance_scale)
