"""Argument validation with messages that name the argument, the value and what is allowed."""

from __future__ import annotations

import warnings
from typing import Any


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ``ValueError`` naming the argument, its value and the allowed range."""
    bad = (
        (low is not None and (value <= low if low_open else value < low))
        or (high is not None and (value >= high if high_open else value > high))
        or value != value  # NaN
    )
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        rng = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name}={value!r} is out of range; allowed: {rng}")


def check_choice(name: str, value: Any, allowed: list[Any] | tuple[Any, ...]) -> None:
    """Raise ``ValueError`` naming the argument, its value and the allowed choices."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")


def check_shape(name: str, tensor: Any, expected: tuple[int | None, ...]) -> None:
    """Raise ``ValueError`` if ``tensor.shape`` does not match ``expected`` (``None`` = any size)."""
    shape = tuple(tensor.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected))
    if not ok:
        exp = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} has shape {shape}; expected {exp}")


def renamed_argument(old: str, old_value: Any, new: str, new_value: Any, default: Any) -> Any:
    """Value of an argument renamed from ``old`` to ``new`` (docs/concepts.md): the old name still works for
    one release with a ``DeprecationWarning``; giving both names with different values is an error."""
    if old_value is None:
        return new_value
    plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731  (YAML lists vs tuple defaults)
    if plain(new_value) != plain(default) and plain(new_value) != plain(old_value):
        raise ValueError(f"{old}={old_value!r} and {new}={new_value!r} name the same argument; give only {new}")
    warnings.warn(f"{old!r} is deprecated and will be removed in the next release; use {new}={old_value!r}",
                  DeprecationWarning, stacklevel=3)
    return old_value
