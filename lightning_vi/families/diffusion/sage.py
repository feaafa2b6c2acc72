"""SAGE (Liu et al. 2023, "Discovering failure modes of text-guided diffusion models via adversarial
search", P48): adversarial search over a class-conditional diffusion model's inputs with a classifier
as the surrogate loss, returning *failure cases*: inputs whose samples the classifier assigns to a
class other than the one conditioned on.

Here the text-guided model is this package's class-conditional ``ddpm`` family and the "prompt" is the
class embedding. Pieces (paper Sec. 3):

- **latent search** (:func:`latent_search`, the paper's adversarial latent): optimise the initial
  noise ``x_T`` to maximise the surrogate's cross-entropy for the conditioned class ``y``, with the
  gradient back-propagated through the deterministic DDIM sampler (Song et al. 2021, Eq. 12,
  ``eta = 0``) and a regulariser ``reg * (||x_T|| - sqrt(d))^2`` that keeps ``x_T`` on the Gaussian
  shell where ``N(0, I)`` puts its mass (the paper's "keep the latent likely" constraint). A latent
  stops moving once it is a failure (the search stops at the first fooling latent, as the paper's).
- **gradient-free variant** (:func:`gradient_free_search`): a (1+1) evolution strategy on the shell
  with the same objective and the same number of sampler calls, for samplers whose gradients vanish.
- **embedding search** (:func:`embedding_search`, the paper's adversarial token appended to the
  prompt): a vector ``delta`` added to the conditioning embedding of class ``y`` (the sum the
  denoiser sees), optimised so that generation goes to a chosen target class, with a norm penalty.
- **failure check** (:func:`failure_report`): the surrogate's label ``!= y``; transfer = the same
  judgement by a second, independent classifier; a human proxy = the sample stays in the digit
  distribution (PCA reconstruction error of real digits, :class:`PCADensity`).

Command: ``python -m lightning_vi.families.diffusion.sage --config configs/diffusion/sage.yml --out DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.families.diffusion.ddim_scheduler import DDIMScheduler

__all__ = ["check_pair", "classifier_classes", "ddim_decode", "latent_search", "gradient_free_search",
           "embedding_search", "steer_rate", "failure_report", "PCADensity", "train_digits_classifier",
           "SklearnClassifier", "SearchResult", "main"]


# -- inputs ---------------------------------------------------------------------------------------
def classifier_classes(classifier: Any, input_shape: tuple[int, ...]) -> int:
    """Number of classes a classifier outputs: ``len(classes_)`` for scikit-learn estimators (or
    :class:`SklearnClassifier`), else the last dimension of its logits on one zero image."""
    if hasattr(classifier, "classes_"):
        return len(classifier.classes_)
    with torch.no_grad():
        out = classifier(torch.zeros(1, *input_shape))
    return int(out.shape[-1]) if out.ndim > 1 else 1


def check_pair(model: nn.Module, classifier: Any, arg: str = "classifier") -> None:
    """Raise ``ValueError`` unless ``model`` is a class-conditional ``ddpm`` and ``classifier`` has
    the model's number of classes."""
    k = int(getattr(model, "num_classes", 0) or 0)
    if not hasattr(model, "schedule") or not hasattr(model, "network"):
        raise ValueError(f"model={type(model).__name__} is not supported; SAGE needs a class-conditional "
                         f"'ddpm' model (num_classes > 0)")
    if k <= 0:
        raise ValueError(f"model.num_classes={k!r}: SAGE needs a class-conditional ddpm (num_classes > 0); "
                         f"an unconditional ddpm has no class to fail on (train one with num_classes: 10)")
    c = classifier_classes(classifier, tuple(model.input_shape))
    if c != k:
        raise ValueError(f"{arg} has {c} classes but the diffusion model has num_classes={k}; "
                         f"allowed: a classifier over exactly {k} classes")


@contextlib.contextmanager
def frozen(*modules: Any) -> Iterator[None]:
    """Parameters of ``modules`` without gradients (restored after)."""
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextlib.contextmanager
def added_embedding(net: nn.Module, delta: Tensor | None, null: int) -> Iterator[None]:
    """Add ``delta`` ``[dim]`` to the conditioning embedding of every conditioned row (``y != null``)
    of ``net`` (the ``emb`` module of :class:`~lightning_vi.nn.unet.MLPDenoiser` / ``UNet``): the
    appended adversarial token of SAGE Sec. 3.3, as a vector in the class-embedding space."""
    if delta is None:
        yield
        return
    emb = getattr(net, "emb", None)
    if emb is None or getattr(emb, "label", None) is None:
        raise ValueError(f"net={type(net).__name__} has no class embedding (net.emb.label); embedding search "
                         f"needs a class-conditional MLPDenoiser or UNet")

    def hook(_module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        y = args[1]
        mask = torch.ones(out.shape[0], 1, device=out.device) if y is None else (y != null).float()[:, None]
        return out + mask * delta.to(out.dtype)[None]

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# -- the differentiable sampler -------------------------------------------------------------------
def ddim_decode(model: nn.Module, x_T: Tensor, y: Tensor, steps: int = 10, guidance_scale: float = 1.0,
                delta: Tensor | None = None, detach: bool = False, checkpoint: bool = False) -> Tensor:
    """Data-space samples of the deterministic DDIM sampler (``eta = 0``) from ``x_T`` for labels
    ``y``; differentiable in ``x_T`` and ``delta`` (the reverse loop of ``sample_loop`` without its
    ``no_grad``). ``checkpoint``: recompute each step in the backward pass (memory for time);
    ``detach``: cut the gradient at every step (only for tests: the path SAGE must not have)."""
    sched = DDIMScheduler(model.schedule, steps, 0.0, model.hparams.timestep_spacing)
    fn = model.model_fn(y, guidance_scale, use_ema=True)
    x = x_T
    with added_embedding(model.network(True), delta, model.num_classes):
        for t in sched.timesteps:
            tb = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)

            def step(x_in: Tensor, t: int = t, tb: Tensor = tb) -> Tensor:
                return sched.step(fn(x_in, tb), t, x_in)

            if checkpoint and x.requires_grad:
                x = torch.utils.checkpoint.checkpoint(step, x, use_reentrant=False)
            else:
                x = step(x)
            if detach:
                x = x.detach()
    return model.from_model_space(x)


def shell_penalty(z: Tensor) -> Tensor:
    """``(||z|| - sqrt(d))^2`` per row: zero on the Gaussian shell where ``N(0, I_d)`` concentrates."""
    d = z[0].numel()
    return (z.flatten(1).norm(dim=1) - math.sqrt(d)) ** 2


def to_shell(z: Tensor) -> Tensor:
    """``z`` rescaled to norm ``sqrt(d)`` per row."""
    d = z[0].numel()
    n = z.flatten(1).norm(dim=1).clamp(min=1e-12)
    return z * (math.sqrt(d) / n).view(-1, *([1] * (z.ndim - 1)))


def logits_of(classifier: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Surrogate logits on samples clamped to the data range [0, 1] (what the samples are judged on)."""
    return classifier(x.clamp(0, 1))


def labels_of(classifier: Any, x: Tensor) -> Tensor:
    """Predicted labels of a torch classifier (logits) or a :class:`SklearnClassifier`."""
    with torch.no_grad():
        out = classifier(x.clamp(0, 1))
    return out.argmax(-1) if out.ndim > 1 else out.long()


# -- search ---------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """``x_T`` ``[n, *shape]``, samples ``x0`` (data space), conditioned ``y``, surrogate labels
    ``pred``, ``failed = pred != y``, and ``sampler_calls`` per latent."""

    x_T: Tensor
    x0: Tensor
    y: Tensor
    pred: Tensor
    sampler_calls: int
    history: list[float] = field(default_factory=list)

    @property
    def failed(self) -> Tensor:
        return self.pred != self.y

    @property
    def failure_rate(self) -> float:
        return float(self.failed.float().mean())


def latent_search(model: nn.Module, classifier: nn.Module, y: Tensor, x_T: Tensor | None = None,
                  iters: int = 20, lr: float = 0.1, reg: float = 0.1, steps: int = 10,
                  guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                  detach: bool = False, sign: float = 1.0, checkpoint: bool = False) -> SearchResult:
    """SAGE adversarial latents: Adam on ``x_T`` (one per label in ``y``) minimising
    ``-CE(classifier(x0(x_T)), y) + reg * (||x_T|| - sqrt(d))^2``, the gradient through
    :func:`ddim_decode`. A latent is frozen at its first failure (``argmax != y``). ``iters`` = sampler
    calls per latent (forward + backward). ``sign``/``detach`` exist for mutation tests only."""
    check_pair(model, classifier)
    check_range("iters", iters, 0)
    check_range("reg", reg, 0.0)
    shape = (y.shape[0], *model.data_shape)
    z0 = torch.randn(shape, generator=generator) if x_T is None else x_T.detach().clone()
    z = z0.to(model.device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    done = torch.zeros(y.shape[0], dtype=torch.bool)
    hist: list[float] = []
    with frozen(model, classifier):
        for _ in range(int(iters)):
            x0 = ddim_decode(model, z, y, steps, guidance_scale, detach=detach, checkpoint=checkpoint)
            logits = logits_of(classifier, x0)
            done |= (logits.argmax(-1) != y).detach().cpu()
            if bool(done.all()):
                break
            ce = F.cross_entropy(logits, y, reduction="none")
            loss = ((-sign * ce + reg * shell_penalty(z)) * (~done).float().to(z.device)).sum()
            hist.append(float(ce.detach().mean()))
            opt.zero_grad()
            if loss.requires_grad:
                loss.backward()
                keep = z.detach().clone()
                opt.step()
                with torch.no_grad():  # failures stay where they were found (Adam's momentum would move them)
                    z[done] = keep[done]
    return _result(model, classifier, z.detach(), y, steps, guidance_scale, int(iters), hist)


def gradient_free_search(model: nn.Module, classifier: nn.Module, y: Tensor, x_T: Tensor | None = None,
                         iters: int = 20, sigma: float = 0.3, reg: float = 0.1, steps: int = 10,
                         guidance_scale: float = 1.0, generator: torch.Generator | None = None) -> SearchResult:
    """Gradient-free SAGE: a (1+1) evolution strategy per latent on the same objective as
    :func:`latent_search` (``CE - reg * shell penalty``, maximised): propose ``z + sigma * n``, keep it
    if the objective rises; stop at the first failure. ``iters`` sampler calls per latent."""
    check_pair(model, classifier)
    check_range("iters", iters, 0)
    check_range("sigma", sigma, 0.0, low_open=True)
    shape = (y.shape[0], *model.data_shape)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    z = torch.randn(shape, generator=g) if x_T is None else x_T.detach().clone().cpu()

    def score(zz: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits = logits_of(classifier, ddim_decode(model, zz.to(model.device), y, steps, guidance_scale)).cpu()
        return F.cross_entropy(logits, y.cpu(), reduction="none") - reg * shell_penalty(zz), logits.argmax(-1)

    best, pred = score(z)
    hist = [float(best.mean())]
    calls = 1
    while calls < int(iters):
        done = pred != y.cpu()
        if bool(done.all()):
            break
        cand = z + sigma * torch.randn(shape, generator=g)
        s, p = score(cand)
        calls += 1
        better = (s > best) & ~done
        z = torch.where(better.view(-1, *([1] * (z.ndim - 1))), cand, z)
        best, pred = torch.where(better, s, best), torch.where(better, p, pred)
        hist.append(float(best.mean()))
    return _result(model, classifier, z, y, steps, guidance_scale, int(iters), hist)


def random_latents(model: nn.Module, classifier: nn.Module, y: Tensor, steps: int = 10,
                   guidance_scale: float = 1.0, generator: torch.Generator | None = None) -> SearchResult:
    """The baseline: ``x_T ~ N(0, I)`` without search (one sampler call each)."""
    check_pair(model, classifier)
    z = torch.randn((y.shape[0], *model.data_shape), generator=generator)
    return _result(model, classifier, z, y, steps, guidance_scale, 1, [])


def _result(model, classifier, z, y, steps, guidance_scale, calls, hist) -> SearchResult:
    with torch.no_grad():
        x0 = ddim_decode(model, z.to(model.device), y, steps, guidance_scale)
    return SearchResult(z.cpu(), x0.cpu(), y.cpu(), labels_of(classifier, x0).cpu(), calls, hist)


def embedding_search(model: nn.Module, classifier: nn.Module, source: int, target: int, n: int = 64,
                     iters: int = 60, lr: float = 0.05, reg: float = 1e-3, steps: int = 10,
                     guidance_scale: float = 1.0, generator: torch.Generator | None = None,
                     sign: float = 1.0) -> Tensor:
    """SAGE's adversarial token: ``delta`` ``[dim]`` added to class ``source``'s conditioning embedding,
    Adam on ``CE(classifier(x0), target) + reg * ||delta||^2`` over fresh latents each step (``n`` per
    step), so generation for ``source`` goes to ``target``. Returns ``delta``."""
    check_pair(model, classifier)
    k = model.num_classes
    for name, v in (("source", source), ("target", target)):
        if not isinstance(v, int) or not 0 <= v < k:
            raise ValueError(f"{name}={v!r} is out of range; allowed: integers in [0, {k - 1}]")
    emb = getattr(model.network(True), "emb", None)
    if emb is None:
        raise ValueError(f"net={type(model.network(True)).__name__} has no conditioning embedding (net.emb)")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    delta = torch.zeros(emb.dim, device=model.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    y = torch.full((n,), source, dtype=torch.long, device=model.device)
    tgt = torch.full_like(y, target)
    with frozen(model, classifier):
        for _ in range(int(iters)):
            z = torch.randn((n, *model.data_shape), generator=g).to(model.device)
            logits = logits_of(classifier, ddim_decode(model, z, y, steps, guidance_scale, delta=delta))
            loss = sign * F.cross_entropy(logits, tgt) + reg * delta.pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return delta.detach()


def steer_rate(model: nn.Module, classifier: Any, source: int, target: int, delta: Tensor | None,
               n: int = 200, steps: int = 10, guidance_scale: float = 1.0,
               generator: torch.Generator | None = None) -> float:
    """Fraction of fresh samples for class ``source`` (with ``delta`` appended) that ``classifier``
    labels ``target``."""
    z = torch.randn((n, *model.data_shape), generator=generator).to(model.device)
    y = torch.full((n,), source, dtype=torch.long, device=model.device)
    with torch.no_grad():
        x0 = ddim_decode(model, z, y, steps, guidance_scale, delta=delta)
    return float((labels_of(classifier, x0).cpu() == target).float().mean())


# -- judging failures -----------------------------------------------------------------------------
class PCADensity:
    """Human proxy: a sample is in-distribution when its reconstruction error under the top ``k``
    principal components of real images is below the ``quantile`` of the real images' errors."""

    def __init__(self, x_real: Tensor, k: int = 16, quantile: float = 0.99) -> None:
        check_range("quantile", quantile, 0.0, 1.0)
        x = x_real.flatten(1).double()
        self.mean = x.mean(0)
        _, _, v = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = v[:k]
        self.threshold = float(torch.quantile(self.error(x_real), quantile))

    def error(self, x: Tensor) -> Tensor:
        c = x.flatten(1).double() - self.mean
        return (c - (c @ self.basis.T) @ self.basis).pow(2).sum(1)

    def in_distribution(self, x: Tensor) -> Tensor:
        return self.error(x.clamp(0, 1)) <= self.threshold


def failure_report(result: SearchResult, second: Any, density: PCADensity | None = None,
                   chance: float | None = None) -> dict[str, float]:
    """Failure rate under the surrogate; ``transfer`` = fraction of the surrogate's failures that the
    ``second`` classifier also labels ``!= y``; ``chance`` (if given) = its error on random samples;
    ``in_distribution`` = fraction of failures the :class:`PCADensity` accepts."""
    fail = result.failed
    pred2 = labels_of(second, result.x0)
    out = {"failure_rate": float(fail.float().mean()), "n_failures": int(fail.sum()),
           "transfer": float((pred2[fail] != result.y[fail]).float().mean()) if fail.any() else float("nan")}
    if chance is not None:
        out["chance"] = float(chance)
    if density is not None:
        ok = density.in_distribution(result.x0)
        out["in_distribution"] = float(ok[fail].float().mean()) if fail.any() else float("nan")
    return out


# -- classifiers ----------------------------------------------------------------------------------
def train_digits_classifier(x: Tensor, y: Tensor, num_classes: int = 10, hidden: int = 128, steps: int = 300,
                            lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """A classifier on flattened images in [0, 1] (logits), trained full batch with Adam: an MLP
    (the surrogate) or, with ``hidden=0``, multinomial logistic regression (an independent second one)."""
    check_range("hidden", hidden, 0)
    torch.manual_seed(seed)
    d = x[0].numel()
    if hidden == 0:
        net = nn.Sequential(nn.Flatten(), nn.Linear(d, num_classes))
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                            nn.Linear(hidden, num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(int(steps)):
        loss = F.cross_entropy(net(x), y) + 1e-4 * sum(p.pow(2).sum() for p in net.parameters())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


class SklearnClassifier:
    """The independent second classifier: scikit-learn logistic regression on flattened images; calling
    it returns labels (no gradients)."""

    def __init__(self, x: Tensor, y: Tensor, C: float = 1.0) -> None:
        from sklearn.linear_model import LogisticRegression

        self.clf = LogisticRegression(max_iter=2000, C=C).fit(x.flatten(1).cpu().numpy(), y.cpu().numpy())
        self.classes_ = self.clf.classes_

    def __call__(self, x: Tensor) -> Tensor:
        return torch.as_tensor(self.clf.predict(x.flatten(1).detach().cpu().double().numpy())).long()


# -- command --------------------------------------------------------------------------------------
MAKE = "lvi fit --config configs/diffusion/ddpm_digits8.yaml"


def run(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Load the ddpm checkpoint, train both classifiers on real digits, run every search; write
    ``results.json`` (and ``failures.png`` when matplotlib is there) to ``out``."""
    from lightning_vi.data.digits import load_digits_tensors
    from lightning_vi.families.diffusion.producer import read_producer

    path = str(cfg.get("checkpoint", ""))
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint={path!r} does not exist; SAGE needs a class-conditional 'ddpm' "
                                f"checkpoint; make one with: {MAKE} (or pass --set checkpoint=PATH)")
    model, _ = read_producer(path, arg="checkpoint", consumer="sage", families=("ddpm",), make=MAKE)
    model.eval()
    seed = int(cfg.get("seed", 0))
    data = load_digits_tensors(int(model.input_shape[-1]))
    surrogate = train_digits_classifier(data["x"], data["y"], model.num_classes, seed=seed,
                                        steps=int(cfg.get("classifier_steps", 300)))
    second = train_digits_classifier(data["x"], data["y"], model.num_classes, hidden=0, seed=seed + 100,
                                     steps=int(cfg.get("classifier_steps", 300)), lr=0.05)
    density = PCADensity(data["x"])
    n, iters, steps = int(cfg.get("n", 100)), int(cfg.get("iters", 20)), int(cfg.get("steps", 10))
    y = torch.arange(n) % model.num_classes
    g = lambda k: torch.Generator().manual_seed(seed * 1000 + k)  # noqa: E731
    rand = random_latents(model, surrogate, torch.arange(n * iters) % model.num_classes, steps, generator=g(1))
    chance = float((labels_of(second, rand.x0) != rand.y).float().mean())
    res = {"random": failure_report(rand, second, density, chance)}
    res["gradient"] = failure_report(latent_search(model, surrogate, y, iters=iters, lr=float(cfg.get("lr", 0.1)),
                                                   reg=float(cfg.get("reg", 0.1)), steps=steps, generator=g(2)),
                                     second, density, chance)
    res["gradient_free"] = failure_report(gradient_free_search(model, surrogate, y, iters=iters, steps=steps,
                                                               reg=float(cfg.get("reg", 0.1)), generator=g(3)),
                                          second, density, chance)
    src, tgt = int(cfg.get("source", 1)), int(cfg.get("target", 7))
    delta = embedding_search(model, surrogate, src, tgt, iters=int(cfg.get("embedding_iters", 60)), steps=steps,
                             generator=g(4))
    res["embedding"] = {"source": src, "target": tgt, "delta_norm": float(delta.norm()),
                        "steer_surrogate": steer_rate(model, surrogate, src, tgt, delta, steps=steps, generator=g(5)),
                        "steer_second": steer_rate(model, second, src, tgt, delta, steps=steps, generator=g(5)),
                        "base_second": steer_rate(model, second, src, tgt, None, steps=steps, generator=g(5))}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML with checkpoint, n, iters, steps, lr, reg, source, target")
    p.add_argument("--out", required=True, help="output folder (results.json)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    a = p.parse_args(argv)
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(a.config), OmegaConf.from_dotlist(a.set)))
    res = run(cfg, Path(a.out))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
