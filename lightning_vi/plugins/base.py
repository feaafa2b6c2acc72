"""The plugin contract (see DESIGN.md).

A plugin is a ``lightning.Callback`` with three optional framework hooks that ``VIModule`` calls:

* ``attach(module)``: structural change before optimizers are built (wrap a head, decompose a layer);
* ``transform_batch(batch, module)``: training-time batch transform (CutMix, noise injection);
* ``extra_terms(outputs, batch, module)``: additional loss terms, already weighted.

Order. Plugins run in ascending ``order`` (class attribute), ties broken by their position in the
config list; so ``[mixup, cutmix]`` and ``[cutmix, mixup]`` both transform in list order, while a
structural plugin (order 0) always attaches before batch transforms (order 10) and loss terms (20)
are added after the family's own terms. Gradient plugins (order 30) act in Lightning's gradient hooks.

Built-in orders (a deterministic pipeline; Lightning also calls callback hooks in this order):

    0  ordered_dropout       structural: decompose layers (before anything wraps them)
    2  nested_dropout        structural: forward hook on the feature layer
    3  dream_dropout         structural: frozen-mask dropout layers
    5  multisample_dropout   structural: wraps ``head`` (after ordered_dropout decomposed it)
    8  ema                   structural: a frozen averaged copy of the network (after the others changed it)
    10 mixup, cutmix         batch transforms, in config-list order (a present ``y_soft`` is mixed again)
    20 kl_schedule           loss weights (before terms are summed) and free-bits term
    25 vf_alignment          extra loss terms
    28 pixel_grad_clip       tensor gradient hook (acts during backward)
    30 gradient_dropout      on_before_optimizer_step, on unscaled gradients
    40 gradient_clipping     on_before_optimizer_step, last: the clipped norm is what the optimizer sees
"""

from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any

import lightning as L
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range  # noqa: F401  (re-exported for plugins)
from lightning_vi.registry import PLUGINS


def _bad_arguments(cls: type, signature: inspect.Signature, kw: dict[str, Any], err: TypeError) -> str:
    """Message for arguments that ``cls.__init__`` does not take: the plugin, the bad name, the closest and all accepted."""
    params = list(signature.parameters.values())[1:]
    accepted = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    name = PLUGINS.name_of(cls) or cls.__name__
    listed = f"accepted: {', '.join(accepted) or '(none)'}"
    unknown = [k for k in kw if k not in accepted] if not any(p.kind is p.VAR_KEYWORD for p in params) else []
    if unknown:
        close = difflib.get_close_matches(unknown[0], accepted, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"plugin {name!r} ({cls.__name__}) got unknown argument {unknown[0]!r}; {hint}{listed}"
    reason = str(err).split("() ", 1)[-1] if "() " in str(err) else str(err)
    return f"plugin {name!r} ({cls.__name__}): {reason}; {listed}"


class Plugin(L.Callback):
    """Base class of every regularizer plugin."""

    #: Sorting key; see the module docstring for the conventions.
    order: int = 50

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def wrapped(self: Plugin, *args: Any, **kw: Any) -> None:
            if not hasattr(self, "_init_args"):
                signature = inspect.signature(init)
                try:
                    bound = signature.bind(self, *args, **kw)
                except TypeError as err:
                    raise TypeError(_bad_arguments(type(self), signature, kw, err)) from None
                bound.apply_defaults()
                self._init_args = {k: v for k, v in list(bound.arguments.items())[1:] if k not in ("args", "kwargs")}
            init(self, *args, **kw)

        cls.__init__ = wrapped  # type: ignore[method-assign]

    # -- framework hooks (all optional) -------------------------------------------------------
    def attach(self, module: L.LightningModule) -> None:
        """Structural change to ``module``; called once, before optimizers are configured."""

    def transform_batch(self, batch: Any, module: L.LightningModule) -> Any:
        """Return the (training) batch transformed; default: unchanged."""
        return batch

    def extra_terms(self, outputs: dict[str, Tensor], batch: Any, module: L.LightningModule) -> dict[str, Tensor]:
        """Additional weighted loss terms, keyed by name (logged as ``train/<name>``)."""
        return {}

    # -- serialisation ------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return PLUGINS.name_of(self) or type(self).__name__

    def to_config(self) -> dict[str, Any]:
        """Plain-data description ``{"class_path": ..., "init_args": {...}}`` used in checkpoints."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(getattr(self, "_init_args", {}))}

    @property
    def state_key(self) -> str:
        # Unique per configuration, so two instances of one plugin keep separate checkpoint state.
        return self._generate_state_key(**getattr(self, "_init_args", {}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in getattr(self, "_init_args", {}).items())
        return f"{type(self).__name__}({args})"
