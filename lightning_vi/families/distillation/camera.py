"""Score distillation into one smooth *object* seen from a *continuous* camera (ESD's text-to-3D setting):
family ``camera_score_distillation`` (SDS, view-conditioned VSD and ESD).

The free-particle family (:mod:`particles`) gives every particle its own parameters. In text-to-3D the
parameters are one object ``theta`` (a NeRF) and the samples are its renders ``x = g_theta(c)`` at camera
angles ``c``. Here the object is a small MLP ``g_theta: (cos kc, sin kc)_{k<=F} -> R^d``, ``c ~ U[0, 2 pi)``.
Each step draws ``B`` cameras, renders ``x = g_theta(c)``, noises ``x_t = sqrt(abar_t) x + sqrt(1 - abar_t)
eps`` and back-propagates through the render (DreamFusion Eq. 3's Jacobian ``dx / dtheta``)

    grad_theta = E_c,t,eps[ w(t) (eps_teacher(x_t, t) - eps_fake(x_t, t, c)) dx / dtheta ]

- ``sds`` (Poole et al. 2022): ``eps_fake = eps``.
- ``esd`` (Wang et al. 2024, "Taming Mode Collapse in Score Distillation for Text-to-3D Generation", the
  classifier-free-guidance form of its gradient): ``eps_fake = eps_phi(x_t, t, none) + lambda
  (eps_phi(x_t, t, c) - eps_phi(x_t, t, none))``, with ``eps_phi`` conditioned on the continuous camera
  embedding and trained by denoising score matching on the (detached) renders, the camera dropped to
  "none" with probability ``p_uncond``. ``lambda = 1`` is view-conditioned VSD (ProlificDreamer with the
  camera as condition), ``lambda = 0`` maximises the entropy of the marginal over views.

ESD's Janus argument: a deterministic render makes ``q(x | c)`` a point mass at ``g_theta(c)``, whose exact
noised score gives ``eps_phi(x_t, t, c) = eps``, so view-conditioned VSD tends to SDS and every view seeks a
mode on its own; the unconditional branch learns the score of the marginal over views, so ``lambda < 1``
keeps the renders spread over the teacher's modes. Measured on the ring (docs/distillation.md), SDS does
send every view to one mode, but a smooth camera-conditioned MLP fake score does not learn the point mass:
``lambda = 1`` scatters rather than collapses.

``w(t) = 1 - abar_t`` (``weighting: sds``) or 1. Object and fake score use Adam (``object_lr``, ``lr``),
stepped together; ``phi_warmup`` steps train only the fake score. Validation renders ``eval_views``
cameras on a uniform grid and logs ``val/modes_covered``, ``val/on_mode``, ``val/std_ratio`` (as
:func:`mode_stats`), ``val/entropy`` (k-NN) and ``val/log_prob`` when the teacher is a Gaussian mixture.
"""

from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.producer import FrozenProducers
from lightning_vi.families.distillation.particles import _Joint, draw_noise_level, fit_particles, noise, sample_metrics
from lightning_vi.families.distillation.teachers import guided_eps, resolve_teacher
from lightning_vi.nn.mlp import MLP
from lightning_vi.nn.unet import timestep_embedding
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES

METHODS = ("sds", "esd")
WEIGHTINGS = ("sds", "uniform")


def camera_features(c: Tensor, n_freq: int) -> Tensor:
    """Fourier embedding of camera angles ``c`` ``[B]``: ``(cos kc, sin kc)`` for ``k = 1..n_freq``, ``[B, 2F]``."""
    k = torch.arange(1, n_freq + 1, device=c.device, dtype=c.dtype)
    a = c[:, None] * k
    return torch.cat([a.cos(), a.sin()], 1)


class CameraObject(nn.Module):
    """The object ``g_theta(c)``: an MLP from the camera's Fourier features to one render in ``R^d``."""

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], n_freq: int) -> None:
        super().__init__()
        self.data_shape, self.n_freq = tuple(data_shape), n_freq
        self.mlp = MLP(2 * n_freq, list(hidden), math.prod(self.data_shape), act="silu")

    def forward(self, c: Tensor) -> Tensor:
        return self.mlp(camera_features(c, self.n_freq)).view(-1, *self.data_shape)


class CameraScoreMLP(nn.Module):
    """``eps_phi(x_t, t, c)`` on ``[x_t, sinusoidal(t), features(c) or 0, is_null]``; ``c = None`` (or
    ``null`` True) is the unconditional branch of classifier-free guidance."""

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], n_freq: int, emb_dim: int = 32) -> None:
        super().__init__()
        self.data_shape, self.n_freq, self.emb_dim = tuple(data_shape), n_freq, emb_dim
        d = math.prod(self.data_shape)
        self.mlp = MLP(d + emb_dim + 2 * n_freq + 1, list(hidden), d, act="silu")

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None, null: Tensor | None = None) -> Tensor:
        B = x.shape[0]
        if c is None:
            feats, null = x.new_zeros(B, 2 * self.n_freq), torch.ones(B, dtype=torch.bool, device=x.device)
        else:
            null = torch.zeros(B, dtype=torch.bool, device=x.device) if null is None else null
            feats = camera_features(c, self.n_freq) * (~null)[:, None]
        h = [x.flatten(1), timestep_embedding(t.float(), self.emb_dim), feats, null[:, None].to(x.dtype)]
        return self.mlp(torch.cat(h, 1)).view(x.shape)


@FAMILIES.register("camera_score_distillation")
class CameraScoreDistillation(FrozenProducers, VIModule):
    """One object rendered from continuous cameras, distilled from a frozen teacher by SDS or ESD
    (see the module docstring; ``esd_lambda = 1`` is view-conditioned VSD).

    Args:
        method: ``sds`` or ``esd``.
        teacher, teacher_args, teacher_config: the frozen teacher (see :func:`resolve_teacher`; ``ring``
            is the 8-Gaussian ring); the "text prompt" is unconditional.
        n_freq: Fourier frequencies of the camera embedding (object and fake score).
        object_hidden: widths of the object MLP. object_lr: its Adam learning rate.
        batch_views: cameras rendered per step.
        t_min, t_max: ``t ~ U[t_min T, t_max T)`` for the object's update. weighting: ``sds`` or ``uniform``.
        hidden: widths of the fake score. lr: its Adam learning rate (``optimizer`` replaces that Adam).
        phi_warmup: steps that train only the fake score. esd_lambda: ESD's ``lambda`` in [0, 1].
        p_uncond: probability of training ``eps_phi`` with the camera dropped (in (0, 1); 0 is allowed with
            ``esd_lambda = 1``, plain view-conditioned VSD, whose fake score has no null branch).
        eval_views: cameras on the uniform validation grid.
        cover_threshold, on_mode_radius: of the validation metrics (:func:`mode_stats`).
        seed: of the object's initialisation and camera draws' generator.
        plugins, **kwargs: the shared ``VIModule`` arguments.
    """

    producers = ("teacher",)
    hparams_from_checkpoint = ("teacher_config",)

    def __init__(
        self,
        method: str = "esd",
        teacher: str = "ring",
        teacher_args: dict | None = None,
        teacher_config: dict | None = None,
        n_freq: int = 2,
        object_hidden: list[int] = (64, 64),
        object_lr: float = 3e-3,
        batch_views: int = 128,
        t_min: float = 0.02,
        t_max: float = 0.5,
        weighting: str = "sds",
        hidden: list[int] = (64, 64, 64),
        phi_warmup: int = 100,
        esd_lambda: float = 0.0,
        p_uncond: float = 0.5,
        eval_views: int = 512,
        cover_threshold: float = 0.05,
        on_mode_radius: float = 4.0,
        seed: int = 0,
        lr: float = 1e-3,
        plugins: list[Union[Plugin, str, dict]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(plugins=plugins, lr=lr, **kwargs)
        check_choice("method", method, METHODS)
        check_choice("weighting", weighting, WEIGHTINGS)
        check_range("n_freq", n_freq, 1)
        check_range("object_lr", object_lr, 0.0, low_open=True)
        check_range("batch_views", batch_views, 1)
        check_range("t_min", t_min, 0.0, 1.0)
        check_range("t_max", t_max, t_min, 1.0, low_open=True)
        check_range("phi_warmup", phi_warmup, 0)
        check_range("esd_lambda", esd_lambda, 0.0, 1.0)
        check_range("p_uncond", p_uncond, 0.0, 1.0)
        check_range("eval_views", eval_views, 4)
        if method == "esd" and (p_uncond == 1.0 or (p_uncond == 0.0 and esd_lambda != 1.0)):
            raise ValueError(f"p_uncond={p_uncond!r} is out of range for method='esd' with esd_lambda={esd_lambda!r}; "
                             "allowed: (0, 1), so that eps_phi learns both the view-conditional and the "
                             "unconditional score (p_uncond=0 only with esd_lambda=1: plain view-conditioned VSD)")
        self.save_hyperparameters()
        self.teacher, spec = resolve_teacher(teacher, teacher_args, teacher_config, consumer="camera_score_distillation")
        self.hparams["teacher_config"] = spec
        self.data_shape = tuple(self.teacher.data_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.object = CameraObject(self.data_shape, list(object_hidden), n_freq)
        self.method = method
        self.phi = CameraScoreMLP(self.data_shape, list(hidden), n_freq) if method == "esd" else None
        self.term_weights = {"distill": 1.0} | ({"dsm": 1.0} if method == "esd" else {})
        self.plain_steps = 0  # steps of fit_camera (outside a Trainer, where global_step stays 0)

    # -- pieces -----------------------------------------------------------------------------------
    def cameras(self, n: int, device=None) -> Tensor:
        return 2 * math.pi * torch.rand(n, device=device)

    def grid(self, n: int | None = None) -> Tensor:
        """``n`` (default ``eval_views``) cameras evenly spaced on ``[0, 2 pi)``."""
        n = self.hparams.eval_views if n is None else n
        return 2 * math.pi * torch.arange(n, device=self.device) / n

    def weight(self, abar: Tensor) -> Tensor:
        return 1 - abar if self.hparams.weighting == "sds" else torch.ones_like(abar)

    def fake_eps(self, x_t: Tensor, t: Tensor, c: Tensor, eps: Tensor) -> Tensor:
        """``eps`` (SDS) or ESD's ``eps_phi(none) + lambda (eps_phi(c) - eps_phi(none))``."""
        if self.method == "sds":
            return eps
        e_c = self.phi(x_t, t, c)
        e_u = self.phi(x_t, t, None)
        return e_u + self.hparams.esd_lambda * (e_c - e_u)

    def distillation_grad(self, x: Tensor, c: Tensor) -> Tensor:
        """``w(t) (eps_teacher(x_t, t) - eps_fake)`` at renders ``x`` of cameras ``c`` (no graph)."""
        h = self.hparams
        t = draw_noise_level(x.shape[0], h.t_min, h.t_max, self.teacher.num_timesteps, x.device)
        x_t, eps, a = noise(self.teacher, x, t)
        with torch.no_grad():
            return self.weight(a) * (guided_eps(self.teacher, x_t, t, None, 1.0) - self.fake_eps(x_t, t, c, eps))

    def dsm_loss(self, x: Tensor, c: Tensor) -> Tensor:
        """Denoising score matching of ``eps_phi`` on the detached renders, ``t ~ U[0, T)``, the camera
        dropped to "none" with probability ``p_uncond`` (classifier-free guidance training)."""
        t = torch.randint(0, self.teacher.num_timesteps, (x.shape[0],), device=x.device)
        x_t, eps, _ = noise(self.teacher, x, t)
        null = torch.rand(x.shape[0], device=x.device) < self.hparams.p_uncond
        return ((self.phi(x_t, t, c, null) - eps) ** 2).flatten(1).sum(-1).mean()

    # -- family contract --------------------------------------------------------------------------
    def objective(self, batch: Any) -> dict[str, Tensor]:
        c = self.cameras(self.hparams.batch_views, self.device)
        x = self.object(c)
        step = self.global_step if self._trainer is not None else self.plain_steps
        active = float(step >= self.hparams.phi_warmup) if self.method == "esd" else 1.0
        g = self.distillation_grad(x.detach(), c) * active
        # surrogate whose gradient in each render is its own g, back-propagated through g_theta
        # (x.backward(g)); averaged over the views so that the object's lr does not scale with B
        out: dict[str, Tensor] = {"distill": (x * g).flatten(1).sum(-1).mean()}
        if self.phi is not None:
            out["dsm"] = self.dsm_loss(x.detach(), c)
        if not self.training:
            out.update(self.render_metrics())
        return out

    @torch.no_grad()
    def render_metrics(self) -> dict[str, Tensor]:
        out = sample_metrics(self.render(), self.teacher, self.hparams.cover_threshold, self.hparams.on_mode_radius)
        return {k: v.to(self.device) for k, v in out.items()}

    def configure_optimizers(self) -> Any:
        """Adam on the object (``object_lr``) and, for ESD, the configured optimizer of the fake score
        (default Adam(lr)), stepped together."""
        obj_opt = torch.optim.Adam(self.object.parameters(), lr=self.hparams.object_lr)
        if self.phi is None:
            return obj_opt
        params = list(self.phi.parameters())
        phi_opt = torch.optim.Adam(params, lr=self._lr) if self._optimizer_factory is None else self._optimizer_factory(params)
        return _Joint([obj_opt, phi_opt])

    @torch.no_grad()
    def render(self, c: Tensor | None = None) -> Tensor:
        """Renders (model space) at cameras ``c`` (default the ``eval_views`` grid)."""
        return self.object(self.grid() if c is None else c)

    def forward(self, c: Tensor | None = None) -> Tensor:
        return self.sample(c)

    @torch.no_grad()
    def sample(self, c: Tensor | None = None) -> Tensor:
        """Renders in data space at cameras ``c`` (default the validation grid)."""
        return self.teacher.from_model_space(self.render(c))


# the plain loop of the particle family serves the camera object unchanged
fit_camera = fit_particles
