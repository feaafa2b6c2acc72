"""One-step students distilled from a diffusion teacher by distribution matching: f-distill and SNOOPI.

A generator ``x = G(z)`` (``z ~ N(0, I)``, optionally a class ``y``) is trained so that its samples,
noised by the teacher's forward process ``x_t = sqrt(abar_t) x + sqrt(1 - abar_t) eps``, match the
teacher's noised marginals at every ``t``. The gradient handed to each sample (DMD, Yin et al. 2024,
Eq. 7-8; VSD, Wang et al. 2023) is the score difference, written with noise predictions
(``score = -eps / sqrt(1 - abar)``)::

    grad_x = w(t) (x0_fake - x0_teacher) = w(t) sqrt(1 - abar)/sqrt(abar) (eps_teacher(x_t) - eps_fake(x_t))

with DMD's normaliser ``w(t) = 1 / mean|x - x0_teacher|``. This is the gradient of the reverse KL
``KL(p_G || p_teacher)`` with respect to ``x`` (``grad log p_G - grad log p_teacher``), descended by the
generator through the surrogate ``mean_i <x_i, sg(grad_i)>``. ``eps_fake`` is a small score network
trained alongside by denoising score matching on the generator's (detached) samples.

**f-distill** (Xu et al. 2025, "One-step Diffusion Models with f-Divergence Distribution Matching",
Thm. 1 / Eq. 8): for ``D_f(p || q) = E_q[f(p/q)]`` the gradient is the same score difference weighted
by ``h(r) = f''(r) r^2`` of the density ratio ``r = p_teacher,t(x_t) / p_G,t(x_t)``:

========== ================================== ==============
weighting  f(r)                               h(r)
========== ================================== ==============
reverse_kl ``-log r``                         ``1`` (DMD/VSD)
forward_kl ``r log r``                        ``r``
js         ``r log r - (1+r) log((1+r)/2)``   ``r / (1 + r)``
========== ================================== ==============

``r`` is estimated by a discriminator on noised samples, trained with the logistic loss on teacher
samples (label 1) against generator samples (label 0): the optimal logit is ``log r``. As in the paper
(Sec. 4.2) ``h`` is normalised per batch to mean 1, and ``log r`` is clipped (``max_log_ratio``).

**SNOOPI** (Nguyen et al. 2024, "SNOOPI: Supercharged One-step Diffusion Distillation with Proper
Guidance", Sec. 4.1, PG-SB): with a class-conditional teacher, both the teacher and the fake score are
used with classifier-free guidance ``eps_null + s (eps_c - eps_null)`` and the *same* scale ``s``,
drawn afresh each step from ``U[low, high]`` instead of a fixed large scale; the fake score is trained
with condition dropout so that it has the null branch.

Teachers come from :mod:`lightning_vi.families.distillation.teachers` (an analytic Gaussian mixture
such as the 8-Gaussian ring, or a trained ``ddpm`` / ``flow_matching`` checkpoint). The student lives
in the teacher's model space; :meth:`OneStepDistiller.sample` maps back to data space.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence, Union

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.module import VIModule
from lightning_vi.families.diffusion.ddpm import build_denoiser
from lightning_vi.families.diffusion.guidance import drop_condition, guided
from lightning_vi.families.distillation.teachers import Teacher, guided_eps, resolve_teacher
from lightning_vi.nn.unet import _Conditioning
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES

__all__ = ["WEIGHTINGS", "f_weight", "normalise_weights", "OneStepGenerator", "NoisyDiscriminator",
           "OneStepDistiller", "FDistill", "SNOOPI", "NoiseDataModule"]

WEIGHTINGS = ("reverse_kl", "forward_kl", "js")
TIME_WEIGHTINGS = ("dmd", "vsd")


def f_weight(weighting: str, log_ratio: Tensor) -> Tensor:
    """f-distill's weight ``h(r) = f''(r) r^2`` (Xu et al. 2025, Eq. 8 and Tab. 1) from ``log r``:
    ``reverse_kl`` 1, ``forward_kl`` ``r``, ``js`` ``r / (1 + r)``."""
    check_choice("weighting", weighting, WEIGHTINGS)
    if weighting == "reverse_kl":
        return torch.ones_like(log_ratio)
    if weighting == "forward_kl":
        return log_ratio.exp()
    return torch.sigmoid(log_ratio)  # r / (1 + r)


def normalise_weights(h: Tensor, eps: float = 1e-8) -> Tensor:
    """``h / mean(h)`` over the batch (f-distill Sec. 4.2: the weights' scale is removed per batch)."""
    return h / h.mean().clamp_min(eps)


class OneStepGenerator(nn.Module):
    """``G(z, y)``: a residual MLP from the latent ``z`` ``[B, latent_dim]`` (plus a class embedding) to
    one example of ``data_shape`` (flattened images are reshaped)."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int, hidden: int = 128, depth: int = 3,
                 num_classes: int = 0) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.latent_dim = int(latent_dim)
        self.inp = nn.Linear(self.latent_dim, hidden)
        self.label = nn.Embedding(num_classes, hidden) if num_classes > 0 else None
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, math.prod(self.data_shape)))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.inp(z)
        if self.label is not None:
            if y is None:
                raise ValueError("this generator is class-conditional; pass labels y [B]")
            h = h + self.label(y)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).view(z.shape[0], *self.data_shape)


class NoisyDiscriminator(nn.Module):
    """Logit ``D(x_t, t, y)`` ``[B]`` of "teacher sample" on noised inputs; trained with the logistic loss,
    its optimum is ``log p_teacher,t(x_t) - log p_G,t(x_t)`` (the log density ratio)."""

    def __init__(self, data_shape: Sequence[int], hidden: int = 128, depth: int = 2, num_classes: int = 0) -> None:
        super().__init__()
        self.inp = nn.Linear(math.prod(data_shape), hidden)
        self.emb = _Conditioning(hidden, num_classes, 1.0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.inp(x_t.flatten(1)) + self.emb(t, y)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h).squeeze(-1)


class OneStepDistiller(VIModule):
    """Distribution-matching distillation of a teacher into a one-step generator (module docstring).

    Args:
        teacher: ``ring`` (8-Gaussian ring), ``mixture`` or the path of a ``ddpm``/``flow_matching``
            checkpoint (see :func:`~lightning_vi.families.distillation.teachers.resolve_teacher`).
        teacher_args: arguments of the analytic teacher (``{radius: 2, std: 0.1}``) or ``{schedule: ...}``.
        teacher_config: the checkpoint teacher's spec, written at the first build (the teacher's file is then
            not read again).
        weighting: f-divergence, one of ``reverse_kl``, ``forward_kl``, ``js``.
        train_discriminator: default True: the discriminator is trained for all three weightings, so that one
            seed gives one random stream and runs differ in ``h`` alone; False (``reverse_kl`` only) skips it.
        guidance_range: ``[low, high]``: the classifier-free guidance scale of teacher and fake score is
            drawn from ``U[low, high]`` each step (``low == high``: a fixed scale; ``[1, 1]``: no guidance).
        conditional: train a class-conditional student (the teacher must be conditional); default: when
            the guidance range is not ``[1, 1]``.
        latent_dim: size of ``z`` (default: the data's size).
        hidden, depth: generator MLP. fake_hidden, fake_depth, fake_architecture: the fake score network
            (``mlp`` or ``unet``, :func:`~lightning_vi.families.diffusion.ddpm.build_denoiser`).
        disc_hidden, disc_depth: the discriminator.
        fake_updates: fake-score/discriminator steps per generator step (DMD2's two time-scale rule).
        t_min, t_max: fractions of ``T`` bounding the generator's noise levels (DMD: 0.02, 0.98).
        p_uncond: condition dropout of the fake score (conditional students).
        max_log_ratio: ``log r`` is clipped to ``[-max_log_ratio, max_log_ratio]`` before ``h``.
        normalise: divide ``h`` by its batch mean (f-distill); False only for ablations.
        time_weighting: ``dmd`` (``w = 1 / mean|x - x0_teacher|``, DMD Eq. 8) or ``vsd`` (``w(t) = 1 - abar_t``
            on ``eps_teacher - eps_fake``, ProlificDreamer / SwiftBrush, without the per-sample normaliser).
        teacher_pool: 0 = draw the discriminator's teacher samples afresh each step (analytic teachers);
            N > 0 = draw N samples once with the teacher's sampler and reuse them (checkpoint teachers).
        lr: generator learning rate. fake_lr: fake score and discriminator (default ``lr``).
        betas: Adam betas of both optimizers.
    """

    hparams_from_checkpoint: tuple[str, ...] = ("teacher_config",)

    def __init__(
        self,
        teacher: str = "ring",
        teacher_args: dict | None = None,
        teacher_config: dict | None = None,
        weighting: str = "reverse_kl",
        guidance_range: Sequence[float] = (1.0, 1.0),
        conditional: bool | None = None,
        latent_dim: int | None = None,
        hidden: int = 128,
        depth: int = 3,
        fake_hidden: int = 128,
        fake_depth: int = 3,
        fake_architecture: str = "mlp",
        fake_channels: Sequence[int] = (32, 64),
        disc_hidden: int = 128,
        disc_depth: int = 2,
        fake_updates: int = 1,
        t_min: float = 0.02,
        t_max: float = 0.98,
        p_uncond: float = 0.1,
        max_log_ratio: float = 5.0,
        normalise: bool = True,
        train_discriminator: bool | None = None,
        time_weighting: str = "dmd",
        teacher_pool: int = 0,
        lr: float = 1e-3,
        fake_lr: float | None = None,
        betas: Sequence[float] = (0.5, 0.999),
        plugins: list[Union[Plugin, str, dict]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(plugins=plugins, lr=lr, **kwargs)
        check_choice("weighting", weighting, WEIGHTINGS)
        check_choice("time_weighting", time_weighting, TIME_WEIGHTINGS)
        low, high = self._check_range(guidance_range)
        check_range("fake_updates", fake_updates, 1)
        check_range("t_min", t_min, 0.0, 1.0)
        check_range("t_max", t_max, t_min, 1.0)
        check_range("p_uncond", p_uncond, 0.0, 1.0, high_open=True)
        check_range("max_log_ratio", max_log_ratio, 0.0, low_open=True)
        check_range("teacher_pool", teacher_pool, 0)
        if fake_lr is not None:
            check_range("fake_lr", fake_lr, 0.0, low_open=True)
        self.teacher, spec = resolve_teacher(teacher, teacher_args, teacher_config, consumer=self.family_name())
        if not isinstance(self.teacher, Teacher):
            raise TypeError(f"teacher={teacher!r} did not resolve to a Teacher; got {type(self.teacher).__name__}")
        conditional = (low, high) != (1.0, 1.0) if conditional is None else bool(conditional)
        K = int(self.teacher.num_classes)
        if conditional and K == 0:
            raise ValueError(f"conditional=True (or a guidance_range other than [1, 1]) needs a class-conditional "
                             f"teacher; teacher={teacher!r} has num_classes=0")
        if not conditional and (low, high) != (1.0, 1.0):
            raise ValueError(f"guidance_range={[low, high]} needs conditional=True: guidance mixes the teacher's "
                             "conditional and unconditional predictions")
        self.save_hyperparameters()
        if spec is not None:
            self.hparams["teacher_config"] = spec
        self.conditional, self.num_classes = conditional, K if conditional else 0
        self.guidance_low, self.guidance_high = low, high
        self.data_shape = tuple(int(s) for s in self.teacher.data_shape)
        d = math.prod(self.data_shape)
        self.latent_dim = int(latent_dim or d)
        self.input_shape = (self.latent_dim,)
        nc = self.num_classes
        self.generator = OneStepGenerator(self.data_shape, self.latent_dim, hidden, depth, nc)
        self.fake = build_denoiser(fake_architecture, self.data_shape, fake_hidden, fake_depth, list(fake_channels), nc)
        # By default the discriminator is trained for every weighting (for reverse_kl only as a diagnostic,
        # h = 1), so that runs of one seed differ in h alone (a controlled comparison of the divergences).
        self.uses_ratio = True if train_discriminator is None else bool(train_discriminator)
        if weighting != "reverse_kl" and not self.uses_ratio:
            raise ValueError(f"weighting={weighting!r} needs the density ratio; set train_discriminator=True "
                             "(train_discriminator=False is allowed with weighting='reverse_kl' only)")
        self.discriminator = NoisyDiscriminator(self.data_shape, disc_hidden, disc_depth, nc) if self.uses_ratio else None
        self.automatic_optimization = False
        self.term_weights = {"distill": 1.0}
        self._pool: tuple[Tensor, Tensor | None] | None = None

    # -- arguments --------------------------------------------------------------------------------
    @classmethod
    def family_name(cls) -> str:
        try:
            return FAMILIES.name_of(cls)
        except (KeyError, ValueError):
            return cls.__name__

    @staticmethod
    def _check_range(guidance_range: Sequence[float] | float) -> tuple[float, float]:
        if isinstance(guidance_range, (int, float)):
            guidance_range = (guidance_range, guidance_range)
        vals = list(guidance_range)
        if len(vals) != 2:
            raise ValueError(f"guidance_range={vals!r} must be [low, high] (two numbers)")
        low, high = float(vals[0]), float(vals[1])
        if low > high:
            raise ValueError(f"guidance_range={vals!r} has low={low} > high={high}; give [low, high] with low <= high")
        check_range("guidance_range low", low, 0.0)
        return low, high

    # -- pieces -----------------------------------------------------------------------------------
    def abar(self, t: Tensor, like: Tensor) -> Tensor:
        return self.teacher.abar(t, like)

    def add_noise(self, x: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        a = self.abar(t, x)
        return a.sqrt() * x + (1 - a).sqrt() * noise

    def sample_t(self, n: int, device: torch.device) -> Tensor:
        """Generator noise levels ``t ~ U{t_min T, ..., t_max T}`` (integer timesteps)."""
        T = self.teacher.num_timesteps
        lo = int(self.hparams.t_min * (T - 1))
        hi = max(int(self.hparams.t_max * (T - 1)), lo)
        return torch.randint(lo, hi + 1, (n,), device=device)

    def draw_scale(self) -> float:
        """This step's guidance scale: ``U[low, high]`` (SNOOPI); a fixed scale when ``low == high``."""
        if self.guidance_low == self.guidance_high:
            return self.guidance_low
        return float(self.guidance_low + (self.guidance_high - self.guidance_low) * torch.rand(()))

    def fake_eps(self, x_t: Tensor, t: Tensor, y: Tensor | None, scale: float = 1.0) -> Tensor:
        """The fake score's noise prediction, with guidance ``scale`` for a conditional student."""
        if y is None or self.num_classes == 0:
            return self.fake(x_t, t, None)
        return guided(lambda x, tt, yy: self.fake(x, tt, yy), y, self.num_classes, scale)(x_t, t)

    def teacher_eps(self, x_t: Tensor, t: Tensor, y: Tensor | None, scale: float = 1.0) -> Tensor:
        return guided_eps(self.teacher, x_t, t, y if self.conditional else None, scale)

    def labels(self, n: int, device: torch.device) -> Tensor | None:
        return torch.randint(0, self.num_classes, (n,), device=device) if self.conditional else None

    def teacher_batch(self, n: int, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """Teacher samples (model space) and their labels, for the discriminator."""
        if self.hparams.teacher_pool == 0:
            y = self.labels(n, device)
            return self.teacher.sample(n, cond=y).to(device), y
        if self._pool is None:
            m = self.hparams.teacher_pool
            y = (torch.arange(m, device=device) % self.num_classes) if self.conditional else None
            self._pool = (self.teacher.sample(m, cond=y).to(device), y)
        x, y = self._pool
        idx = torch.randint(0, x.shape[0], (n,), device=device)
        return x[idx], None if y is None else y[idx]

    def log_ratio(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """Clipped discriminator logit, the estimate of ``log p_teacher,t / p_G,t`` at ``x_t``."""
        m = self.hparams.max_log_ratio
        return self.discriminator(x_t, t, y).clamp(-m, m)

    # -- losses -----------------------------------------------------------------------------------
    def critic_losses(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """Fake-score DSM on the generator's detached samples ``x``; the discriminator's logistic loss
        (teacher samples vs ``x`` at the same noise levels) when the weighting needs ``r``."""
        x = x.detach()
        n, dev = x.shape[0], x.device
        t = torch.randint(0, self.teacher.num_timesteps, (n,), device=dev)
        noise = torch.randn_like(x)
        y_in = None if y is None else drop_condition(y, self.hparams.p_uncond, self.num_classes)
        out = {"fake_dsm": F.mse_loss(self.fake(self.add_noise(x, t, noise), t, y_in), noise)}
        if self.uses_ratio:
            x_real, y_real = self.teacher_batch(n, dev)
            t_d = self.sample_t(n, dev)
            real = self.discriminator(self.add_noise(x_real, t_d, torch.randn_like(x_real)), t_d, y_real)
            fake = self.discriminator(self.add_noise(x, t_d, torch.randn_like(x)), t_d, y)
            out["disc"] = F.softplus(-real).mean() + F.softplus(fake).mean()
            out["disc_acc"] = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
        return out

    def distill_grad(self, x: Tensor, y: Tensor | None, scale: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``(grad, diagnostics)``: the per-sample distribution-matching gradient ``h(r) w(t) (x0_fake -
        x0_teacher)`` at the generator's samples ``x`` (no graph)."""
        with torch.no_grad():
            x = x.detach()
            n = x.shape[0]
            t = self.sample_t(n, x.device)
            x_t = self.add_noise(x, t, torch.randn_like(x))
            s = self.draw_scale() if scale is None else scale
            eps_t = self.teacher_eps(x_t, t, y, s)
            eps_f = self.fake_eps(x_t, t, y, s)
            a = self.abar(t, x)
            sa, sb = a.sqrt(), (1 - a).sqrt()
            x0_teacher = (x_t - sb * eps_t) / sa
            dims = tuple(range(1, x.ndim))
            if self.hparams.time_weighting == "dmd":
                w = 1.0 / (x - x0_teacher).abs().mean(dims, keepdim=True).clamp_min(1e-4)  # DMD Eq. 8
                grad = w * (sb / sa) * (eps_t - eps_f)                                    # = w (x0_fake - x0_teacher)
            else:  # VSD / SwiftBrush: w(t) (eps_teacher - eps_fake) with w(t) = 1 - abar_t
                grad = (1 - a) * (eps_t - eps_f)
            diag = {"guidance_scale": torch.tensor(float(s), device=x.device)}
            if self.uses_ratio and self.hparams.weighting != "reverse_kl":
                h = f_weight(self.hparams.weighting, self.log_ratio(x_t, t, y))
                if self.hparams.normalise:
                    h = normalise_weights(h)
                grad = h.reshape(-1, *([1] * (x.ndim - 1))) * grad
                diag["h_max"] = h.max()
            diag["grad_norm"] = grad.flatten(1).norm(dim=1).mean()
        return grad, diag

    def generator_loss(self, z: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(surrogate, samples, diagnostics)``: ``mean_i <x_i, sg(grad_i)>`` has gradient ``grad`` in ``x``."""
        x = self.generator(z, y)
        grad, diag = self.distill_grad(x, y)
        return (x * grad).flatten(1).sum(1).mean(), x, diag

    # -- training ---------------------------------------------------------------------------------
    def _inputs(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        z = batch["x"] if isinstance(batch, dict) else batch
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"batch['x'] must be latents [B, {self.latent_dim}] (NoiseDataModule with "
                             f"latent_dim={self.latent_dim}); got shape {tuple(z.shape)}")
        y = None
        if self.conditional:
            y = batch.get("y") if isinstance(batch, dict) else None
            y = self.labels(z.shape[0], z.device) if y is None else y.long() % self.num_classes
        return z, y

    def _backward(self, loss: Tensor) -> None:
        if self._trainer is not None:
            self.manual_backward(loss)
        else:
            loss.backward()

    def distill_step(self, z: Tensor, y: Tensor | None, opt_gen: Any, opt_critic: Any) -> dict[str, Tensor]:
        """``fake_updates`` critic steps (fake score, discriminator) on fresh generator samples, then one
        generator step; returns the scalar terms."""
        terms: dict[str, Tensor] = {}
        for _ in range(self.hparams.fake_updates):
            with torch.no_grad():
                zc = torch.randn_like(z)
                yc = self.labels(z.shape[0], z.device)
                x = self.generator(zc, yc)
            c = self.critic_losses(x, yc)
            loss_c = c["fake_dsm"] + c.get("disc", 0.0)
            opt_critic.zero_grad()
            self._backward(loss_c)
            opt_critic.step()
            terms.update({k: v.detach() for k, v in c.items()})
        loss_g, x, diag = self.generator_loss(z, y)
        opt_gen.zero_grad()
        self._backward(loss_g)
        opt_gen.step()
        terms.update(distill=loss_g.detach(), **diag)
        terms["loss"] = loss_g.detach() + terms["fake_dsm"]
        if self.check_finite and not (torch.isfinite(terms["loss"]) and torch.isfinite(x).all()):
            from lightning_vi.core.module import NonFiniteLossError
            raise NonFiniteLossError(f"{type(self).__name__}: non-finite generator samples or loss at step "
                                     f"{self.global_step}; terms {({k: float(v) for k, v in terms.items()})}. Lower lr or "
                                     "the guidance scale (a guidance_range instead of a fixed large scale).")
        return terms

    def training_step(self, batch: Any, batch_idx: int) -> None:
        z, y = self._inputs(batch)
        opt_gen, opt_critic = self.optimizers()
        terms = self.distill_step(z, y, opt_gen, opt_critic)
        self._accumulate_train_terms(terms, z.shape[0])
        # The optimizers have stepped (global_step moved by 1 + fake_updates), so publish on the batch index.
        trainer = self.trainer
        if batch_idx % max(trainer.log_every_n_steps, 1) == 0 or trainer.is_last_batch:
            self._publish({f"train/{k}": v for k, v in terms.items()}, prog_bar=("train/loss",))

    def objective(self, batch: Any) -> dict[str, Tensor]:
        """Validation terms without updates: the critics' losses, the surrogate, and, for an analytic
        teacher, the teacher's negative log-density of the student's samples (``teacher_nll``)."""
        z, y = self._inputs(batch)
        with torch.no_grad():
            x = self.generator(z, y)
            out = self.critic_losses(x, y)
            grad, diag = self.distill_grad(x, y)
            out["distill"] = (x * grad).flatten(1).sum(1).mean()
            if hasattr(self.teacher, "log_prob"):
                out["teacher_nll"] = -self.teacher.log_prob(x.flatten(1), y if self.conditional else None).mean()
        return out

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = tuple(float(b) for b in self.hparams.betas)
        critic = list(self.fake.parameters()) + (list(self.discriminator.parameters()) if self.discriminator else [])
        return [torch.optim.Adam(self.generator.parameters(), lr=self._lr, betas=betas),
                torch.optim.Adam(critic, lr=self.hparams.fake_lr or self._lr, betas=betas)]

    def fit_steps(self, steps: int, batch_size: int = 256, seed: int | None = None,
                  callback: Any = None) -> list[dict[str, float]]:
        """Plain-PyTorch training loop (tests, notebooks): ``steps`` distillation steps; ``callback(step,
        module)`` after each step. Returns the per-step terms."""
        if seed is not None:
            torch.manual_seed(seed)
        self.train()
        opts = self.configure_optimizers()
        history = []
        dev = next(self.generator.parameters()).device
        for step in range(steps):
            z = torch.randn(batch_size, self.latent_dim, device=dev)
            terms = self.distill_step(z, self.labels(batch_size, dev), *opts)
            history.append({k: float(v) for k, v in terms.items()})
            if callback is not None:
                callback(step, self)
        return history

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, y: Tensor | None = None,
               model_space: bool = False) -> Tensor:
        """``n`` one-step samples (data space unless ``model_space``); ``y``: labels of a conditional
        student (default: cycling through the classes)."""
        dev = next(self.generator.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator).to(dev)
        if self.conditional and y is None:
            y = torch.arange(n, device=dev) % self.num_classes
        x = self.generator(z, y.to(dev) if y is not None else None)
        return x if model_space else self.teacher.from_model_space(x)


@FAMILIES.register("f_distill")
class FDistill(OneStepDistiller):
    """f-distill (Xu et al. 2025): one-step distribution matching weighted by ``h(r) = f''(r) r^2`` of a
    discriminator's density ratio; ``weighting``: ``reverse_kl`` (= DMD/VSD), ``forward_kl``, ``js``.
    See :class:`OneStepDistiller` for the arguments."""

    def __init__(self, teacher: str = "ring", weighting: str = "js", **kwargs: Any) -> None:
        super().__init__(teacher=teacher, weighting=weighting, **kwargs)


@FAMILIES.register("snoopi")
class SNOOPI(OneStepDistiller):
    """SNOOPI's PG-SB (Nguyen et al. 2024, Sec. 4.1): one-step VSD with classifier-free guidance whose scale
    is drawn from ``guidance_range = [low, high]`` each step, for teacher and fake score alike (``low ==
    high`` is the fixed-scale SwiftBrush baseline). See :class:`OneStepDistiller` for the arguments."""

    def __init__(self, teacher: str = "ring", guidance_range: Sequence[float] = (2.0, 5.0), **kwargs: Any) -> None:
        kwargs.setdefault("conditional", True)
        if kwargs.get("weighting", "reverse_kl") == "reverse_kl":
            kwargs.setdefault("train_discriminator", False)  # VSD: h = 1, no density ratio needed
        super().__init__(teacher=teacher, guidance_range=guidance_range, **kwargs)


class _NoiseBatches(IterableDataset):
    def __init__(self, owner: "NoiseDataModule", batches: int, seed: int) -> None:
        self.owner, self.batches, self.gen = owner, batches, torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        o = self.owner
        for _ in range(self.batches):
            batch = {"x": torch.randn(o.batch_size, o.latent_dim, generator=self.gen)}
            if o.num_classes > 0:
                batch["y"] = torch.randint(0, o.num_classes, (o.batch_size,), generator=self.gen)
            yield batch

    def __len__(self) -> int:
        return self.batches


class NoiseDataModule(L.LightningDataModule):
    """Fresh generator inputs ``{"x": z ~ N(0, I) [B, latent_dim], "y": labels [B]}`` for one-step
    distillation (the data comes from the teacher, not from a data set).

    Args:
        latent_dim: size of ``z`` (the student's ``latent_dim``). num_classes: 0 = no labels.
        batch_size: generator batch. batches_per_epoch, val_batches: epoch lengths. seed: the stream's seed.
    """

    def __init__(self, latent_dim: int = 2, num_classes: int = 0, batch_size: int = 256, batches_per_epoch: int = 100,
                 val_batches: int = 2, seed: int = 0) -> None:
        super().__init__()
        check_range("latent_dim", latent_dim, 1)
        check_range("num_classes", num_classes, 0)
        check_range("batch_size", batch_size, 1)
        check_range("batches_per_epoch", batches_per_epoch, 1)
        self.latent_dim, self.num_classes, self.batch_size = latent_dim, num_classes, batch_size
        self.batches_per_epoch, self.val_batches, self.seed = batches_per_epoch, val_batches, seed
        self._train = _NoiseBatches(self, batches_per_epoch, seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._train, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_NoiseBatches(self, self.val_batches, self.seed + 1), batch_size=None)
