"""Declared capabilities: what a plugin or callback calls on a family, as small ``typing.Protocol``s.

A consumer (plugin ``attach``, callback ``setup``) calls :func:`require_capability` with the protocols it
needs; a family that lacks one fails there, with a message naming the consumer, the family and the missing
member, instead of the consumer silently doing nothing later. Each protocol lists only what its consumers
really call. Beyond ``isinstance`` (which only sees that an attribute exists), the check also verifies

* data members against their annotated type (``latent_dim: int`` must be an int, not None or a bool);
* methods can be called the way consumers call them: the protocol method's parameters without a default
  are passed positionally, those with a default by keyword (``sample(n, generator=...)``);
* a method marked with :func:`placeholder` (``VIModule.sample``, which only raises) counts as missing.

The first docstring line of each protocol completes "<consumer> needs a family that ...".
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol, TypeVar, get_type_hints, runtime_checkable

import torch
from torch import Tensor, nn

F = TypeVar("F", bound=Callable[..., Any])


def placeholder(fn: F) -> F:
    """Mark a base-class method that only raises ``NotImplementedError``: it does not provide the capability."""
    fn.__capability_placeholder__ = True  # type: ignore[attr-defined]
    return fn


@runtime_checkable
class HasLatents(Protocol):
    """encodes inputs into a Gaussian posterior, encode(x) -> (mu, log_var)"""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class Decodes(Protocol):
    """decodes latents into likelihood parameters, decode(z)"""

    def decode(self, z: Tensor) -> Tensor: ...


@runtime_checkable
class HasLatentDim(Protocol):
    """declares its latent size as an int attribute latent_dim"""

    latent_dim: int


@runtime_checkable
class Samples(Protocol):
    """draws samples, sample(n, generator=None)"""

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...


@runtime_checkable
class Classifies(Protocol):
    """predicts class probabilities, predict_proba(x) -> [N, C]"""

    def predict_proba(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class HasClasses(Protocol):
    """declares its number of classes as an int attribute num_classes"""

    num_classes: int


@runtime_checkable
class HasHead(Protocol):
    """maps features to outputs with an nn.Module attribute head"""

    head: nn.Module


@runtime_checkable
class HasPenultimate(Protocol):
    """exposes penultimate features and linear-head weights, features(x) -> [B, d] and a tensor head_weight [C, d]"""

    head_weight: Tensor

    def features(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class HasTermWeights(Protocol):
    """weights its loss terms with a dict attribute term_weights"""

    term_weights: dict


@runtime_checkable
class Forecasts(Protocol):
    """forecasts sequences, forecast(batch, horizon, n_samples) -> [S, B, H, C]"""

    def forecast(self, batch: dict, horizon: int, n_samples: int) -> Tensor: ...


@runtime_checkable
class RegressesErrors(Protocol):
    """predicts by error regression, error_regression(x, horizon) -> [B, T + H, C]"""

    def error_regression(self, x: Tensor, horizon: int) -> Tensor: ...


@runtime_checkable
class HasEigenvalues(Protocol):
    """solves a linear operator on a batch, eigenvalues(batch) -> complex [K]"""

    def eigenvalues(self, batch: dict) -> Tensor: ...


@runtime_checkable
class SamplesPaths(Protocol):
    """draws prior paths on a time grid, sample_paths(n, t, generator) and a Hurst index hurst"""

    hurst: Any

    def sample_paths(self, n: int, t: Tensor, generator: torch.Generator | None) -> Tensor: ...


@runtime_checkable
class Consolidates(Protocol):
    """consolidates what it learned on a task, consolidate()"""

    def consolidate(self) -> None: ...


def _members(protocol: type) -> tuple[dict[str, Any], dict[str, Callable[..., Any]]]:
    """(annotated data members, methods) declared by ``protocol`` itself."""
    data = {k: v for k, v in get_type_hints(protocol).items() if k in protocol.__dict__.get("__annotations__", {})}
    methods = {k: v for k, v in protocol.__dict__.items() if inspect.isfunction(v) and not k.startswith("_")}
    return data, methods


def _call_shape(fn: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """Positional and keyword argument names a consumer passes, read from the protocol method."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # drop self
    positional = [p.name for p in params if p.default is inspect.Parameter.empty]
    keyword = [p.name for p in params if p.default is not inspect.Parameter.empty]
    return positional, keyword


def missing_members(module: Any, protocol: type) -> list[str]:
    """What ``module`` lacks of ``protocol``, one phrase per member; empty when it has them all."""
    data, methods = _members(protocol)
    missing = []
    for name, tp in data.items():
        if not hasattr(module, name):
            missing.append(f"the attribute `{name}`")
            continue
        value = getattr(module, name)
        if tp is not Any and isinstance(tp, type) and (
                not isinstance(value, tp) or (tp is int and isinstance(value, bool))):
            missing.append(f"`{name}` of type {tp.__name__} (it is {value!r})")
    for name, proto_fn in methods.items():
        positional, keyword = _call_shape(proto_fn)
        call = f"{name}({', '.join([*positional, *(k + '=...' for k in keyword)])})"
        fn = getattr(module, name, None)
        if fn is None or not callable(fn) or getattr(fn, "__capability_placeholder__", False):
            missing.append(f"a method {call}")
            continue
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # no introspectable signature (a C function): trust it
            continue
        try:
            sig.bind(*positional, **{k: None for k in keyword})
        except TypeError:
            missing.append(f"a method {call}: {type(module).__name__}.{name}{sig} cannot be called that way")
    return missing


def require_capability(module: Any, protocols: type | tuple[type, ...], user: str) -> None:
    """Raise ``TypeError`` unless ``module`` has every member of ``protocols``.

    ``protocols`` is one protocol or a tuple of alternatives (any one suffices). ``user`` names the consumer
    (e.g. ``"LatentTraversal"`` or ``"plugin 'mixup'"``) in the message.
    """
    alternatives = protocols if isinstance(protocols, tuple) else (protocols,)
    reasons = []
    for protocol in alternatives:
        lacks = missing_members(module, protocol)
        if not lacks:
            return
        reasons.append((protocol, lacks))
    family = type(module).__name__
    needs = ", or one that ".join(capability(p) for p in alternatives)
    lacks = "; or ".join(", ".join(m) for _, m in reasons)
    raise TypeError(f"{user} needs a family that {needs}: {family} lacks {lacks}")


def capability(protocol: type) -> str:
    """The phrase that completes "needs a family that ..." (the protocol's first docstring line)."""
    return (protocol.__doc__ or protocol.__name__).strip().splitlines()[0]


__all__ = ["HasLatents", "Decodes", "HasLatentDim", "Samples", "Classifies", "HasClasses", "HasHead",
           "HasPenultimate", "HasTermWeights", "Forecasts", "RegressesErrors", "HasEigenvalues", "SamplesPaths", "Consolidates",
           "require_capability", "missing_members", "capability", "placeholder"]
