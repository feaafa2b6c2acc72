"""VIModule: the shared training step of every family and the plugin hook points (DESIGN.md).

Data flow of one training step::

    batch -> plugin.transform_batch (training only, in plugin order)
          -> family.objective(batch) -> {"recon": t, "kl": t, "elbo": t, "z": tensor, ...}
          -> plugin.extra_terms(outputs, batch, module) (training only)
          -> loss = sum(term_weights[k] * terms[k]) + sum(extra terms)
          -> backward, gradient hooks, optimizer step (Lightning)

Scalar entries of the objective's dict are *terms*: those named in ``term_weights`` enter the loss,
the others (``elbo``, ``acc``) are diagnostics; all are logged as ``<stage>/<name>``. Non-scalar entries
are *outputs* (latents, logits) handed to plugins and never logged; in validation and test they also
feed ``update_metrics`` (epoch-level ``torchmetrics``, see ``lightning_vi.core.metrics_mixin``).
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import Iterable
from typing import Any, Callable, Union

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lightning_vi.core.checks import check_shape, renamed_argument
from lightning_vi.core.protocols import placeholder
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS

PluginSpec = Union[Plugin, str, dict]


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite; names the step and the bad terms."""


def import_object(path: str) -> Any:
    """Import ``"package.module.Name"``."""
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"class_path {path!r} must be a dotted path such as 'torch.optim.Adam'")
    return getattr(importlib.import_module(module), name)


def resolve_plugin(spec: PluginSpec) -> Plugin:
    """Build a plugin from an instance, a registered name, ``{"class_path", "init_args"}`` or ``{name: {args}}``."""
    if isinstance(spec, Plugin):
        return spec
    if isinstance(spec, str):
        return PLUGINS.get(spec)()
    if isinstance(spec, dict) or hasattr(spec, "items"):
        spec = dict(spec)
        if "class_path" in spec:
            path = spec["class_path"]
            cls = PLUGINS.get(path) if "." not in path else import_object(path)
            return cls(**dict(spec.get("init_args") or {}))
        if len(spec) == 1:
            (name, args), = spec.items()
            return PLUGINS.get(name)(**dict(args or {}))
    raise TypeError(
        f"Cannot build a plugin from {spec!r}; give a registered name (one of {PLUGINS.names()}), "
        "{'class_path': ..., 'init_args': {...}} or {name: {arg: value}}"
    )


def build_callable(spec: Any) -> Callable | None:
    """Turn an optimizer/scheduler spec (callable or ``{"class_path", "init_args"}``) into a callable."""
    if spec is None or callable(spec):
        return spec
    if hasattr(spec, "items") and "class_path" in spec:
        return functools.partial(import_object(spec["class_path"]), **dict(spec.get("init_args") or {}))
    raise TypeError(f"Cannot build an optimizer/scheduler from {spec!r}; give a callable or a class_path dict")


def resolve_part(spec: Any, name: str) -> nn.Module | None:
    """A family's injected part (``encoder``, ``decoder``, ``likelihood``, ``objective``): an ``nn.Module``
    as is, ``None`` (the family builds its default), or ``{"class_path", "init_args"}`` (a checkpoint's
    description of the part, see :func:`to_plain`)."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    if hasattr(spec, "items") and "class_path" in spec:
        if spec.get("init_args") is None:
            raise ValueError(
                f"{name}={spec['class_path']} was built in Python, so the checkpoint holds its weights but not its "
                f"constructor arguments; pass it again: load_from_checkpoint(path, {name}={spec['class_path'].rpartition('.')[2]}(...))")
        return import_object(spec["class_path"])(**dict(spec["init_args"]))
    raise TypeError(f"{name}={spec!r} is not a part; give an nn.Module, None (the default part) or "
                    "{'class_path': ..., 'init_args': {...}}")


def to_plain(value: Any) -> Any:
    """Checkpoint-safe (weights_only-loadable) description of a hyper-parameter value."""
    if isinstance(value, Plugin) or (isinstance(value, nn.Module) and callable(getattr(value, "to_config", None))):
        return value.to_config()
    if isinstance(value, nn.Module):  # a user-built part: its class is known, its arguments are not
        return {"class_path": f"{type(value).__module__}.{type(value).__qualname__}", "init_args": None}
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, functools.partial):
        return {"class_path": f"{value.func.__module__}.{value.func.__qualname__}", "init_args": to_plain(value.keywords)}
    if isinstance(value, type):
        return {"class_path": f"{value.__module__}.{value.__qualname__}", "init_args": {}}
    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return value
    return str(value)


class VIModule(L.LightningModule):
    """Base class of every family.

    Subclasses implement ``objective(batch) -> dict[str, Tensor]`` (and ``sample(n)`` where sampling
    makes sense), set ``self.term_weights`` and call ``self.save_hyperparameters()``.

    Args:
        plugins: regularizers, each a ``Plugin``, a registered name (``"cutmix"``),
            ``{"class_path": ..., "init_args": ...}`` or ``{name: {args}}``.
        optimizer: optimizer factory (``params -> Optimizer``), e.g. from YAML
            ``{class_path: torch.optim.AdamW, init_args: {lr: 1e-3}}``; default Adam(lr).
        lr_scheduler: scheduler factory (``optimizer -> LRScheduler``) or None.
        lr: learning rate of the default optimizer.
        check_finite: stop with ``NonFiniteLossError`` when the loss becomes NaN/inf.
    """

    #: Input shape per example (without batch dim) that ``batch["x"]`` must have; None = unchecked.
    input_shape: tuple[int, ...] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def wrapped(self: VIModule, *args: Any, **kw: Any) -> None:
            depth = getattr(self, "_init_depth", 0)
            object.__setattr__(self, "_init_depth", depth + 1)
            try:
                init(self, *args, **kw)
            finally:
                object.__setattr__(self, "_init_depth", depth)
            if depth == 0:
                self._attach_plugins()

        cls.__init__ = wrapped  # type: ignore[method-assign]

    def __init__(
        self,
        plugins: list[Union[Plugin, str, dict]] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr: float = 1e-3,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"lr={lr!r} is out of range; allowed: (0, inf)")
        specs = list(plugins or [])
        built = [resolve_plugin(p) for p in specs]
        # Stable sort: by the plugin's class order, then by position in the config list.
        self.plugins: list[Plugin] = [p for _, _, p in sorted((p.order, i, p) for i, p in enumerate(built))]
        self._optimizer_factory = build_callable(optimizer)
        self._scheduler_factory = build_callable(lr_scheduler)
        self._lr = lr
        self.check_finite = check_finite
        self.term_weights: dict[str, float] = {}
        self._shape_checked: set[str] = set()
        self._attached = False
        self._train_sums: dict[tuple[str, ...], tuple[Tensor, int]] = {}

    # -- renamed arguments --------------------------------------------------------------------
    def rename_argument(self, old: str, old_value: Any, new: str, new_value: Any, default: Any) -> Any:
        """:func:`renamed_argument`, remembered so that :meth:`save_hyperparameters` stores the new name."""
        value = renamed_argument(old, old_value, new, new_value, default)
        self.__dict__.setdefault("_renamed_args", {})[old] = (new, value)
        return value

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's ``save_hyperparameters`` (of the calling ``__init__``); arguments given under a
        deprecated name (:meth:`rename_argument`) are stored under the new name, so checkpoints rebuild
        without the old one."""
        super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back, logger=logger)
        for old, (new, value) in self.__dict__.get("_renamed_args", {}).items():
            if old in self._hparams and self._hparams.pop(old) is not None:
                self._hparams[new] = value
        self._hparams_initial = copy.deepcopy(self._hparams)

    # -- plugins ------------------------------------------------------------------------------
    def _attach_plugins(self) -> None:
        if self._attached:
            return
        self._attached = True
        for p in self.plugins:
            p.attach(self)

    def configure_callbacks(self) -> list[L.Callback]:
        return list(self.plugins)

    def plugin(self, name_or_type: str | type) -> Plugin:
        """The attached plugin with this registered name or type."""
        for p in self.plugins:
            if (isinstance(name_or_type, str) and p.name == name_or_type) or (
                isinstance(name_or_type, type) and isinstance(p, name_or_type)
            ):
                return p
        raise KeyError(f"No plugin {name_or_type!r} attached; attached: {[p.name for p in self.plugins]}")

    # -- family contract ----------------------------------------------------------------------
    def objective(self, batch: Any) -> dict[str, Tensor]:
        """Named terms (and outputs) for one batch; see the module docstring."""
        raise NotImplementedError(f"{type(self).__name__} must implement objective(batch)")

    def test_terms(self, batch: Any) -> dict[str, Tensor]:
        """Extra test-time terms (e.g. an importance-sampled log-likelihood); default none."""
        return {}

    def _in_eval_loop(self) -> bool:
        """True inside Lightning's validation/test loop, where epoch-level metrics are fed; a plugin or user
        calling ``compute_loss(batch, "val")`` by hand (e.g. to score a truncation) leaves them alone."""
        trainer = self._trainer
        return trainer is not None and bool(trainer.validating or trainer.testing or trainer.sanity_checking)

    def update_metrics(self, outputs: dict[str, Any], batch: Any, stage: str) -> None:
        """Feed epoch-level metrics from the non-scalar outputs of a ``"val"``/``"test"`` step; default none
        (``StageMetricsMixin`` implements it)."""

    @placeholder  # families that sample override it; require_capability(m, Samples) treats this one as missing
    def sample(self, n: int) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define sample(n)")

    # -- the shared step ----------------------------------------------------------------------
    def _check_input(self, batch: Any, stage: str) -> None:
        if stage in self._shape_checked or self.input_shape is None:
            return
        x = batch["x"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
        try:
            check_shape("batch['x']", x, (None, *self.input_shape))
        except ValueError as err:
            raise ValueError(
                f"{err}: {type(self).__name__} declares input_shape={list(self.input_shape)}. "
                f"Set model.init_args.input_shape to {list(x.shape[1:])} or change the data module."
            ) from None
        self._shape_checked.add(stage)

    def compute_loss(self, batch: Any, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Run transforms, objective and extra terms; return (loss, scalar terms)."""
        self._check_input(batch, stage)
        training = stage == "train"
        if training:
            for p in self.plugins:
                batch = p.transform_batch(batch, self)
        out = self.objective(batch)
        if stage == "test":
            out = {**out, **self.test_terms(batch)}
        terms = {k: v for k, v in out.items() if isinstance(v, Tensor) and v.ndim == 0}
        outputs = {k: v for k, v in out.items() if k not in terms}
        if stage in ("val", "test") and self._in_eval_loop():
            self.update_metrics(outputs, batch, stage)
        loss = None
        for k, w in self.term_weights.items():
            if k in terms and w != 0:
                loss = w * terms[k] if loss is None else loss + w * terms[k]
        if training:
            for p in self.plugins:
                for k, v in p.extra_terms(outputs, batch, self).items():
                    terms[k] = v
                    loss = v if loss is None else loss + v
        if loss is None:
            raise RuntimeError(
                f"{type(self).__name__}.objective returned no weighted term; terms {sorted(terms)}, "
                f"term_weights {self.term_weights}"
            )
        terms["loss"] = loss
        if training and self.check_finite and not torch.isfinite(loss):
            bad = {k: float(v.detach()) for k, v in terms.items() if not torch.isfinite(v)}
            raise NonFiniteLossError(
                f"Non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}); "
                f"non-finite terms: {bad}. Checkpoints saved so far are untouched. Lower the learning rate, "
                "switch on the gradient_clipping plugin, or check the data for NaN/inf."
            )
        return loss, terms

    def _log_terms(self, terms: dict[str, Tensor], stage: str, batch_size: int) -> None:
        for k, v in terms.items():
            self.log(f"{stage}/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=batch_size,
                     prog_bar=(k == "loss"), sync_dist=True)

    def _accumulate_train_terms(self, terms: dict[str, Tensor], batch_size: int) -> None:
        """Training terms: ``train/<k>`` every ``log_every_n_steps`` steps, ``train/<k>_epoch`` (sample-weighted
        mean) at epoch end. A step only adds to one stacked running sum (two tensor ops); the values reach
        the loggers, ``trainer.callback_metrics`` and the progress bar without ``self.log``, whose per-call
        bookkeeping costs about a millisecond (benchmarks/overhead.py)."""
        keys = tuple(terms)  # one stacked running sum per set of term names
        values = torch.stack([v.detach().to(self.device, torch.float32) for v in terms.values()])
        total, count = self._train_sums.get(keys, (0.0, 0))
        self._train_sums[keys] = (values * batch_size + total, count + batch_size)
        trainer = self._trainer
        if trainer is None:
            return
        every = max(trainer.log_every_n_steps, 1)
        if (trainer.global_step + 1) % every == 0 or trainer.global_step == 0:
            self._publish({f"train/{k}": v for k, v in zip(keys, values)}, prog_bar=("train/loss",))

    def _publish(self, metrics: dict[str, Tensor], prog_bar: tuple[str, ...] = ()) -> None:
        """Hand already-reduced scalars to the loggers (at the trainer's logging step), to
        ``trainer.callback_metrics`` (checkpoint and early-stopping monitors), ``trainer.logged_metrics`` and
        the progress bar: what ``self.log`` does, without its per-call cost."""
        trainer = self.trainer
        trainer.callback_metrics.update(metrics)
        trainer.logged_metrics.update(metrics)
        trainer.progress_bar_metrics.update({k: float(v) for k, v in metrics.items() if k in prog_bar})
        if trainer.loggers and not trainer.sanity_checking:
            trainer._logger_connector.log_metrics(dict(metrics))  # Lightning's own path: step and epoch keys

    def on_train_epoch_start(self) -> None:
        self._train_sums = {}

    def _log_epoch_means(self) -> None:
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        for keys, (total, count) in self._train_sums.items():
            for k, v in zip(keys, total):
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + count
        self._train_sums = {}
        if not sums or self._trainer is None:
            return
        names = list(sums)
        stacked = torch.stack([torch.as_tensor(sums[k], device=self.device) for k in names]
                              + [torch.tensor(float(counts[k]), device=self.device) for k in names])
        stacked = self.trainer.strategy.reduce(stacked, reduce_op="sum")  # one collective for every term (DDP)
        n = len(names)
        self._publish({f"train/{k}_epoch": stacked[i] / stacked[n + i] for i, k in enumerate(names)})

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Logged on the epoch's last batch, so callbacks see train/<k>_epoch in their on_train_epoch_end.
        if self._trainer is not None and self.trainer.is_last_batch:
            self._log_epoch_means()

    def on_train_epoch_end(self) -> None:
        if self._train_sums:
            self._log_epoch_means()

    @staticmethod
    def _batch_size(batch: Any) -> int:
        x = batch["x"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
        return int(x.shape[0])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, terms = self.compute_loss(batch, "train")
        self._accumulate_train_terms(terms, self._batch_size(batch))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        _, terms = self.compute_loss(batch, "val")
        self._log_terms(terms, "val", self._batch_size(batch))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        _, terms = self.compute_loss(batch, "test")
        self._log_terms(terms, "test", self._batch_size(batch))

    def predict_step(self, batch: Any, batch_idx: int) -> Any:
        """Default prediction: ``forward`` on the inputs (a reconstruction, logits, ...)."""
        return self(batch["x"] if isinstance(batch, dict) else batch)

    # -- optimisation -------------------------------------------------------------------------
    def parameter_groups(self) -> Iterable[Any]:
        """Parameters (or param-group dicts) handed to the optimizer; families may override."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        params = self.parameter_groups()
        if self._optimizer_factory is None:
            opt = torch.optim.Adam(params, lr=self._lr)
        else:
            opt = self._optimizer_factory(params)
        if self._scheduler_factory is None:
            return opt
        sched = self._scheduler_factory(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}

    # -- checkpoints --------------------------------------------------------------------------
    #: ``(old, new)`` state-dict key renames of earlier releases, applied on load to keys the module lacks:
    #: ``old`` ending in "." renames a prefix, otherwise one key; ``new=None`` drops a key that is no longer
    #: a weight (e.g. a fixed constant that became a non-persistent buffer).
    renamed_state_keys: tuple[tuple[str, str | None], ...] = ()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if not self.renamed_state_keys or state is None:
            return
        own = set(self.state_dict())
        old_order = list(state)
        renamed: dict[str, str] = {}
        for key in [k for k in state if k not in own]:
            for old, new in self.renamed_state_keys:
                if key == old or (old.endswith(".") and key.startswith(old)):
                    if new is None:
                        del state[key]
                    elif (target := new + key[len(old):]) in own:
                        state[target], renamed[key] = state.pop(key), target
                    else:
                        continue
                    break
        if renamed and checkpoint.get("optimizer_states"):
            self._reorder_optimizer_states(checkpoint["optimizer_states"], [renamed.get(k, k) for k in old_order])

    def _reorder_optimizer_states(self, optimizer_states: list[dict[str, Any]], old_names: list[str]) -> None:
        """Optimizer state is indexed by parameter position: when a rename also moved parameters, give each
        parameter its own moments again (resuming ``trainer.fit(ckpt_path=old)``)."""
        names = [n for n, p in self.named_parameters() if p.requires_grad]
        old = [n for n in old_names if n in set(names)]
        if old == names:
            return
        for opt in optimizer_states:
            groups = opt.get("param_groups", [])
            if sorted(old) != sorted(names) or len(groups) != 1 or len(groups[0]["params"]) != len(names):
                raise RuntimeError(
                    f"This {type(self).__name__} checkpoint predates a change of the module's structure and its "
                    "optimizer state cannot be matched to the parameters; load the weights with "
                    "load_from_checkpoint(path) and start a new fit instead of resuming with ckpt_path.")
            ids, st = groups[0]["params"], opt["state"]
            position = {n: i for i, n in enumerate(old)}
            opt["state"] = {ids[i]: st[ids[position[n]]] for i, n in enumerate(names) if ids[position[n]] in st}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Hyper-parameters may hold plugin objects or optimizer partials: store plain data, so that
        # torch.load(weights_only=True) reads them and load_from_checkpoint rebuilds the plugins.
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = to_plain(dict(checkpoint["hyper_parameters"]))
        # Which class wrote it, also for checkpoints saved from Python (LightningCLI records _class_path only
        # for its own runs): producers and --ckpt_path checks name the family from this.
        cls = type(self)
        checkpoint["lvi_class_path"] = f"{cls.__module__}.{cls.__qualname__}"
