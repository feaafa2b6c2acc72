"""ScoreDVI (P13: Cheng et al. 2023, "Score-prior guided deep variational inference for unsupervised
real-world single image denoising"): per-image, unsupervised denoising by deep variational inference.

Model of one noisy image ``y = x + n`` (pixels ``i``):

* **Image posterior.** A small CNN ``f_theta(y)`` (deep-image-prior-like, one set of weights per image) outputs
  ``q(x) = N(mu, diag s^2)``.
* **Noise.** A non-i.i.d. Gaussian mixture: pixel ``i`` has component ``z_i in {0..K-1}`` with weights ``pi``;
  component 0 has a spatially varying variance map ``v_0(i) = exp(2 * upsample(g))`` (``g`` a coarse grid),
  components ``k >= 1`` are heavier (a global variance each). The noise posterior is ``q(z_i = k) = r_ik``,
  taken at its optimum for the current ``q(x)`` (the mean-field E-step,
  ``r_ik ∝ pi_k exp(E_q log N(y_i; x_i, v_k(i)))``), and the variance map is a point (variational-EM) estimate.
* **Score prior.** ``E_q log p(x)`` is not available; only its gradient is needed. With an MMSE denoiser
  ``D_sigma`` at level ``sigma``, Tweedie's formula gives the score of the sigma-smoothed prior,
  ``grad log p_sigma(x) = (D_sigma(x) - x) / sigma^2``; the surrogate ``sum_i stopgrad(score_i) * x~_i`` at a
  reparameterised sample ``x~ ~ q`` has that gradient. Two denoisers: the closed-form MMSE (Wiener)
  denoiser of a full-covariance (non-i.i.d.) Gaussian image prior ``N(m, C)`` fitted on clean training images
  (disjoint from the images denoised), ``D_sigma(x) = m + C (C + sigma^2 I)^-1 (x - m)``
  (:class:`GaussianMMSEDenoiser`), or this package's trained ``ddpm`` through Tweedie's formula, level ``sigma``
  mapped to the timestep with ``abar = 1/(1 + (sigma/scale)^2)`` on the scaled image (:class:`DDPMDenoiser`).
* **Noise-aware prior assignment.** Several denoiser levels ``sigma_j``; pixel ``i`` takes the score of level
  ``j`` with weight ``w_ij ∝ exp(-(log sigma_j - log s_i)^2 / (2 tau^2))``, ``s_i`` the per-pixel noise std left
  in the sample ``x~`` (the posterior std, which the non-i.i.d. noise model drives up where the observation
  noise is large): each denoiser counts where its level matches the local noise of what it denoises, which is
  where Tweedie's formula is exact (our reading of the paper's noise-aware assignment, Sec. 3.3). Note: on the
  digits benchmark this weighting is not better than the constant one (``weighting="uniform"``), with either
  the Gaussian or the ddpm prior, see docs/score_dvi.md.

ELBO per image (maximised with Adam for a fixed number of steps, no early stopping):
``sum_i sum_k r_ik [log N(y_i; mu_i, v_k(i)) - s_i^2/(2 v_k(i)) + log pi_k - log r_ik] + E_q log p(x) + H[q(x)]``.

All images are optimised in one vectorised problem: the per-image networks are grouped convolutions.
Ablations (``noise_model="white"``: one i.i.d. Gaussian; ``prior="none"``; ``weighting="uniform"``) and the
deep-image-prior baseline (:func:`dip_fit`) share the code.

Run ``python -m lightning_vi.families.vision.score_dvi --out DIR`` (options in ``configs/vision/score_dvi.yml``)
for the benchmark on 20 digits with spatially varying mixed Gaussian noise.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

NOISE_MODELS = ("mixture", "white")
PRIORS = ("gaussian", "ddpm", "none")
WEIGHTINGS = ("noise_aware", "uniform")
NOISE_GUESS_RANGE = (1e-3, 1.0)


def psnr(x: Tensor, ref: Tensor) -> Tensor:
    """Per-image PSNR in dB of ``x`` against ``ref`` (both ``[N, C, H, W]`` in [0, 1])."""
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def check_images(y: Tensor) -> None:
    if not isinstance(y, Tensor) or y.dim() != 4 or y.shape[1] != 1 or min(y.shape[2:]) < 4:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"images have shape {shape}; expected [N, 1, H, W] with H, W >= 4 (grayscale batch)")


def check_noise_guess(sigma: float) -> None:
    lo, hi = NOISE_GUESS_RANGE
    if not (isinstance(sigma, (int, float)) and lo <= float(sigma) <= hi):
        raise ValueError(f"noise-level guess sigma={sigma!r} is out of range; allowed: [{lo}, {hi}] "
                         "(noise std on the [0, 1] intensity scale)")


def mixed_noise(x: Tensor, generator: torch.Generator, sigma_range: tuple[float, float] = (0.05, 0.3),
                outlier_fraction: float = 0.1, outlier_sigma: float = 0.6) -> tuple[Tensor, Tensor]:
    """Spatially varying mixed Gaussian noise: a smooth std map rising linearly from ``sigma_range[0]`` to
    ``sigma_range[1]`` along a random direction, and a fraction of pixels drawn from ``N(0, outlier_sigma^2)``.
    Returns ``(y, std)``, ``std`` the per-pixel noise std actually used."""
    n, _, h, w = x.shape
    theta = torch.rand(n, generator=generator) * 2 * math.pi
    u = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    v = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    t = torch.cos(theta).view(n, 1, 1, 1) * u + torch.sin(theta).view(n, 1, 1, 1) * v
    t = (t - t.amin((2, 3), keepdim=True)) / (t.amax((2, 3), keepdim=True) - t.amin((2, 3), keepdim=True))
    std = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * t
    out = torch.rand(x.shape, generator=generator) < outlier_fraction
    std = torch.where(out, torch.full_like(std, outlier_sigma), std)
    return x + std * torch.randn(x.shape, generator=generator), std


class GaussianMMSEDenoiser:
    """Closed-form MMSE denoiser of a full-covariance Gaussian prior ``N(m, C)`` on flattened images:
    ``D_sigma(x) = m + C (C + sigma^2 I)^-1 (x - m)``; :meth:`score` is Tweedie's ``(D_sigma(x) - x)/sigma^2``."""

    def __init__(self, clean: Tensor, levels: Sequence[float], jitter: float = 1e-4) -> None:
        check_images(clean)
        self.shape = clean.shape[1:]
        z = clean.flatten(1).double()
        self.mean = z.mean(0)
        c = torch.cov(z.T) + jitter * torch.eye(z.shape[1], dtype=z.dtype)
        self.levels = torch.tensor([float(s) for s in levels])
        for s in levels:
            check_noise_guess(s)
        eye = torch.eye(z.shape[1], dtype=z.dtype)
        # A_j = C (C + s_j^2 I)^-1 (symmetric as C and the inverse commute)
        self.gain = torch.stack([torch.linalg.solve(c + s * s * eye, c).T for s in levels]).float()
        self.mean = self.mean.float()

    def denoise(self, x: Tensor) -> Tensor:
        """``[L, N, 1, H, W]``: the MMSE estimate of each level for each image."""
        z = x.flatten(1) - self.mean
        d = self.mean + torch.einsum("lij,nj->lni", self.gain, z)
        return d.reshape(len(self.levels), *x.shape)

    def score(self, x: Tensor) -> Tensor:
        s2 = self.levels.pow(2).view(-1, 1, 1, 1, 1)
        return (self.denoise(x) - x.unsqueeze(0)) / s2


class DDPMDenoiser:
    """MMSE denoiser from this package's trained :class:`~lightning_vi.families.diffusion.ddpm.DDPM` by
    Tweedie's formula (the paper's "cheap MMSE denoisers", Sec. 3.2, with a diffusion model as the denoiser).

    A level-``sigma`` noisy image ``x = x0 + sigma n`` is, in the ddpm's model space ``z = (x - shift)/scale``,
    ``z0 + (sigma/scale) n``; scaled by ``sqrt(abar)`` it is the forward-process state
    ``x_t = sqrt(abar) z0 + sqrt(1 - abar) n`` exactly when ``abar = 1 / (1 + (sigma/scale)^2)``. Each level takes
    the timestep whose ``abar_t`` is nearest that value; then
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps(x_t, t)) / sqrt(abar_t)`` (DDPM Eq. 4 solved for ``x0``, the
    posterior mean for an MMSE-trained ``eps``), mapped back to data space, is ``D_sigma(x)``, and :meth:`score`
    is ``(D_sigma(x) - x) / sigma^2``.

    Args:
        model: a ``DDPM`` module or the path of a Lightning checkpoint of one (unconditional use: class
            conditional models get no label).
        levels: denoiser noise stds (data scale), each inside the range of the model's schedule.
        use_ema: use the EMA weights when the model has them.
    """

    def __init__(self, model, levels: Sequence[float], use_ema: bool = True) -> None:
        from lightning_vi.families.diffusion.ddpm import DDPM

        if isinstance(model, (str, Path)):
            model = DDPM.load_from_checkpoint(str(model), map_location="cpu")
        if not isinstance(model, DDPM):
            raise ValueError(f"model is a {type(model).__name__}; expected a DDPM module or a checkpoint path of one")
        if len(model.data_shape) != 3 or model.data_shape[0] != 1 or tuple(model.data_shape) != tuple(model.input_shape):
            raise ValueError(f"ddpm runs on shape {list(model.data_shape)}; expected a pixel-space grayscale "
                             "model with input_shape [1, H, W]")
        self.model = model.eval()
        self.net = model.network(use_ema)
        self.shape = tuple(model.data_shape)
        scale = float(model.hparams.data_scale)
        abar = model.schedule.alphas_cumprod.double()
        sig = scale * ((1 - abar) / abar).sqrt()          # data-scale noise std of each timestep
        lo, hi = float(sig[0]), float(sig[-1])
        ts = []
        for s in levels:
            check_noise_guess(s)
            if not lo <= float(s) <= hi:
                raise ValueError(f"denoiser level sigma={s!r} is out of range of the ddpm's schedule; allowed: "
                                 f"[{lo:.4g}, {hi:.4g}] (timesteps 0..{len(abar) - 1})")
            target = 1.0 / (1.0 + (float(s) / scale) ** 2)
            ts.append(int((abar - target).abs().argmin()))
        self.levels = torch.tensor([float(s) for s in levels])
        self.timesteps = torch.tensor(ts)
        self.abar = abar[self.timesteps].float()

    @torch.no_grad()
    def denoise(self, x: Tensor) -> Tensor:
        """``[L, N, 1, H, W]``: the Tweedie (MMSE) estimate of each level for each image."""
        n_lev = len(self.levels)
        z = self.model.to_model_space(x).unsqueeze(0).expand(n_lev, *x.shape)
        a = self.abar.view(-1, 1, 1, 1, 1)
        x_t = (a.sqrt() * z).reshape(-1, *x.shape[1:])
        t = self.timesteps.repeat_interleave(x.shape[0])
        out = self.net(x_t, t, None, None).view(n_lev, *x.shape)
        if self.model.schedule.prediction_type == "epsilon":
            x0 = (a.sqrt() * z - (1 - a).sqrt() * out) / a.sqrt()
        else:
            x0 = self.model.schedule.split(out.reshape(x_t.shape), x_t, t)[0].view(n_lev, *x.shape)
        return self.model.from_model_space(x0)

    def score(self, x: Tensor) -> Tensor:
        s2 = self.levels.pow(2).view(-1, 1, 1, 1, 1)
        return (self.denoise(x) - x.unsqueeze(0)) / s2


class GroupedCNN(nn.Module):
    """``n`` independent small CNNs (3x3 convs, LeakyReLU) run as grouped convolutions: input ``[N, 1, H, W]``,
    output ``[N, out, H, W]``; image ``k`` only ever sees network ``k``."""

    def __init__(self, n: int, width: int = 32, depth: int = 3, out: int = 2) -> None:
        super().__init__()
        self.n, self.out = n, out
        chans = [1] + [width] * (depth - 1) + [out]
        self.convs = nn.ModuleList(nn.Conv2d(n * a, n * b, 3, padding=1, groups=n) for a, b in zip(chans, chans[1:]))

    def forward(self, y: Tensor) -> Tensor:
        n, _, h, w = y.shape
        z = y.reshape(1, n, h, w)
        for k, conv in enumerate(self.convs):
            z = conv(z)
            if k < len(self.convs) - 1:
                z = F.leaky_relu(z, 0.1)
        return z.reshape(n, self.out, h, w)


def score_dvi(y: Tensor, denoiser: GaussianMMSEDenoiser | DDPMDenoiser | None, steps: int = 400, lr: float = 1e-2,
              noise_model: str = "mixture", prior: str = "gaussian", weighting: str = "noise_aware",
              sigma_guess: float = 0.1, components: int = 2, grid: int = 4, tau: float = 0.5, width: int = 32,
              seed: int = 0) -> dict[str, Tensor]:
    """Maximise the ScoreDVI ELBO (module docstring) jointly over the ``N`` images ``y`` ``[N, 1, H, W]``.

    Returns ``x`` (the posterior mean ``mu``), ``std`` (posterior std), ``noise_std`` (estimated per-pixel
    noise std), ``resp`` (``[N, K, H, W]`` responsibilities) and ``elbo`` (per step, mean over images)."""
    check_images(y)
    check_noise_guess(sigma_guess)
    for name, val, allowed in (("noise_model", noise_model, NOISE_MODELS), ("prior", prior, PRIORS),
                               ("weighting", weighting, WEIGHTINGS)):
        if val not in allowed:
            raise ValueError(f"{name}={val!r} is unknown; allowed: {', '.join(allowed)}")
    if prior != "none" and denoiser is None:
        raise ValueError(f"prior={prior!r} needs a denoiser; pass one or prior='none'")
    if prior == "gaussian" and isinstance(denoiser, DDPMDenoiser):
        prior = "ddpm"  # the default name; the prior is whichever denoiser is passed
    if denoiser is not None and tuple(denoiser.shape) != tuple(y.shape[1:]):
        raise ValueError(f"denoiser was fitted on images of shape {tuple(denoiser.shape)}, got {tuple(y.shape[1:])}")
    torch.manual_seed(seed)
    n, _, h, w = y.shape
    k_comp = components if noise_model == "mixture" else 1
    if k_comp < 1:
        raise ValueError(f"components={components!r} is out of range; allowed: >= 1")
    net = GroupedCNN(n, width=width, out=2)
    log_g = nn.Parameter(torch.full((n, 1, grid, grid) if noise_model == "mixture" else (n, 1, 1, 1),
                                    math.log(sigma_guess)))
    # heavier components: std = sigma_guess * 4^k
    log_heavy = nn.Parameter(torch.stack([torch.full((n,), math.log(sigma_guess * 4.0 ** k))
                                          for k in range(1, k_comp)], 1) if k_comp > 1 else torch.zeros(n, 0))
    logit_pi = nn.Parameter(torch.tensor([0.0] + [-2.0] * (k_comp - 1)).repeat(n, 1))
    opt = torch.optim.Adam([*net.parameters(), log_g, log_heavy, logit_pi], lr=lr)
    elbos = []
    for _ in range(steps):
        out = net(y)
        mu, log_s = out[:, :1], out[:, 1:].clamp(-8, 2) - 2.0
        s2 = torch.exp(2 * log_s)
        var0 = torch.exp(2 * F.interpolate(log_g, size=(h, w), mode="bilinear", align_corners=True)).expand(n, 1, h, w)
        var = torch.cat([var0, torch.exp(2 * log_heavy).view(n, -1, 1, 1).expand(n, k_comp - 1, h, w)], 1)
        var = var.clamp_min(1e-4)
        log_pi = F.log_softmax(logit_pi, 1).view(n, k_comp, 1, 1)
        # E_q log N(y; x, v_k) per component, and the optimal responsibilities (E-step)
        ell = -0.5 * (torch.log(2 * math.pi * var) + ((y - mu).pow(2) + s2) / var)
        joint = ell + log_pi
        resp = torch.softmax(joint, 1).detach()
        lik = (resp * (joint - torch.log(resp.clamp_min(1e-12)))).flatten(1).sum(1)
        entropy = log_s.flatten(1).sum(1)
        elbo = lik + entropy
        loss = -elbo.sum()
        if prior != "none":
            x_s = mu + log_s.exp() * torch.randn_like(mu)
            with torch.no_grad():
                sc = denoiser.score(x_s)                       # [L, N, 1, H, W]
                if weighting == "noise_aware":
                    # level matched to the residual noise std of the sample x~ (Tweedie is exact there)
                    d = torch.log(denoiser.levels).view(-1, 1, 1, 1, 1) - log_s.unsqueeze(0)
                    wts = torch.softmax(-d.pow(2) / (2 * tau * tau), 0)
                else:
                    wts = torch.full_like(sc, 1.0 / len(denoiser.levels))
                score = (wts * sc).sum(0)
            loss = loss - (score * x_s).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        elbos.append(float(elbo.detach().mean()))
    return {"x": mu.detach(), "std": log_s.exp().detach(), "noise_std": (resp * var).sum(1, keepdim=True).sqrt().detach(),
            "resp": resp, "elbo": torch.tensor(elbos)}


def dip_fit(y: Tensor, clean: Tensor, steps: int = 400, lr: float = 1e-2, width: int = 32,
            seed: int = 0) -> dict[str, Tensor]:
    """Deep-image-prior baseline: the same grouped network (first output channel) fitted by MSE to ``y``; the
    result of each image is taken at its best step by PSNR against ``clean`` (the oracle early stopping of the
    paper's comparison). Returns ``x`` (best-step outputs), ``best_step`` and ``psnr_curve`` ``[steps, N]``."""
    check_images(y)
    if clean.shape != y.shape:
        raise ValueError(f"clean shape {tuple(clean.shape)} differs from noisy shape {tuple(y.shape)}")
    torch.manual_seed(seed)
    net = GroupedCNN(y.shape[0], width=width, out=2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    best = torch.full((y.shape[0],), -float("inf"))
    best_x, best_step, curve = torch.zeros_like(y), torch.zeros(y.shape[0], dtype=torch.long), []
    for t in range(steps):
        mu = net(y)[:, :1]
        loss = (mu - y).pow(2).flatten(1).sum(1).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            p = psnr(mu, clean)
            curve.append(p)
            better = p > best
            best = torch.where(better, p, best)
            best_x[better] = mu[better]
            best_step[better] = t
    return {"x": best_x, "best_step": best_step, "psnr_curve": torch.stack(curve)}


def digits_benchmark(n: int = 20, image_size: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """``n`` test digits (fixed indices), their noisy versions (noise seed ``seed``) and the remaining digits as
    the clean training set of the Gaussian prior."""
    from lightning_vi.data.digits import load_digits_tensors

    x = load_digits_tensors(image_size)["x"]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    test, train = x[idx[:n]], x[idx[n:]]
    y, std = mixed_noise(test, torch.Generator().manual_seed(seed))
    return {"clean": test, "noisy": y, "noise_std": std, "train": train}


OPTIONS = {"n": 20, "image_size": 16, "steps": 400, "lr": 1e-2, "levels": [0.02, 0.05, 0.1, 0.2], "tau": 0.5,
           "sigma_guess": 0.1, "width": 32, "seeds": [0, 1, 2], "ddpm_checkpoint": None}


def run_benchmark(o: argparse.Namespace) -> dict:
    """ScoreDVI, its white-noise ablation and the oracle-stopped DIP on ``o.n`` digits for each noise seed; the
    score prior is the ddpm of ``o.ddpm_checkpoint`` (a ``DDPM`` Lightning checkpoint on ``[1, S, S]`` images in
    [0, 1]) when given, else the Gaussian MMSE denoiser."""
    rows = []
    for seed in o.seeds:
        b = digits_benchmark(o.n, o.image_size, seed)
        den = (DDPMDenoiser(o.ddpm_checkpoint, o.levels) if o.ddpm_checkpoint
               else GaussianMMSEDenoiser(b["train"], o.levels))
        kw = dict(steps=o.steps, lr=o.lr, sigma_guess=o.sigma_guess, tau=o.tau, width=o.width, seed=seed)
        row = {"seed": seed, "noisy": float(psnr(b["noisy"], b["clean"]).mean())}
        row["score_dvi"] = float(psnr(score_dvi(b["noisy"], den, **kw)["x"], b["clean"]).mean())
        row["white_vi"] = float(psnr(score_dvi(b["noisy"], den, noise_model="white", **kw)["x"], b["clean"]).mean())
        row["dip_best_step"] = float(psnr(dip_fit(b["noisy"], b["clean"], o.steps, o.lr, o.width, seed)["x"],
                                          b["clean"]).mean())
        rows.append(row)
        print(json.dumps(row))
    return {"config": vars(o), "per_seed": rows}


def main(argv: Sequence[str] | None = None) -> dict:
    """Benchmark: PSNR (dB, mean over images) of noisy input, ScoreDVI, white-noise VI and best-step DIP."""
    ap = argparse.ArgumentParser(prog="python -m lightning_vi.families.vision.score_dvi", description=main.__doc__)
    ap.add_argument("--config", help="YAML with any of: " + ", ".join(OPTIONS))
    ap.add_argument("--out", help="output directory (required here or in the config)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--sigma-guess", type=float)
    ap.add_argument("--ddpm-checkpoint", help="ddpm checkpoint for the score prior (default: Gaussian MMSE prior)")
    a = ap.parse_args(argv)
    cfg = {}
    if a.config:
        import yaml

        cfg = yaml.safe_load(Path(a.config).read_text()) or {}
        unknown = sorted(set(cfg) - set(OPTIONS) - {"out"})
        if unknown:
            raise ValueError(f"{a.config}: unknown option(s) {unknown}; allowed: out, {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **cfg, **{k: v for k, v in vars(a).items() if v is not None and k != "config"}}
    if not opts.get("out"):
        raise ValueError("no output directory: give --out DIR (or `out:` in the config)")
    check_noise_guess(opts["sigma_guess"])
    out = Path(opts.pop("out"))
    out.mkdir(parents=True, exist_ok=True)
    result = run_benchmark(argparse.Namespace(**opts))
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
