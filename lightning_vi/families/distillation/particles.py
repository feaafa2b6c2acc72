"""Score distillation into free particles (the text-to-3D setting, where the optimised "parameters"
are the rendered samples themselves): SDS, VSD and ESD as one family, ``score_distillation``.

Each step draws ``t ~ U[t_min T, t_max T]`` and ``eps ~ N(0, I)``, noises every particle,
``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps``, and gives particle ``x`` the gradient

- ``sds`` (Poole et al. 2022, DreamFusion Eq. 3): ``w(t) (eps_teacher(x_t, t) - eps)``.
- ``vsd`` (Wang et al. 2023, ProlificDreamer Sec. 4, Alg. 1): ``w(t) (eps_teacher(x_t, t) - eps_phi(x_t, t))``,
  with ``eps_phi`` a small score network of the *current* particles, trained alternately by denoising
  score matching (``||eps_phi(x_t, t) - eps||^2`` on the particles, detached; the LoRA loss of Alg. 1).
- ``esd`` (Wang et al. 2024, "Taming Mode Collapse in Score Distillation for Text-to-3D Generation",
  the classifier-free-guidance form of its gradient): the fake score is conditional on the particle's view
  ``c`` and combined as ``eps_phi(x_t, t, none) + lambda (eps_phi(x_t, t, c) - eps_phi(x_t, t, none))``;
  ``eps_phi`` is trained with ``c`` dropped to "none" with probability ``p_uncond``. In text-to-3D, ``c``
  is the camera and one object renders one image per view; here each particle is one view
  (``num_views = 0``: ``c`` = the particle's index; ``num_views = V``: particle ``i`` has view ``i mod V``).
  ``lambda = 1`` is view-conditioned VSD, which maximises the entropy of each view's ``q(x | c)`` only and,
  with one particle per view, degenerates to per-view mode seeking (the paper's Janus argument);
  ``lambda = 0`` maximises the entropy of the marginal ``q(x)`` over views (unconditional VSD). ESD's
  ``lambda`` trades between them.

``w(t) = 1 - abar_t`` (``weighting: sds``, DreamFusion's choice) or 1 (``uniform``). The gradient enters
as the surrogate ``0.5 ||x - stopgrad(x - g)||^2`` (its gradient is ``g``; DreamFusion's trick), so the
particles are ordinary parameters under the configured optimizer (Adam by default, lr ``particle_lr``);
the score network uses ``lr``. Both update in the same step from the same particles (alternating
blocks: the particles' step uses ``eps_phi`` before its update); for the first ``phi_warmup`` steps only
``eps_phi`` trains.

Validation logs ``val/modes_covered`` (modes holding >= ``cover_threshold`` of the particles within
``on_mode_radius`` data stds of their nearest mode), ``val/std_ratio`` (mean per-mode particle std over
the data's std), ``val/on_mode`` (fraction of particles near some mode), ``val/entropy`` (Kozachenko-
Leonenko k-NN estimate, nats) and ``val/log_prob`` (mean data log-density) when the teacher is a
Gaussian mixture; ``val/entropy`` always.
"""

from __future__ import annotations

import math
from typing import Any, Union

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.producer import FrozenProducers
from lightning_vi.families.distillation.teachers import GaussianMixtureTeacher, Teacher, guided_eps, resolve_teacher
from lightning_vi.nn.mlp import MLP
from lightning_vi.nn.unet import timestep_embedding
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES

METHODS = ("sds", "vsd", "esd")
WEIGHTINGS = ("sds", "uniform")
PARTICLE_OPTIMIZERS = ("sgd", "adam")


class ScoreMLP(nn.Module):
    """``eps_phi(x_t, t, c)``: an MLP on ``[x, sinusoidal(t), embedding(c)]`` (the fake score of VSD/ESD).

    Args:
        data_shape: one example. hidden: widths. num_classes: conditions (0 = none); ``num_classes`` is
            the null token. emb_dim: size of the time and condition embeddings.
    """

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], num_classes: int = 0, emb_dim: int = 32) -> None:
        super().__init__()
        self.data_shape, self.emb_dim, self.num_classes = tuple(data_shape), emb_dim, num_classes
        d = math.prod(self.data_shape)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.mlp = MLP(d + emb_dim * (1 + (num_classes > 0)), list(hidden), d, act="silu")

    def forward(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        h = [x.flatten(1), timestep_embedding(t.float(), self.emb_dim)]
        if self.label is not None:
            if c is None:
                c = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            h.append(self.label(c))
        return self.mlp(torch.cat(h, 1)).view(x.shape)


def knn_entropy(x: Tensor, k: int = 3) -> Tensor:
    """Kozachenko-Leonenko entropy estimate (nats) of the points ``x`` ``[N, d]`` (Kozachenko & Leonenko
    1987; Kraskov et al. 2004): ``psi(N) - psi(k) + log V_d + d mean_i log r_i``, with ``r_i`` the distance
    to the k-th neighbour and ``V_d`` the volume of the unit ball."""
    x = x.flatten(1).double()
    n, d = x.shape
    if n <= k:
        raise ValueError(f"knn_entropy needs more than k={k} points; got {n}")
    dist = torch.cdist(x, x)
    dist.fill_diagonal_(float("inf"))
    r = dist.topk(k, largest=False).values[:, -1].clamp_min(1e-12)
    log_vd = (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1)
    dg = torch.special.digamma
    return (dg(torch.tensor(float(n))) - dg(torch.tensor(float(k))) + log_vd + d * r.log().mean()).float()


@torch.no_grad()
def mode_stats(x: Tensor, teacher: GaussianMixtureTeacher, cover_threshold: float = 0.05,
               on_mode_radius: float = 4.0) -> dict[str, Tensor]:
    """Coverage and spread of particles ``x`` against the mixture's modes.

    A particle is *on* mode ``k`` when ``k`` is its most responsible mode and it lies within
    ``on_mode_radius`` data stds (Mahalanobis) of ``mu_k``; mode ``k`` is *covered* when it holds at least
    ``cover_threshold`` of all particles. Returns ``modes_covered``, ``on_mode`` (fraction),
    ``mode_fractions`` ``[K]``, ``mode_stds`` ``[K]`` (rms per-dimension std of the on-mode particles about
    their own mean; NaN below 3 particles) and ``std_ratio`` (mean of ``mode_stds / data std`` over the
    covered modes; NaN when none)."""
    x = x.flatten(1).float()
    k = teacher.assign_modes(x)
    U, lam = teacher.eigvecs[k], teacher.eigvals[k]
    z = torch.einsum("nde,nd->ne", U, x - teacher.means[k]) / lam.sqrt()
    on = z.norm(dim=-1) <= on_mode_radius
    K = teacher.num_modes
    frac = torch.stack([((k == j) & on).float().mean() for j in range(K)])
    stds = torch.full((K,), float("nan"))
    for j in range(K):
        pts = x[(k == j) & on]
        if len(pts) >= 3:
            stds[j] = pts.var(0).mean().sqrt()
    data_std = teacher.eigvals.mean(-1).sqrt().cpu()
    covered = frac.cpu() >= cover_threshold
    ratio = (stds[covered] / data_std[covered]).mean() if covered.any() else torch.tensor(float("nan"))
    return {"modes_covered": covered.sum().float(), "on_mode": on.float().mean().cpu(), "mode_fractions": frac.cpu(),
            "mode_stds": stds, "std_ratio": ratio}


def draw_noise_level(n: int, t_min: float, t_max: float, num_timesteps: int, device=None) -> Tensor:
    """Integer timesteps ``t ~ U[t_min T, t_max T)`` (at least one level), the distillation range."""
    lo = int(t_min * num_timesteps)
    hi = max(int(t_max * num_timesteps), lo + 1)
    return torch.randint(lo, hi, (n,), device=device)


def noise(teacher, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DDPM forward process at ``t``: ``(x_t, eps, abar_t)`` with ``x_t = sqrt(abar) x + sqrt(1 - abar) eps``."""
    eps = torch.randn_like(x)
    a = teacher.abar(t, x)
    return a.sqrt() * x + (1 - a).sqrt() * eps, eps, a


@torch.no_grad()
def sample_metrics(x: Tensor, teacher, cover_threshold: float, on_mode_radius: float) -> dict[str, Tensor]:
    """Validation measures of distilled samples ``x`` (model space): k-NN entropy and, for a Gaussian-mixture
    teacher, :func:`mode_stats` and the mean teacher log-density."""
    out = {"entropy": knn_entropy(x)}
    if isinstance(teacher, GaussianMixtureTeacher):
        s = mode_stats(x, teacher, cover_threshold, on_mode_radius)
        out |= {k: s[k] for k in ("modes_covered", "on_mode", "std_ratio")}
        out["log_prob"] = teacher.log_prob(x).mean()
    return out


class _Joint(torch.optim.Optimizer):
    """Two optimizers stepped as one (the particles' and the fake score's), so that Lightning's automatic
    optimisation runs one backward of ``distill + dsm`` and updates both blocks from the same step."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults = {}
        self.state = {}  # per-optimizer state lives in the parts (see state_dict)

    def step(self, closure=None):  # noqa: D401 - Optimizer API
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for o, s in zip(self.optimizers, state_dict["parts"]):
            o.load_state_dict(s)


class _Steps(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": torch.zeros(1)}


def _collate(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {"x": torch.stack([b["x"] for b in items])}


class DistillationSteps(L.LightningDataModule):
    """Step counter for data-free distillation: ``steps_per_epoch`` training batches and ``val_steps``
    validation batches per epoch, each a placeholder ``{"x": zeros(1, 1)}`` (the particles are the model's)."""

    def __init__(self, steps_per_epoch: int = 100, val_steps: int = 1) -> None:
        super().__init__()
        check_range("steps_per_epoch", steps_per_epoch, 1)
        check_range("val_steps", val_steps, 0)
        self.steps_per_epoch, self.val_steps = int(steps_per_epoch), int(val_steps)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.steps_per_epoch), batch_size=1, collate_fn=_collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.val_steps), batch_size=1, collate_fn=_collate)


@FAMILIES.register("score_distillation")
class ScoreDistillation(FrozenProducers, VIModule):
    """Free particles distilled from a frozen teacher by SDS, VSD or ESD (see the module docstring).

    Args:
        method: ``sds``, ``vsd`` or ``esd``.
        teacher: ``ring`` (8-Gaussian ring, exact score), ``mixture`` or the path of a ``ddpm`` /
            ``flow_matching`` checkpoint (see :func:`resolve_teacher`).
        teacher_args: arguments of the analytic teacher (``{n_modes, radius, std}`` for ``ring``).
        teacher_config: written at the first build from a checkpoint teacher; leave it unset.
        teacher_cond: the teacher's condition (a class index, the "prompt"), or None.
        guidance_scale: classifier-free guidance scale of the teacher (1 = plain; needs ``teacher_cond``).
        n_particles: number of particles. init_std: particles start as ``N(0, init_std^2 I)`` in model space.
        particle_lr: learning rate of the particles. particle_optimizer: ``sgd`` (plain gradient steps:
            the discretised particle flow) or ``adam`` (as DreamFusion/ProlificDreamer use for NeRFs).
        t_min, t_max: ``t`` is drawn uniformly from ``[t_min T, t_max T)`` for the particle update.
        weighting: ``w(t)``: ``sds`` (``1 - abar_t``) or ``uniform``.
        hidden: widths of the fake score network (VSD/ESD).
        phi_warmup: steps that train only the fake score before the particles move.
        esd_lambda: ESD's ``lambda`` in [0, 1] (1 = view-conditioned VSD).
        num_views: ESD's views (0 = one per particle). p_uncond: ESD's probability of training ``eps_phi`` with "none".
        cover_threshold, on_mode_radius: of the validation metrics (:func:`mode_stats`).
        seed: of the particles' initialisation.
        lr: learning rate of the fake score's default Adam (``optimizer`` replaces that Adam).
        plugins, **kwargs: the shared ``VIModule`` arguments (``optimizer``, ``lr``, ...).
    """

    producers = ("teacher",)
    hparams_from_checkpoint = ("teacher_config",)

    def __init__(
        self,
        method: str = "vsd",
        teacher: str = "ring",
        teacher_args: dict | None = None,
        teacher_config: dict | None = None,
        teacher_cond: int | None = None,
        guidance_scale: float = 1.0,
        n_particles: int = 256,
        init_std: float = 1.0,
        particle_lr: float = 0.1,
        particle_optimizer: str = "sgd",
        t_min: float = 0.02,
        t_max: float = 0.98,
        weighting: str = "sds",
        hidden: list[int] = (64, 64, 64),
        phi_warmup: int = 300,
        esd_lambda: float = 1.0,
        num_views: int = 0,
        p_uncond: float = 0.2,
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
        check_choice("particle_optimizer", particle_optimizer, PARTICLE_OPTIMIZERS)
        check_range("n_particles", n_particles, 4)
        check_range("init_std", init_std, 0.0, low_open=True)
        check_range("particle_lr", particle_lr, 0.0, low_open=True)
        check_range("t_min", t_min, 0.0, 1.0)
        check_range("t_max", t_max, t_min, 1.0, low_open=True)
        check_range("guidance_scale", guidance_scale, 0.0)
        check_range("phi_warmup", phi_warmup, 0)
        check_range("esd_lambda", esd_lambda, 0.0, 1.0)
        check_range("num_views", num_views, 0)
        check_range("p_uncond", p_uncond, 0.0, 1.0)
        if method == "esd" and p_uncond in (0.0, 1.0):
            raise ValueError(f"p_uncond={p_uncond!r} is out of range for method='esd'; allowed: (0, 1), so that "
                             "eps_phi learns both the view-conditional and the unconditional score")
        self.save_hyperparameters()
        self.teacher, spec = resolve_teacher(teacher, teacher_args, teacher_config, consumer="score_distillation")
        self.hparams["teacher_config"] = spec
        if teacher_cond is not None:
            self.teacher.check_cond(torch.tensor([teacher_cond]), 1)
        elif guidance_scale != 1.0:
            raise ValueError(f"guidance_scale={guidance_scale!r} needs a teacher_cond (a class index in "
                             f"[0, {self.teacher.num_classes})); with teacher_cond=None use guidance_scale=1")
        self.data_shape = tuple(self.teacher.data_shape)
        g = torch.Generator().manual_seed(seed)
        self.particles = nn.Parameter(init_std * torch.randn((n_particles, *self.data_shape), generator=g))
        self.method = method
        views = n_particles if num_views == 0 else num_views
        self.register_buffer("views", torch.arange(n_particles) % views, persistent=False)
        self.num_views = views if method == "esd" else 0
        self.phi = None if method == "sds" else ScoreMLP(self.data_shape, list(hidden), self.num_views)
        self.term_weights = {"distill": 1.0} | ({} if method == "sds" else {"dsm": 1.0})
        self.plain_steps = 0  # steps of fit_particles (outside a Trainer, where global_step stays 0)

    # -- pieces -----------------------------------------------------------------------------------
    def weight(self, abar: Tensor) -> Tensor:
        return 1 - abar if self.hparams.weighting == "sds" else torch.ones_like(abar)

    def teacher_eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        c = self.hparams.teacher_cond
        cond = None if c is None else torch.full((x_t.shape[0],), int(c), device=x_t.device, dtype=torch.long)
        return guided_eps(self.teacher, x_t, t, cond, self.hparams.guidance_scale)

    def fake_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """The particles' own noise prediction: ``eps`` itself (SDS), ``eps_phi`` (VSD), ESD's CFG mix."""
        if self.method == "sds":
            return eps
        if self.method == "vsd":
            return self.phi(x_t, t)
        null = torch.full_like(self.views, self.num_views)
        out = self.phi(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([self.views, null]))
        e_c, e_u = out.chunk(2)
        return e_u + self.hparams.esd_lambda * (e_c - e_u)

    def distillation_grad(self, x: Tensor) -> Tensor:
        """``w(t) (eps_teacher(x_t, t) - eps_fake)`` for every particle (no graph)."""
        h = self.hparams
        t = draw_noise_level(x.shape[0], h.t_min, h.t_max, self.teacher.num_timesteps, x.device)
        x_t, eps, a = noise(self.teacher, x, t)
        with torch.no_grad():
            return self.weight(a) * (self.teacher_eps(x_t, t) - self.fake_eps(x_t, t, eps))

    def dsm_loss(self, x: Tensor) -> Tensor:
        """Denoising score matching of ``eps_phi`` on the (detached) particles (ProlificDreamer Alg. 1),
        ``t ~ U[0, T)``; ESD drops the view to "none" with probability ``p_uncond``."""
        t = torch.randint(0, self.teacher.num_timesteps, (x.shape[0],), device=x.device)
        x_t, eps, _ = noise(self.teacher, x, t)
        c = None
        if self.method == "esd":
            drop = torch.rand(x.shape[0], device=x.device) < self.hparams.p_uncond
            c = torch.where(drop, torch.full_like(self.views, self.num_views), self.views)
        return ((self.phi(x_t, t, c) - eps) ** 2).flatten(1).sum(-1).mean()

    # -- family contract --------------------------------------------------------------------------
    def objective(self, batch: Any) -> dict[str, Tensor]:
        x = self.particles
        out: dict[str, Tensor] = {}
        step = self.global_step if self._trainer is not None else self.plain_steps
        active = float(step >= self.hparams.phi_warmup) if self.method != "sds" else 1.0
        g = self.distillation_grad(x.detach()) * active
        # surrogate whose gradient in each particle is its own g (DreamFusion's stop-gradient trick)
        out["distill"] = 0.5 * ((x - (x - g).detach()) ** 2).sum()
        if self.phi is not None:
            out["dsm"] = self.dsm_loss(x.detach())
        if not self.training:
            out.update(self.particle_metrics())
        return out

    @torch.no_grad()
    def particle_metrics(self) -> dict[str, Tensor]:
        out = sample_metrics(self.particles.detach(), self.teacher, self.hparams.cover_threshold,
                             self.hparams.on_mode_radius)
        return {k: v.to(self.device) for k, v in out.items()}

    def configure_optimizers(self) -> Any:
        """The particles' own optimizer (``particle_optimizer``, lr ``particle_lr``; SGD steps the gradient
        flow) and, for VSD/ESD, the configured optimizer of the fake score (default Adam(lr))."""
        h = self.hparams
        opt_cls = torch.optim.SGD if h.particle_optimizer == "sgd" else torch.optim.Adam
        particle_opt = opt_cls([self.particles], lr=h.particle_lr)
        if self.phi is None:
            return particle_opt
        params = list(self.phi.parameters())
        phi_opt = torch.optim.Adam(params, lr=self._lr) if self._optimizer_factory is None else self._optimizer_factory(params)
        return _Joint([particle_opt, phi_opt])

    def forward(self, n: int | None = None) -> Tensor:
        return self.sample(n)

    @torch.no_grad()
    def sample(self, n: int | None = None) -> Tensor:
        """The first ``n`` (default all) particles in data space."""
        x = self.particles.detach()
        return self.teacher.from_model_space(x if n is None else x[:n])


def fit_particles(model: VIModule, steps: int) -> VIModule:
    """Plain-PyTorch training loop (no Trainer): ``steps`` steps of ``objective`` with the family's optimizer
    (any distillation family with ``term_weights`` and a ``plain_steps`` counter: particles or a camera object)."""
    check_range("steps", steps, 0)
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    model.train()
    for _ in range(int(steps)):
        terms = model.objective(None)
        loss = sum(w * terms[k] for k, w in model.term_weights.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.plain_steps += 1
    return model.eval()
