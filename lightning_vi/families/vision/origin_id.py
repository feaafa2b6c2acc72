"""ID^2 origin identification (P46; Wang et al., "Generalizable Origin Identification for Text-Guided
Image-to-Image Diffusion Models"): given a translated image, retrieve the origin it was made from.

The paper's observation: the VAE embeddings of a translation and of its origin differ by (approximately) a
linear transformation, so one linear map ``W`` learned on (translation, origin) pairs from one image-to-image
model transfers to other models. Here, on this package's pieces:

- ``embed``: the posterior mean ``mu`` of :class:`~lightning_vi.families.vae.vae.VAE` (``encode``).
- image-to-image "models": :func:`sdedit` (Meng et al. 2022, SDEdit) with a trained
  :class:`~lightning_vi.families.diffusion.ddpm.DDPM`: noise the origin with the forward process
  ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (DDPM Eq. 4) to ``t ~ strength * T`` and run the reverse
  sampler from there (diffusers' img2img ``get_timesteps`` convention).
- ``W`` (``[d, d]``, queries map as ``z_t @ W``): :func:`fit_linear_map`, either by gradient descent on the
  mean squared error (the paper trains ``W``) or in closed form (ridge least squares
  ``W = (Z_t^T Z_t + n lam I)^{-1} Z_t^T Z_o``, the minimiser of ``mean ||Z_t W - Z_o||^2 + lam ||W||_F^2``).
- retrieval: every mapped query is compared with every (unmapped) origin embedding by cosine similarity;
  :func:`mean_average_precision` scores the ranking (one relevant origin per query: AP = 1 / rank).

Run ``python -m lightning_vi.families.vision.origin_id --config configs/vision/origin_id.yml`` for the whole
benchmark (docs/origin_id.md).
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.families.diffusion.ddpm import DDPM, make_scheduler
from lightning_vi.families.diffusion.sample_loop import randn, sample_loop
from lightning_vi.families.vae.vae import VAE

__all__ = ["sdedit", "embed", "fit_linear_map", "apply_map", "cosine_scores", "mean_average_precision",
           "train_module", "faded", "make_pairs", "origin_id_benchmark", "FIT_METHODS"]

FIT_METHODS = ("gd", "lstsq")


# -- image-to-image translation ------------------------------------------------------------------------
@torch.no_grad()
def sdedit(model: DDPM, x: Tensor, strength: float, steps: int = 10, sampler: str = "ddim", eta: float = 0.0,
           generator: torch.Generator | None = None, use_ema: bool | None = True) -> Tensor:
    """SDEdit (Meng et al. 2022, Alg. 1) of data-space images ``x`` with an unconditional ``model``.

    The ``steps``-step schedule of ``sampler`` is cut to its last ``int(steps * strength)`` timesteps; ``x`` is
    noised to the first kept timestep ``t0`` with the forward process (DDPM Eq. 4) and denoised from there.
    ``strength`` in (0, 1]: 1 = sample from (almost) pure noise, small = stay close to ``x``.
    """
    check_range("strength", strength, 0.0, 1.0, low_open=True)
    check_range("steps", steps, 1)
    if tuple(x.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"sdedit: images of shape {list(x.shape[1:])} do not match the model's input_shape "
                         f"{list(model.data_shape)}")
    scheduler = make_scheduler(sampler, model.schedule, steps, eta, model.hparams.timestep_spacing)
    keep = max(1, int(steps * strength))
    scheduler.timesteps = scheduler.timesteps[len(scheduler.timesteps) - keep:]
    t0 = scheduler.timesteps[0]
    x0 = model.to_model_space(x)
    x_t = model.schedule.add_noise(x0, randn(x0.shape, generator, like=x0), t0)
    out = sample_loop(model.model_fn(None, 1.0, use_ema=use_ema), scheduler, generator=generator, x_T=x_t)
    return model.from_model_space(out)


@torch.no_grad()
def embed(vae: VAE, x: Tensor, batch_size: int = 512) -> Tensor:
    """VAE embeddings: the posterior means ``mu`` of ``vae.encode`` (``[N, latent_dim]``)."""
    vae.eval()
    return torch.cat([vae.encode(x[i:i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])


# -- the linear map --------------------------------------------------------------------------------------
def check_pairs(z_trans: Tensor, z_orig: Tensor, what: str = "pairs") -> None:
    """Both ``[N, d]``, the same ``N`` (one origin per translation) and the same ``d``."""
    if z_trans.ndim != 2 or z_orig.ndim != 2:
        raise ValueError(f"{what}: embeddings must be [N, d] matrices, got translations {list(z_trans.shape)} "
                         f"and origins {list(z_orig.shape)}")
    if z_trans.shape[0] != z_orig.shape[0]:
        raise ValueError(f"{what}: {z_trans.shape[0]} translations but {z_orig.shape[0]} origins; each translation "
                         f"needs exactly one origin (row i of both is one pair)")
    if z_trans.shape[1] != z_orig.shape[1]:
        raise ValueError(f"{what}: translation latents have dim {z_trans.shape[1]} but origin latents dim "
                         f"{z_orig.shape[1]}; both must come from the same VAE (same latent_dim)")


def fit_linear_map(z_trans: Tensor, z_orig: Tensor, method: str = "lstsq", ridge: float = 0.0, steps: int = 2000,
                   lr: float | None = None, init: Tensor | None = None) -> Tensor:
    """``W = argmin_W mean_i ||z_trans_i W - z_orig_i||^2 + ridge ||W||_F^2`` (``[d, d]``).

    ``method="lstsq"``: the closed form ``(Z_t^T Z_t + n ridge I)^{-1} Z_t^T Z_o`` (normal equations, solved
    with ``torch.linalg.lstsq`` on the ridge-augmented system). ``method="gd"``: full-batch gradient descent
    from ``init`` (default the identity) with step ``lr`` (default ``1 / L``, ``L`` the gradient's Lipschitz
    constant ``2 (lambda_max(Z_t^T Z_t) / n + ridge)``).
    """
    check_choice("method", method, FIT_METHODS)
    check_range("ridge", ridge, 0.0)
    check_pairs(z_trans, z_orig, "fit_linear_map")
    zt, zo = z_trans.detach().double(), z_orig.detach().double()
    n, d = zt.shape
    if method == "lstsq":
        a, b = zt, zo
        if ridge > 0:  # [Z_t; sqrt(n ridge) I] W = [Z_o; 0]
            a = torch.cat([zt, (n * ridge) ** 0.5 * torch.eye(d, dtype=zt.dtype)])
            b = torch.cat([zo, torch.zeros(d, d, dtype=zo.dtype)])
        return torch.linalg.lstsq(a, b, driver="gelsd").solution.to(z_trans.dtype)
    check_range("steps", steps, 1)
    if lr is None:
        lr = 1.0 / (2 * (torch.linalg.eigvalsh(zt.T @ zt / n)[-1].item() + ridge))
    w = (torch.eye(d, dtype=zt.dtype) if init is None else init.detach().double().clone()).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)
    for _ in range(steps):
        loss = ((zt @ w - zo) ** 2).sum(1).mean() + ridge * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach().to(z_trans.dtype)


def apply_map(z_trans: Tensor, w: Tensor) -> Tensor:
    """Mapped query embeddings ``z_trans @ W``."""
    if w.ndim != 2 or w.shape[0] != z_trans.shape[-1]:
        raise ValueError(f"apply_map: W of shape {list(w.shape)} cannot map latents of dim {z_trans.shape[-1]}; "
                         f"W must be [{z_trans.shape[-1]}, d]")
    return z_trans @ w


# -- retrieval -------------------------------------------------------------------------------------------
def cosine_scores(queries: Tensor, gallery: Tensor) -> Tensor:
    """Cosine similarity of every query with every gallery item, ``[Q, G]``."""
    if queries.shape[-1] != gallery.shape[-1]:
        raise ValueError(f"cosine_scores: queries of dim {queries.shape[-1]} vs gallery of dim {gallery.shape[-1]}")
    return F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T


def mean_average_precision(scores: Tensor, relevant: Tensor) -> float:
    """mAP of the rankings ``scores [Q, G]`` (higher = better) against the boolean ``relevant [Q, G]``.

    AP of a query = mean over its relevant items r of precision@rank(r); with one relevant origin per query
    AP = 1 / rank, so mAP is the mean reciprocal rank. Among equal scores a relevant item ranks last
    (pessimistic ties: a constant score gives no credit).
    """
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"mean_average_precision: scores {list(scores.shape)} and relevant "
                         f"{list(relevant.shape)} must be the same [Q, G] shape")
    rel = relevant.bool()
    if not rel.any(1).all():
        raise ValueError("mean_average_precision: every query needs at least one relevant gallery item")
    # sort by score descending, irrelevant before relevant among ties (stable two-key sort)
    order = torch.argsort(rel.float(), dim=1, stable=True)
    order = order.gather(1, torch.argsort(-scores.gather(1, order), dim=1, stable=True))
    rel_sorted = rel.gather(1, order).double()
    precision = rel_sorted.cumsum(1) / torch.arange(1, rel.shape[1] + 1, dtype=torch.float64)
    ap = (precision * rel_sorted).sum(1) / rel_sorted.sum(1)
    return float(ap.mean())


# -- training and the benchmark -------------------------------------------------------------------------
def train_module(model: Any, x: Tensor, steps: int, batch_size: int = 128, lr: float = 2e-3,
                 generator: torch.Generator | None = None) -> Any:
    """Plain-PyTorch Adam on the family's own ``objective`` (weighted by ``term_weights``) over images ``x``."""
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
        out = model.objective({"x": x[idx]})
        loss = sum(w * out[k] for k, w in model.term_weights.items() if k in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(model, "update_ema"):
            model.update_ema()
    return model.eval()


def faded(x: Tensor) -> Tensor:
    """The translation target domain: low-contrast digits on a grey background, ``0.3 + 0.5 x``."""
    return 0.3 + 0.5 * x


def make_pairs(seed: int = 0, latent_dim: int = 16, train_steps: int = 2000, strength: float = 0.3,
               sample_steps: int = 5, models: dict[str, Any] | None = None) -> dict[str, Any]:
    """Origins and their translations by two image-to-image models, embedded by one VAE (8x8 digits).

    Both models are SDEdit (at ``strength``, ``sample_steps`` DDIM steps) with a DDPM trained on the
    :func:`faded` domain (the "text prompt" of this toy): model A an MLP of width 64, model B trained
    from another seed with width 96. The VAE (MLP, ``latent_dim``) is trained on origins and faded digits.
    Returns ``x`` (shuffled origins), ``xa``/``xb`` (translations) and ``zo``/``za``/``zb`` (their ``mu``).
    """
    from lightning_vi.data.digits import load_digits_tensors

    g = torch.Generator().manual_seed(seed)
    x = load_digits_tensors()["x"]
    x = x[torch.randperm(x.shape[0], generator=g)]
    models = dict(models or {})
    common = dict(input_shape=[1, 8, 8], depth=2, num_train_timesteps=100, data_scale=0.5, data_shift=0.5)
    if "vae" not in models:
        torch.manual_seed(seed)
        models["vae"] = train_module(VAE(input_shape=[1, 8, 8], latent_dim=latent_dim, hidden_dims=[64]),
                                     torch.cat([x, faded(x)]), train_steps, generator=g)
    if "a" not in models:
        torch.manual_seed(seed + 100)
        models["a"] = train_module(DDPM(hidden=64, **common), faded(x), train_steps, generator=g)
    if "b" not in models:
        torch.manual_seed(seed + 200)
        models["b"] = train_module(DDPM(hidden=96, **common), faded(x), train_steps, generator=g)
    xa = sdedit(models["a"], x, strength, sample_steps, generator=g).clamp(0, 1)
    xb = sdedit(models["b"], x, strength, sample_steps, generator=g).clamp(0, 1)
    vae = models["vae"]
    return {"x": x, "xa": xa, "xb": xb, "zo": embed(vae, x), "za": embed(vae, xa), "zb": embed(vae, xb),
            "models": models}


def origin_id_benchmark(seed: int = 0, num_train: int = 1000, ridge: float = 1e-4, gd_steps: int = 3000,
                        **kwargs: Any) -> dict[str, float]:
    """The ID^2 protocol: ``W`` fit on the first ``num_train`` model-A pairs of :func:`make_pairs`; each
    held-out A- or B-translation queries all held-out origins. mAPs of raw embeddings, the closed-form and
    the gradient-descent ``W``, and the relative difference of the two ``W``."""
    p = make_pairs(seed, **kwargs)
    zo, za, zb = p["zo"], p["za"], p["zb"]
    tr, te = slice(0, num_train), slice(num_train, None)
    w_gd = fit_linear_map(za[tr], zo[tr], "gd", ridge, gd_steps)
    w_ls = fit_linear_map(za[tr], zo[tr], "lstsq", ridge)
    rel = torch.eye(zo[te].shape[0], dtype=torch.bool)

    def m(q: Tensor) -> float:
        return mean_average_precision(cosine_scores(q, zo[te]), rel)

    return {"raw_a": m(za[te]), "raw_b": m(zb[te]), "lstsq_a": m(apply_map(za[te], w_ls)),
            "lstsq_b": m(apply_map(zb[te], w_ls)), "gd_a": m(apply_map(za[te], w_gd)),
            "gd_b": m(apply_map(zb[te], w_gd)),
            "w_rel_diff": float((w_gd - w_ls).norm() / w_ls.norm())}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """``python -m lightning_vi.families.vision.origin_id --config configs/vision/origin_id.yml``."""
    import yaml

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="YAML of origin_id_benchmark arguments (plus optional seeds)")
    args = p.parse_args(argv)
    cfg: dict[str, Any] = {}
    if args.config:
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
    seeds = cfg.pop("seeds", [cfg.pop("seed", 0)])
    results = {}
    for s in seeds:
        results[s] = origin_id_benchmark(seed=int(s), **cfg)
        print(json.dumps({"seed": s, **{k: round(v, 4) for k, v in results[s].items()}}))
    return results


if __name__ == "__main__":
    main()
