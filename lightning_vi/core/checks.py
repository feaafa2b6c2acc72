"""Argument validation with messages that name the argument, the value and what is allowed."""

from __future__ import annotations

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
