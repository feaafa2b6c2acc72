"""Nested dropout (Rippel, Gelbart & Adams 2014, "Learning Ordered Representations with Nested
Dropout", Sec. 2-3; used on the feature layer by Chen et al. 2021, "Compressing Features for Learning
with Noisy Labels", Sec. 3.2).

During training an index ``b`` in {1..D} is drawn and the feature vector is truncated:

    h~_j = h_j * 1[j <= b]

* ``distribution="geometric"`` (Rippel et al. Eq. 3): ``p(b) = rho (1 - rho)^(b-1)``, truncated to D;
* ``distribution="half_gaussian"`` (Chen et al.): ``p(b) proportional to exp(-(b / sigma)^2)`` on
  ``b = 1..D``, with ``sigma`` in feature units (the paper's ``nested`` scale);
* ``distribution="half_normal"``: ``b = min(D, 1 + floor(|N(0, s^2)|))`` with ``s = sigma_frac * D``.

One index per example (Rippel et al.), or one per mini-batch with ``per_batch=True`` (Chen et al.'s
training loop). Truncation acts on the output of the sub-module(s) ``layer`` along dimension 1:
default the family's ``feature_layers`` (e.g. ``["net1.backbone", "net2.backbone"]`` of ``coteaching``:
both networks) or ``backbone`` (the classifier's feature layer). At evaluation the first ``eval_k``
units are kept (``None`` = all); ``eval_k`` lives in the module buffer ``nested_dropout_eval_k``, so it
is saved in checkpoints. :meth:`NestedDropout.select_truncation` picks the best-on-validation ``eval_k``;
with ``select_k=True`` the plugin does so itself at the end of fit (Chen et al.: the truncation ``K`` is
chosen on a validation split, for noisy labels a noisy one), by validation ``acc`` over ``k_candidates``
(default every K in 1..D); it logs ``val/best_k`` and the curve ``val/acc_at_k/<K>``.

Defaults: ``distribution="geometric"``, ``rho=0.1``, ``sigma_frac=0.5``, ``sigma=None``,
``per_batch=False``, ``select_k=False``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.plugins._util import get_layer
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS

DISTRIBUTIONS = ("geometric", "half_gaussian", "half_normal")


def half_gaussian_probs(d: int, sigma: float) -> Tensor:
    """``p(k) = exp(-(k / sigma)^2) / Z`` for ``k = 1..d`` (Chen et al. 2021), ``[d]`` float64."""
    k = torch.arange(1, d + 1, dtype=torch.float64)
    logits = -(k / sigma) ** 2
    return torch.softmax(logits, 0)


def sample_truncation(n: int, d: int, distribution: str, rho: float, sigma: float, device: Any = None) -> Tensor:
    """``n`` truncation indices b in 1..d (``[n]``, long); ``sigma`` is the scale of the half-Gaussian /
    half-normal distributions in feature units."""
    if distribution == "geometric":
        u = torch.rand(n, device=device).clamp_min(1e-12)
        b = 1 + torch.floor(torch.log(u) / torch.log(torch.tensor(1.0 - rho))) if rho < 1 else torch.ones(n, device=device)
    elif distribution == "half_gaussian":
        b = 1 + torch.multinomial(half_gaussian_probs(d, sigma), n, replacement=True).to(device)
    else:
        b = 1 + torch.floor(torch.randn(n, device=device).abs() * sigma)
    return b.clamp(1, d).long()


def truncate(h: Tensor, b: Tensor | int) -> Tensor:
    """Zero units ``j >= b`` along dim 1 (``b`` per example ``[B]`` or one int)."""
    idx = torch.arange(h.shape[1], device=h.device)
    if isinstance(b, Tensor):
        mask = idx.unsqueeze(0) < b.unsqueeze(1)
    else:
        mask = (idx < b).unsqueeze(0)
    mask = mask.view(*mask.shape, *([1] * (h.ndim - 2)))
    return h * mask.to(h.dtype)


@PLUGINS.register("nested_dropout")
class NestedDropout(Plugin):
    """Nested dropout: truncate the feature vector at a sampled index (ordered representations).

    Args:
        distribution: ``"geometric"`` (Rippel et al.), ``"half_gaussian"`` (Chen et al.) or ``"half_normal"``.
        rho: geometric success probability, in (0, 1].
        sigma_frac: ``half_normal`` scale as a fraction of the width D, > 0.
        sigma: ``half_gaussian`` scale in feature units, > 0 (required for, and only used by, it).
        layer: dotted name(s) of the sub-module(s) whose output is truncated; None = the family's
            ``feature_layers`` if it declares them, else ``"backbone"``.
        eval_k: units kept at evaluation (None = all).
        per_batch: one index per mini-batch (Chen et al.) instead of one per example (Rippel et al.).
        select_k: at the end of fit, set ``eval_k`` to the validation-best truncation (``acc``).
        k_candidates: truncations tried by ``select_k`` (None = 1..D).
    """

    order = 2

    def __init__(self, distribution: str = "geometric", rho: float = 0.1, sigma_frac: float = 0.5,
                 layer: str | list[str] | None = None, eval_k: int | None = None, sigma: float | None = None,
                 per_batch: bool = False, select_k: bool = False, k_candidates: list[int] | None = None) -> None:
        check_choice("distribution", distribution, DISTRIBUTIONS)
        check_range("rho", rho, 0.0, 1.0, low_open=True)
        check_range("sigma_frac", sigma_frac, 0.0, low_open=True)
        if distribution == "half_gaussian":
            if sigma is None:
                raise ValueError("distribution='half_gaussian' needs sigma, the scale of p(k) ~ exp(-(k/sigma)^2) "
                                 "in feature units; allowed: a number > 0")
            check_range("sigma", sigma, 0.0, low_open=True)
        elif sigma is not None:
            raise ValueError(f"sigma={sigma!r} is used only by distribution='half_gaussian' (got "
                             f"distribution={distribution!r}); drop sigma or use sigma_frac / rho")
        if eval_k is not None:
            check_range("eval_k", eval_k, 1)
        if k_candidates is not None:
            if not k_candidates or any(int(k) != k or k < 1 for k in k_candidates):
                raise ValueError(f"k_candidates={k_candidates!r}: allowed: a non-empty list of integers >= 1 (or null)")
        layers = [layer] if isinstance(layer, str) else (None if layer is None else list(layer))
        if layers is not None and not layers:
            raise ValueError("layer=[]: allowed: a layer name, a non-empty list of names, or null")
        self.distribution, self.rho, self.sigma_frac = distribution, float(rho), float(sigma_frac)
        self.sigma = None if sigma is None else float(sigma)
        self.layer, self.layers = layer, layers
        self.eval_k, self.per_batch, self.select_k = eval_k, bool(per_batch), bool(select_k)
        self.k_candidates = None if k_candidates is None else [int(k) for k in k_candidates]
        self._module: Any = None
        self._selected = False
        self.width: int | None = None  # D, seen at the first forward
        #: validation accuracy per truncation K of the last selection (``select_k`` / :meth:`select_truncation`).
        self.curve: dict[int, float] = {}

    def attach(self, module: Any) -> None:
        names = self.layers or list(getattr(module, "feature_layers", None) or ["backbone"])
        targets = [get_layer(module, n, "layer") for n in names]
        self.layer_names = names
        module.register_buffer("nested_dropout_eval_k", torch.tensor(self.eval_k or 0, dtype=torch.long))
        self._module = module
        for target in targets:
            target.register_forward_hook(self._hook)

    def _scale(self, d: int) -> float:
        return self.sigma if self.distribution == "half_gaussian" else self.sigma_frac * d

    def _hook(self, layer: Any, inputs: Any, out: Tensor) -> Tensor:
        d = out.shape[1]
        self.width = d
        if layer.training:
            n = 1 if self.per_batch else out.shape[0]
            b = sample_truncation(n, d, self.distribution, self.rho, self._scale(d), out.device)
            return truncate(out, b.expand(out.shape[0]))
        k = int(self._module.nested_dropout_eval_k)
        return truncate(out, k) if 0 < k < d else out

    def set_eval_k(self, k: int | None) -> None:
        self._module.nested_dropout_eval_k.fill_(int(k or 0))

    @torch.no_grad()
    def select_truncation(self, module: Any, batches: Iterable[Any], candidates: Sequence[int],
                          metric: str = "loss") -> dict[int, float]:
        """Evaluate ``metric`` (a term, lower is better; ``acc`` is maximised) at each truncation on
        ``batches`` (e.g. the validation loader; example-weighted mean over batches), set ``eval_k`` to the
        best (ties: the smallest K, as Chen et al.) and return all scores."""
        batches = list(batches)
        if not batches:
            raise ValueError("select_truncation got no validation batches")
        was = module.training
        module.eval()
        scores: dict[int, float] = {}
        for k in sorted(int(c) for c in candidates):
            self.set_eval_k(k)
            total, count = 0.0, 0
            for b in batches:
                n = len(b["x"]) if isinstance(b, dict) else len(b)
                total += float(module.compute_loss(b, "val")[1][metric]) * n
                count += n
            scores[k] = total / count
        sign = 1.0 if metric == "acc" else -1.0
        best = max(scores, key=lambda k: (sign * scores[k], -k))
        self.set_eval_k(best)
        module.train(was)
        self.curve = scores
        return scores

    # -- select_k: choose K on the validation split at the end of fit --------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._selected = False

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # On the final epoch, before LastCheckpoint (checkpoint callbacks run last) writes last.ckpt,
        # so the chosen K is in the checkpoint that `lvi test --ckpt_path .../last.ckpt` reads.
        if self.select_k and _final_epoch(trainer):
            self._select(trainer, pl_module, log=True)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.select_k and not self._selected:  # e.g. max_steps ended mid-epoch
            self._select(trainer, pl_module, log=False)

    def _select(self, trainer: Any, pl_module: Any, log: bool) -> None:
        from lightning.pytorch.utilities import move_data_to_device

        dm = getattr(trainer, "datamodule", None)
        loader = dm.val_dataloader() if dm is not None else trainer.val_dataloaders
        if loader is None or (isinstance(loader, (list, tuple)) and not loader):
            raise RuntimeError("nested_dropout select_k=True needs a validation split to choose K on; give the "
                               "data module one (e.g. NoisyLabelDataModule noisy_val_fraction=0.1) or set select_k=false")
        loaders = loader if isinstance(loader, (list, tuple)) else [loader]
        batches = [move_data_to_device(b, pl_module.device) for ld in loaders for b in ld]
        if self.width is None:
            with torch.no_grad():
                was = pl_module.training
                pl_module.eval()
                pl_module(batches[0]["x"][:1])
                pl_module.train(was)
        candidates = self.k_candidates or list(range(1, self.width + 1))
        scores = self.select_truncation(pl_module, batches, candidates, metric="acc")
        best = int(pl_module.nested_dropout_eval_k)
        self._selected = True
        metrics = {"val/best_k": float(best), **{f"val/acc_at_k/{k}": v for k, v in scores.items()}}
        if log:
            for name, value in metrics.items():
                pl_module.log(name, value, on_step=False, on_epoch=True)
        else:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})


def _final_epoch(trainer: Any) -> bool:
    """Whether the epoch now ending is the last of this fit (max_epochs, max_steps or a requested stop)."""
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs:
        return True
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    return bool(trainer.should_stop)
