"""Helpers shared by the built-in plugins (skipped by discovery: the name starts with '_')."""

from __future__ import annotations

from typing import Any

from torch import nn


def get_layer(module: nn.Module, name: str, arg: str = "layers") -> nn.Module:
    """Sub-module ``name`` (dotted path) of ``module``; an unknown name lists the available ones."""
    try:
        return module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in module.named_modules() if n]
        shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
        raise ValueError(f"{arg}={name!r}: {type(module).__name__} has no layer of that name; "
                         f"available layers: {shown}") from None


def set_layer(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, new)


def require(cond: bool, plugin: str, module: Any, why: str) -> None:
    """Fail in ``attach`` with a message naming the plugin, the family and the reason."""
    if not cond:
        raise TypeError(f"plugin {plugin!r} cannot serve {type(module).__name__}: {why}")


def require_classifier(plugin: str, module: Any) -> int:
    """The module's ``num_classes``: label-mixing plugins need a family that classifies and declares its classes."""
    from lightning_vi.core.protocols import Classifies, HasClasses, require_capability

    user = f"plugin {plugin!r} (it mixes class labels into batch['y_soft'])"
    require_capability(module, HasClasses, user)
    require_capability(module, Classifies, user)
    n = module.num_classes
    require(n >= 2, plugin, module, f"it mixes class labels and num_classes={n!r}; allowed: an int >= 2")
    return int(n)


def optimizer_params(optimizer: Any) -> list[dict[str, Any]]:
    """``param_groups`` of an optimizer or of Lightning's ``LightningOptimizer`` wrapper."""
    opt = getattr(optimizer, "optimizer", optimizer)
    return opt.param_groups


def sample_beta(alpha: float) -> float:
    """One draw of Beta(alpha, alpha) from torch's global RNG (two Gamma draws; cheap)."""
    import torch

    g = torch._standard_gamma(torch.full((2,), float(alpha), dtype=torch.float64))
    return float(g[0] / (g[0] + g[1]))
