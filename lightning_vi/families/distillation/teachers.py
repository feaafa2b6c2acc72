"""Teachers for score distillation: a frozen noise predictor ``eps(x_t, t, cond)`` under the DDPM
forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho et al. 2020, Eq. 4; the
``alphas_cumprod`` convention of :mod:`lightning_vi.families.diffusion.schedules`).

The interface (stable; the distillation families rely on it) shared by both teachers:

- ``eps(x_t, t, cond=None) -> Tensor``: the teacher's noise prediction, shaped like ``x_t``.
  ``t``: integer timesteps ``[B]`` in ``[0, num_timesteps)``. ``cond``: ``None`` (unconditional)
  or class indices ``[B]`` (long) in ``[0, num_classes]``, where ``num_classes`` is the null token
  ("no condition") for that row, as in classifier-free guidance (Ho & Salimans 2022, Alg. 1).
  Differentiable in ``x_t``; the teacher's own parameters are frozen.
- ``score(x_t, t, cond=None) = -eps / sqrt(1 - abar_t)`` (Tweedie / Vincent 2011).
- ``alphas_cumprod`` (``[T]`` float buffer), ``num_timesteps`` (T), ``data_shape`` (one example),
  ``num_classes`` (0 = unconditional only).
- ``to_model_space(x)`` / ``from_model_space(z)``: the teacher's diffusion runs on model space (a
  DDPM's ``(x - data_shift) / data_scale``; identity for the analytic mixture). Particles and
  students live in model space.
- ``sample(n, generator=None, cond=None)``: reference samples in model space (the mixture's exact
  draws; the checkpoint's own sampler).

:func:`guided_eps` is classifier-free guidance on any teacher: ``eps_null + w (eps_c - eps_null)``.

Teachers:

- :class:`GaussianMixtureTeacher`: the exact noised score of a Gaussian mixture
  ``p_0 = sum_k w_k N(mu_k, S_k)``. Under the forward process ``p_t = sum_k w_k N(sqrt(abar) mu_k,
  abar S_k + (1 - abar) I)``, so ``score_t(x) = sum_k r_k(x) Sigma_k^{-1} (sqrt(abar) mu_k - x)`` with
  the posterior responsibilities ``r_k``. A condition ``c`` restricts the mixture to a subset of
  modes (default: mode ``c`` alone). :meth:`GaussianMixtureTeacher.ring` is the 8-Gaussian ring toy.
- :class:`CheckpointTeacher` (:func:`load_teacher`): a trained ``ddpm`` or ``flow_matching``
  checkpoint of this package. A DDPM's output of any prediction type is turned into ``eps`` by its
  schedule. A flow-matching net predicts the velocity ``v = E[x_1 - x_0 | x_s]`` on the straight path
  ``x_s = (1 - s) x_0 + s x_1`` (``x_0`` noise, ``x_1`` data). The DDPM point ``x_t`` is a rescaled
  point of that path: with ``a = sqrt(abar_t)``, ``b = sqrt(1 - abar_t)``, ``s = a / (a + b)`` and
  ``x_s = x_t / (a + b)``. Then ``E[x_0 | x_s] = x_s - s v(x_s, s)``, and that is ``eps``. Its
  ``alphas_cumprod`` is a DDPM schedule of our choice (``schedule``, default linear, T = 1000).

:func:`resolve_teacher` builds a teacher from a family's YAML arguments (``teacher: ring``, a mixture
spec, or a checkpoint path) and returns a spec to store in the family's hyper-parameters, so that
``load_from_checkpoint`` rebuilds the teacher without the teacher's file (as in :mod:`producer`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.families.diffusion.producer import build_producer, freeze, read_producer
from lightning_vi.families.diffusion.schedules import NoiseSchedule

TEACHER_FAMILIES = ("ddpm", "flow_matching")
ANALYTIC = ("ring", "mixture")
MAKE_TEACHER = ("lvi fit --config configs/diffusion/flow_matching_toy.yaml (a flow_matching teacher on the 8-Gaussian ring; "
                "configs/diffusion/ddpm_toy.yaml makes a ddpm one)")


def _schedule(schedule: NoiseSchedule | dict | None) -> NoiseSchedule:
    if schedule is None:
        return NoiseSchedule(1000, "linear")
    if isinstance(schedule, NoiseSchedule):
        return schedule
    if isinstance(schedule, dict) or hasattr(schedule, "items"):
        return NoiseSchedule(**dict(schedule))
    raise TypeError(f"schedule={schedule!r} is not allowed; give a NoiseSchedule, its keyword arguments as a dict, or None")


class Teacher(nn.Module):
    """Shared part of the teachers: schedule lookups, ``score`` from ``eps``, the condition check."""

    num_classes: int = 0
    data_shape: tuple[int, ...]

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.schedule.alphas_cumprod

    @property
    def num_timesteps(self) -> int:
        return int(self.schedule.num_train_timesteps)

    def abar(self, t: Tensor, like: Tensor) -> Tensor:
        """``abar_t`` ``[B, 1, ...]`` broadcastable to ``like``; ``t`` integer ``[B]``."""
        t = torch.as_tensor(t, device=self.alphas_cumprod.device)
        if t.is_floating_point() or t.min() < 0 or t.max() >= self.num_timesteps:
            raise ValueError(f"t must be integer timesteps in [0, {self.num_timesteps}); got dtype {t.dtype}, "
                             f"range [{t.min().item()}, {t.max().item()}]")
        a = self.alphas_cumprod[t.long()].to(like)
        return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim else a

    def check_cond(self, cond: Tensor | None, batch: int) -> Tensor | None:
        if cond is None:
            return None
        cond = torch.as_tensor(cond)
        if self.num_classes == 0:
            raise ValueError("cond was given but this teacher is unconditional (num_classes=0); pass cond=None")
        if cond.is_floating_point() or cond.shape != (batch,) or cond.min() < 0 or cond.max() > self.num_classes:
            raise ValueError(f"cond must be long class indices of shape [{batch}] in [0, {self.num_classes}] "
                             f"({self.num_classes} = no condition); got dtype {cond.dtype}, shape {tuple(cond.shape)}")
        return cond.long()

    def score(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``grad log p_t(x_t | cond) = -eps / sqrt(1 - abar_t)``."""
        return -self.eps(x_t, t, cond) / (1 - self.abar(t, x_t)).sqrt()

    def to_model_space(self, x: Tensor) -> Tensor:
        return x

    def from_model_space(self, z: Tensor) -> Tensor:
        return z

    def train(self, mode: bool = True):  # frozen: always eval
        return super().train(False)


def guided_eps(teacher: Teacher, x_t: Tensor, t: Tensor, cond: Tensor | None, scale: float) -> Tensor:
    """Classifier-free guidance ``eps_null + scale (eps_cond - eps_null)`` (Ho & Salimans 2022, Eq. 6,
    with our ``scale`` = their ``1 + w``); ``cond=None`` or ``scale == 1`` is the plain prediction."""
    check_range("guidance_scale", scale, 0.0)
    if cond is None or scale == 1.0:
        return teacher.eps(x_t, t, cond)
    null = torch.full_like(torch.as_tensor(cond), teacher.num_classes)
    out = teacher.eps(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null]))
    e_c, e_u = out.chunk(2)
    return e_u + scale * (e_c - e_u)


class GaussianMixtureTeacher(Teacher):
    """Exact noised score of ``sum_k w_k N(mu_k, S_k)`` under the DDPM forward process.

    Args:
        means: ``[K, d]`` mode means (``d`` = prod of ``data_shape``).
        stds: isotropic std (a float, or one per mode ``[K]``) or per-dimension stds ``[K, d]``.
        covs: full covariances ``[K, d, d]`` instead of ``stds``.
        weights: ``[K]`` mixture weights (normalised; default uniform).
        classes: the condition ``c`` selects the sub-mixture over ``classes[c]`` (a list of mode
            index lists); default ``[[0], [1], ..., [K-1]]`` (each mode is a class). ``num_classes`` =
            ``len(classes)`` is the null token.
        schedule: a :class:`NoiseSchedule` or its keyword arguments (default linear, T = 1000).
        data_shape: shape of one example (default ``[d]``).
    """

    def __init__(self, means: Sequence[Sequence[float]] | Tensor, stds: float | Sequence | Tensor | None = None,
                 covs: Sequence | Tensor | None = None, weights: Sequence[float] | Tensor | None = None,
                 classes: Sequence[Sequence[int]] | None = None, schedule: NoiseSchedule | dict | None = None,
                 data_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim != 2 or mu.shape[0] < 1:
            raise ValueError(f"means must be [K, d] with K >= 1; got shape {tuple(mu.shape)}")
        K, d = mu.shape
        if (stds is None) == (covs is None):
            raise ValueError("give exactly one of stds (isotropic or per-dimension) and covs (full covariances)")
        if covs is not None:
            S = torch.as_tensor(covs, dtype=torch.float64)
            if S.shape != (K, d, d):
                raise ValueError(f"covs must be [K, d, d] = [{K}, {d}, {d}]; got shape {tuple(S.shape)}")
            S = 0.5 * (S + S.transpose(-1, -2))
        else:
            s = torch.as_tensor(stds, dtype=torch.float64)
            if s.ndim == 0:
                s = s.expand(K, d)
            elif s.shape == (K,):
                s = s[:, None].expand(K, d)
            elif s.shape != (K, d):
                raise ValueError(f"stds must be a float, [K] = [{K}] or [K, d] = [{K}, {d}]; got shape {tuple(s.shape)}")
            S = torch.diag_embed(s ** 2)
        lam, U = torch.linalg.eigh(S)
        if (lam <= 0).any():
            raise ValueError(f"covariances must be positive definite; smallest eigenvalue {lam.min().item():.3g}")
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or (w <= 0).any():
            raise ValueError(f"weights must be [K] = [{K}] positive numbers; got {w.tolist()}")
        classes = [[k] for k in range(K)] if classes is None else [list(map(int, c)) for c in classes]
        mask = torch.zeros(len(classes) + 1, K, dtype=torch.bool)
        for c, modes in enumerate(classes):
            if not modes or any(not 0 <= k < K for k in modes):
                raise ValueError(f"classes[{c}]={modes!r} must be a non-empty list of mode indices in [0, {K})")
            mask[c, modes] = True
        mask[-1] = True  # the null token: the whole mixture
        self.data_shape = tuple(int(v) for v in (data_shape or (d,)))
        if math.prod(self.data_shape) != d:
            raise ValueError(f"data_shape={list(self.data_shape)} has {math.prod(self.data_shape)} entries; means have d={d}")
        self.num_classes, self.num_modes, self.dim = len(classes), K, d
        self.classes = classes
        self.schedule = _schedule(schedule)
        self.register_buffer("means", mu.float())
        self.register_buffer("eigvals", lam.float())
        self.register_buffer("eigvecs", U.float())
        self.register_buffer("log_weights", (w / w.sum()).log().float())
        self.register_buffer("class_mask", mask)

    @classmethod
    def ring(cls, n_modes: int = 8, radius: float = 2.0, std: float = 0.1, schedule: NoiseSchedule | dict | None = None,
             classes: Sequence[Sequence[int]] | None = None) -> "GaussianMixtureTeacher":
        """``n_modes`` equal isotropic Gaussians at angles ``2 pi k / n_modes`` on a circle of ``radius``
        (the 8-Gaussian ring of ``lightning_vi.data.toys``: radius 2, std 0.1)."""
        check_range("n_modes", n_modes, 1)
        check_range("radius", radius, 0.0)
        check_range("std", std, 0.0, low_open=True)
        a = 2 * math.pi * torch.arange(n_modes, dtype=torch.float64) / n_modes
        means = radius * torch.stack([a.cos(), a.sin()], 1)
        return cls(means, stds=std, schedule=schedule, classes=classes)

    @property
    def stds(self) -> Tensor:
        """Per-mode per-dimension marginal stds ``[K, d]`` of the data."""
        cov = self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(-1, -2)
        return cov.diagonal(dim1=-2, dim2=-1).sqrt()

    # -- analytic density -------------------------------------------------------------------------
    def _terms(self, x: Tensor, abar: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(log w_k N_k(x) [B, K], z [B, K, d], lam_t [B, K, d], U [K, d, d])`` at noise level ``abar`` ``[B]``."""
        B = x.shape[0]
        xf = x.reshape(B, -1)
        dt = xf.dtype
        a = abar.reshape(B, 1, 1).to(dt)
        U = self.eigvecs.to(dt)
        lam_t = a * self.eigvals.to(dt)[None] + (1 - a)                           # [B, K, d]
        diff = xf[:, None, :] - a.sqrt() * self.means.to(dt)[None]                 # [B, K, d]
        z = torch.einsum("kde,bkd->bke", U, diff)                                  # U^T (x - m)
        logn = -0.5 * ((z ** 2 / lam_t).sum(-1) + lam_t.log().sum(-1) + self.dim * math.log(2 * math.pi))
        logw = self.log_weights.to(dt)[None].expand(B, -1)
        cond = self.check_cond(cond, B)
        if cond is not None:
            logw = logw.masked_fill(~self.class_mask[cond], float("-inf"))
        return logw + logn, z, lam_t, U

    def log_prob_abar(self, x: Tensor, abar: Tensor, cond: Tensor | None = None) -> Tensor:
        """``log p_t(x | cond)`` ``[B]`` at noise level ``abar`` ``[B]`` (``abar = 1``: the data)."""
        lw, _, _, _ = self._terms(x, abar, cond)
        logw = self.log_weights.to(x.dtype)[None].expand(x.shape[0], -1)
        if cond is not None:  # renormalise the sub-mixture's weights
            logw = logw.masked_fill(~self.class_mask[cond.long()], float("-inf"))
        return lw.logsumexp(-1) - logw.logsumexp(-1)

    def score_abar(self, x: Tensor, abar: Tensor, cond: Tensor | None = None) -> Tensor:
        """``grad_x log p_t(x | cond)`` at noise level ``abar`` ``[B]``: ``-sum_k r_k Sigma_k^{-1} (x - sqrt(abar) mu_k)``."""
        lw, z, lam_t, U = self._terms(x, abar, cond)
        r = lw.softmax(-1)                                                         # responsibilities [B, K]
        prec_diff = torch.einsum("kde,bke->bkd", U, z / lam_t)                     # Sigma^{-1} (x - m)
        return -(r[..., None] * prec_diff).sum(1).reshape(x.shape)

    def eps(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """``-sqrt(1 - abar_t) score_t(x_t)``: the exact posterior-mean noise ``E[eps | x_t]``."""
        a = self.abar(t, x_t)
        return -(1 - a).sqrt() * self.score_abar(x_t, a.reshape(-1), cond)

    def score(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.score_abar(x_t, self.abar(t, x_t).reshape(-1), cond)

    def log_prob(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Data log-density ``log p_0(x | cond)`` ``[B]``."""
        return self.log_prob_abar(x, torch.ones(x.shape[0], device=x.device, dtype=x.dtype), cond)

    def assign_modes(self, x: Tensor) -> Tensor:
        """Most responsible mode of each point under the data mixture ``[B]`` (long)."""
        lw, _, _, _ = self._terms(x, torch.ones(x.shape[0], device=x.device, dtype=x.dtype), None)
        return lw.argmax(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond: Tensor | None = None) -> Tensor:
        """``n`` exact draws ``[n, *data_shape]`` of the (sub-)mixture."""
        dev = self.means.device
        logw = self.log_weights[None].expand(n, -1)
        if cond is not None:
            logw = logw.masked_fill(~self.class_mask[self.check_cond(cond, n).to(dev)], float("-inf"))
        k = torch.multinomial(logw.exp().cpu(), 1, generator=generator).squeeze(1).to(dev)
        e = torch.randn(n, self.dim, generator=generator).to(dev)
        x = self.means[k] + torch.einsum("nde,ne->nd", self.eigvecs[k], self.eigvals[k].sqrt() * e)
        return x.reshape(n, *self.data_shape)

    def extra_repr(self) -> str:
        return f"K={self.num_modes}, d={self.dim}, num_classes={self.num_classes}, T={self.num_timesteps}"


class CheckpointTeacher(Teacher):
    """A frozen ``ddpm`` or ``flow_matching`` model as a teacher (see the module docstring for the
    flow-matching velocity-to-eps conversion). The DDPM's EMA network is used when it has one.

    Args:
        model: the trained model (``DDPM`` or ``FlowMatching`` in noise mode).
        family: ``ddpm`` or ``flow_matching``.
        schedule: the DDPM schedule that defines ``x_t`` for a flow-matching teacher (ignored for a
            DDPM, whose own schedule is used).
    """

    def __init__(self, model: nn.Module, family: str, schedule: NoiseSchedule | dict | None = None) -> None:
        super().__init__()
        if family not in TEACHER_FAMILIES:
            raise ValueError(f"a teacher must be one of the families {list(TEACHER_FAMILIES)}; got {family!r}")
        if family == "flow_matching" and model.hparams.mode != "noise":
            raise ValueError(f"a flow_matching teacher must have mode='noise' (noise-to-data); got mode={model.hparams.mode!r}")
        self.family = family
        self.model = freeze(model)
        self.schedule = model.schedule if family == "ddpm" else _schedule(schedule)
        self.num_classes = int(model.num_classes)
        self.data_shape = tuple(model.data_shape) if family == "ddpm" else tuple(model.input_shape)

    def _net(self) -> nn.Module:
        return self.model.network(use_ema=True)

    def _labels(self, cond: Tensor | None, B: int, device) -> Tensor | None:
        cond = self.check_cond(cond, B)
        if self.num_classes == 0:
            return None
        return torch.full((B,), self.num_classes, device=device, dtype=torch.long) if cond is None else cond.to(device)

    def eps(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        y = self._labels(cond, x_t.shape[0], x_t.device)
        if self.family == "ddpm":
            self.abar(t, x_t)  # range check
            out = self._net()(x_t, t.long(), y, None)
            return self.model.schedule.split(out, x_t, t)[1]
        a = self.abar(t, x_t)
        sa, sb = a.sqrt(), (1 - a).sqrt()
        s = sa / (sa + sb)
        x_s = x_t / (sa + sb)
        v = self._net()(x_s, s.reshape(-1), y)
        return x_s - s * v

    def to_model_space(self, x: Tensor) -> Tensor:
        return self.model.to_model_space(x) if self.family == "ddpm" else x

    def from_model_space(self, z: Tensor) -> Tensor:
        return self.model.from_model_space(z) if self.family == "ddpm" else z

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, cond: Tensor | None = None) -> Tensor:
        """The checkpoint's own sampler, returned in model space."""
        y = None if cond is None else self.check_cond(cond, n)
        if self.family == "ddpm":
            return self.to_model_space(self.model.sample(n, generator=generator, y=y))
        return self.model.sample(n, generator=generator, y=y)


def load_teacher(path: str, consumer: str = "distillation", schedule: NoiseSchedule | dict | None = None
                 ) -> tuple[CheckpointTeacher, dict[str, Any]]:
    """``(teacher, spec)`` from a ``ddpm`` or ``flow_matching`` checkpoint; another family raises an
    error naming the family found and the allowed ones. ``spec`` rebuilds it (:func:`teacher_from_spec`)."""
    model, spec = read_producer(path, arg="teacher", consumer=consumer, families=TEACHER_FAMILIES, make=MAKE_TEACHER)
    return CheckpointTeacher(model, spec["family"], schedule), spec


def teacher_from_spec(spec: dict[str, Any], schedule: NoiseSchedule | dict | None = None) -> CheckpointTeacher:
    """The checkpoint teacher's architecture from a stored spec (weights come from the consumer's state_dict)."""
    return CheckpointTeacher(build_producer(spec), spec.get("family", ""), schedule)


def resolve_teacher(teacher: str, teacher_args: dict | None = None, teacher_config: dict | None = None,
                    consumer: str = "distillation") -> tuple[Teacher, dict[str, Any] | None]:
    """A family's teacher from its YAML arguments: ``(teacher module, spec to store or None)``.

    ``teacher``: ``ring`` (:meth:`GaussianMixtureTeacher.ring` with ``teacher_args``), ``mixture``
    (:class:`GaussianMixtureTeacher` with ``teacher_args``: means, stds, ...), or the path of a ``ddpm``
    / ``flow_matching`` checkpoint (``teacher_args``: ``{"schedule": {...}}`` for flow matching).
    ``teacher_config``: the spec written at the first build; with it the checkpoint is not read."""
    args = dict(teacher_args or {})
    if teacher == "ring":
        return GaussianMixtureTeacher.ring(**args), None
    if teacher == "mixture":
        return GaussianMixtureTeacher(**args), None
    if teacher_config:
        return teacher_from_spec(dict(teacher_config), args.get("schedule")), dict(teacher_config)
    if not isinstance(teacher, str) or not (teacher.endswith(".ckpt") or Path(teacher).is_file()):
        raise ValueError(f"teacher={teacher!r} is not allowed; choose one of {list(ANALYTIC)} or the path of a "
                         f"{' or '.join(TEACHER_FAMILIES)} checkpoint (make one with: {MAKE_TEACHER})")
    return load_teacher(teacher, consumer, args.get("schedule"))
