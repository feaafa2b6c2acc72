"""Phasic content-fusing few-shot adaptation of a trained DDPM (Hu et al., "Phasic content fusing diffusion
model with directional distribution consistency for few-shot model adaption").

A source :class:`~lightning_vi.families.diffusion.ddpm.DDPM` is adapted to a target domain from at most
10 images ("shots"). The adapted network starts from the source weights; a frozen copy of the source
network and a fixed set of source-content images ``x_A`` (samples of the source model) stay in the module.

Phasic training (paper Sec. 3.2) targets different objectives at different timesteps, split at
``t_split``:

- large ``t`` (``t >= t_split``), content and style (phasic content fusion): a source-content image ``x_A``
  is noised to ``x_t``; the content comes from the source model's own clean-image prediction
  ``x0_src(x_t, t)`` and the style from the target shots, through the directional distribution
  consistency (DDC) loss (paper Eq. 8):
  ``L_ddc = || f(x0_adapt(x_t, t)) - (f(x0_src(x_t, t)) + w) ||^2`` with the global direction
  ``w = mean_B f(x_B) - mean_A f(x_A)`` (target shots minus source content) in a fixed feature space ``f``;
- small ``t`` (``t < t_split``), local detail: the DDPM loss ``||eps - eps_theta(x_t^B, t)||^2`` on the
  target shots ``x_B``.

``f`` here is the raw pixels concatenated with a fixed random ReLU conv encoder (the paper uses a CLIP image
encoder). ``phases`` chooses the split: ``phasic`` (above), ``none`` (both losses at every ``t``),
``reversed`` (detail at large ``t``, fusion at small ``t``); ``mode: finetune`` is the plain fine-tuning
baseline (the DDPM loss on the shots at every ``t``).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.data.base import InMemoryDataModule
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.producer import read_producer
from lightning_vi.registry import FAMILIES

MAX_SHOTS = 10
MODES = ("phasic", "finetune")
PHASES = ("phasic", "none", "reversed")
STYLES = ("gray_background", "inverted", "thick")
ARCH_KEYS = ("input_shape", "architecture", "hidden", "depth", "channels", "num_classes", "num_train_timesteps", "beta_schedule",
             "beta_start", "beta_end", "prediction_type", "sampler", "sample_steps", "eta", "timestep_spacing",
             "data_scale", "data_shift")


def check_shots(n: int) -> None:
    """Warn when more than ``MAX_SHOTS`` target images are given (the method is for <= 10 shots)."""
    if n > MAX_SHOTS:
        warnings.warn(f"phasic_adapt: {n} target shots given; the method is for few-shot adaptation from at most "
                      f"{MAX_SHOTS} images", UserWarning, stacklevel=3)


def stylize(x: Tensor, style: str) -> Tensor:
    """A target-domain style shift of ``[N, C, H, W]`` images in [0, 1]: ``gray_background`` (``0.35 + 0.65 x``),
    ``inverted`` (``1 - x``) or ``thick`` (3x3 dilation)."""
    check_choice("style", style, STYLES)
    if style == "gray_background":
        return 0.35 + 0.65 * x
    if style == "inverted":
        return 1 - x
    return F.max_pool2d(x, 3, stride=1, padding=1)


class DirectionFeatures(nn.Module):
    """The fixed feature space ``f`` of the DDC loss: pixels plus a random ReLU conv (images) or ReLU linear
    (vectors) encoder, frozen."""

    def __init__(self, shape: tuple[int, ...], width: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        if len(shape) == 3:
            self.enc = nn.Sequential(nn.Conv2d(shape[0], width, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
        else:
            self.enc = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(shape).prod()), width * 4), nn.ReLU())
        for p in self.enc.parameters():
            p.data = torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 0.1)
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x.flatten(1), self.enc(x)], 1)


MAKE_SOURCE = "lvi fit --config configs/diffusion/ddpm_digits8.yaml"


def load_source(source: Union[str, DDPM]) -> DDPM:
    """A source DDPM from a module or a ``ddpm`` checkpoint path. A class-conditional source is used
    unconditionally (its null label), as is the adapted model."""
    if isinstance(source, DDPM):
        return source
    if not isinstance(source, str):
        raise ValueError(f"source={source!r}; allowed: a DDPM module or the path of a ddpm checkpoint")
    return read_producer(source, arg="source", consumer="phasic_adapt", families=("ddpm",), make=MAKE_SOURCE)[0]


@FAMILIES.register("phasic_adapt")
class PhasicAdapt(DDPM):
    """Few-shot adaptation of a source DDPM by phasic content fusion and the DDC loss (Hu et al.).

    Train on batches whose ``x`` are the target shots (at most 10; more warn).

    Args:
        source: the source :class:`DDPM` (module) or its checkpoint path; on reload from this family's own
            checkpoint it may be None (the architecture comes from ``source_hparams``, the weights from the state).
        source_hparams: the source's architecture arguments (filled from ``source``).
        mode: ``phasic`` (the paper) or ``finetune`` (plain DDPM loss on the shots at every t; the baseline).
        phases: ``phasic`` (fusion at t >= t_split, detail below), ``none`` (both at every t) or ``reversed``.
        t_split: the phase boundary as a fraction of T, in (0, 1).
        ddc_weight: weight of the DDC (content-fusion) loss; detail_weight: weight of the detail loss.
        n_source: number of source-content samples ``x_A`` drawn from the source model (once).
        source_batch: source-content images per step.
        feature_width: channels of the random encoder of ``f``; feature_seed: its seed.
        **kwargs: the shared ``VIModule`` arguments (plugins, optimizer, lr, ...).
    """

    def __init__(self, source: Union[str, DDPM, None] = None, source_hparams: dict | None = None,
                 mode: str = "phasic", phases: str = "phasic", t_split: float = 0.5, ddc_weight: float = 1.0,
                 detail_weight: float = 1.0, n_source: int = 256, source_batch: int = 64, feature_width: int = 16,
                 feature_seed: int = 0, **kwargs: Any) -> None:
        check_choice("mode", mode, MODES)
        check_choice("phases", phases, PHASES)
        check_range("t_split", t_split, 0.0, 1.0, low_open=True, high_open=True)
        check_range("ddc_weight", ddc_weight, 0.0)
        check_range("detail_weight", detail_weight, 0.0)
        check_range("n_source", n_source, 1)
        check_range("source_batch", source_batch, 1)
        src = load_source(source) if source is not None else None
        if src is not None:
            source_hparams = {k: (list(v) if isinstance(v, tuple) else v) for k, v in src.hparams.items() if k in ARCH_KEYS}
        if source_hparams is None:
            raise ValueError("phasic_adapt needs source (a DDPM module or checkpoint path) or source_hparams; got neither")
        for k in (*ARCH_KEYS, "p_uncond", "ema_decay", "guidance_scale"):  # the source's (CLI fills DDPM defaults)
            kwargs.pop(k, None)
        kwargs.setdefault("lr", 1e-3)
        object.__setattr__(self, "_source_shape", tuple(int(v) for v in source_hparams["input_shape"]))
        super().__init__(**source_hparams, **kwargs)
        self.save_hyperparameters(ignore=["source"])
        # the source's architecture wins over DDPM defaults a CLI may have recorded as "given" hyper-parameters
        self.hparams.update(source_hparams)
        self.hparams["source_hparams"] = source_hparams
        self.source_net = copy.deepcopy(src.network(use_ema=True)) if src is not None else copy.deepcopy(self.net)
        if src is not None:
            self.net.load_state_dict(self.source_net.state_dict())
        self.source_net.requires_grad_(False)
        self.features = DirectionFeatures(self.data_shape, feature_width, feature_seed)
        self.register_buffer("source_content", torch.zeros(0, *self.data_shape))
        object.__setattr__(self, "_source", src)  # not a submodule: only its samples and net copy are kept
        self.term_weights = {"detail": detail_weight, "ddc": ddc_weight} if mode == "phasic" else {"mse": 1.0}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "source_content"
        if key in state_dict:  # the saved source content sets the buffer's size
            self.source_content = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def model_shape(self) -> tuple[int, ...]:
        return self._source_shape

    # -- source content ----------------------------------------------------------------------------
    @torch.no_grad()
    def source_samples(self) -> Tensor:
        """The fixed source-content images ``x_A`` (model space): ``n_source`` samples of the source model."""
        if self.source_content.shape[0] == 0:
            if self._source is None:
                raise ValueError("phasic_adapt: no source_content in the state and no source model to sample from")
            g = torch.Generator().manual_seed(int(self.hparams.feature_seed))
            was = self._source.training
            x = self._source.sample(int(self.hparams.n_source), generator=g)  # class-conditional: all classes
            self._source.train(was)
            self.source_content = self.to_model_space(x).to(self.source_content.device)
        return self.source_content

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, eta: float | None = None, use_ema: bool | None = True, **_: Any) -> Tensor:
        """``n`` unconditional samples of the adapted model in data space."""
        fn = self.model_fn(None, 1.0, use_ema=use_ema)
        return self.from_model_space(self.run_sampler(fn, (n, *self.data_shape), sampler, steps, generator, eta))

    def direction(self, x_B: Tensor, x_A: Tensor) -> Tensor:
        """The global DDC direction ``w = mean f(x_B) - mean f(x_A)`` (target shots minus source content)."""
        with torch.no_grad():
            return self.features(x_B).mean(0) - self.features(x_A).mean(0)

    def phase_timesteps(self, n: int, which: str, device: torch.device) -> Tensor:
        """Timesteps of the ``detail`` or ``fuse`` phase under ``phases``."""
        T = self.schedule.num_train_timesteps
        split = max(1, min(T - 1, int(round(self.hparams.t_split * T))))
        phases = self.hparams.phases
        if phases == "none":
            return torch.randint(0, T, (n,), device=device)
        large = (which == "fuse") == (phases == "phasic")
        return torch.randint(split, T, (n,), device=device) if large else torch.randint(0, split, (n,), device=device)

    def detail_loss(self, x_B: Tensor) -> Tensor:
        """DDPM loss on the target shots at the detail-phase timesteps."""
        t = self.phase_timesteps(x_B.shape[0], "detail", x_B.device)
        noise = torch.randn_like(x_B)
        out = self.net(self.schedule.add_noise(x_B, noise, t), t, None, None)
        return F.mse_loss(out, self.schedule.target(x_B, noise, t))

    def ddc_loss(self, x_B: Tensor) -> Tensor:
        """Phasic content fusion with the DDC loss (Eq. 8) on noised source content at the fusion-phase
        timesteps: ``|| f(x0_adapt) - f(x0_src) - w ||^2`` (summed over features, mean over images)."""
        x_A_all = self.source_samples()
        idx = torch.randint(0, x_A_all.shape[0], (int(self.hparams.source_batch),), device=x_A_all.device)
        x_A = x_A_all[idx]
        t = self.phase_timesteps(x_A.shape[0], "fuse", x_A.device)
        x_t = self.schedule.add_noise(x_A, torch.randn_like(x_A), t)
        x0_adapt = self.schedule.split(self.net(x_t, t, None, None), x_t, t)[0]
        with torch.no_grad():
            x0_src = self.schedule.split(self.source_net(x_t, t, None, None), x_t, t)[0]
        w = self.direction(x_B, x_A_all)
        return ((self.features(x0_adapt) - self.features(x0_src) - w) ** 2).sum(1).mean()

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x_B = self.to_model_space(batch["x"])
        check_shots(x_B.shape[0])
        if self.hparams.mode == "finetune":
            return {"mse": self.diffusion_loss(x_B)}
        return {"detail": self.detail_loss(x_B), "ddc": self.ddc_loss(x_B)}


class FewShotDigitsDataModule(InMemoryDataModule):
    """``shots`` scikit-learn 8x8 digits in a target ``style`` (see :func:`stylize`), every split the same shots.

    Args:
        shots: number of target images (<= 10 for the method; more warn in training).
        style: ``gray_background``, ``inverted`` or ``thick``.
        seed: which shots (a random subset of the 1,797 digits).
    """

    def __init__(self, shots: int = 10, style: str = "gray_background", seed: int = 0, batch_size: int = 10,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, 0.0, 0.0, seed, num_workers)
        check_range("shots", shots, 1)
        check_choice("style", style, STYLES)
        self.shots, self.style = int(shots), style

    def generate(self) -> dict[str, Tensor]:
        x = load_digits_tensors(8)["x"]
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))[: self.shots]
        return {"x": stylize(x[idx], self.style)}

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            data = self.generate()
            self.splits = {k: dict(data) for k in ("train", "val", "test")}
