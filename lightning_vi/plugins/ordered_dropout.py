"""Ordered dropout on low-rank decomposed layers: Maestro (Horvath et al. 2024, "Maestro: Uncovering
Low-Rank Structures via Trainable Decomposition", Sec. 3-4).

Each chosen layer ``W`` (out x in; a conv kernel is flattened to out x (in kh kw)) is replaced by
``U V`` with ``U`` (out x r), ``V`` (r x in), initialised from the SVD ``W = P S Q^T`` as
``U = P S^(1/2)``, ``V = S^(1/2) Q^T`` (so the layer's function is unchanged at attach). In training,
for each example a rank ``b ~ Uniform{1..r}`` is drawn and only the first ``b`` rank-one terms act:

    y = sum_{i <= b} U_{:,i} (V_{i,:} x) + bias                          (ordered dropout, Eq. 3)

which orders the rank-one terms by importance; on a linear map with isotropic (e.g. uniform) data the
factors recover its SVD (Maestro Thm. 1). Hierarchical group lasso (Eq. 5) adds

    lambda_gl * sum_b sqrt( sum_{i >= b} ||U_{:,i}||^2 + ||V_{i,:}||^2 )

and progressive shrinking removes trailing ranks whose group norm is below ``shrink_threshold``
every ``shrink_every`` epochs. Parameters keep their full size; the active rank is a buffer
(``active_rank``) so shrunk models reload from checkpoints.

Defaults: ``layers=["head"]``, ``rank=None`` (full rank min(out, in)), ``group_lasso=0.0``,
``shrink_every=0`` (off), ``shrink_threshold=1e-3``, ``init="svd"``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.plugins._util import get_layer, set_layer
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


class LowRankLayer(nn.Module):
    """``U V`` decomposition of a Linear or Conv2d layer with ordered (nested) rank dropout."""

    def __init__(self, layer: nn.Module, rank: int | None, init: str = "svd") -> None:
        super().__init__()
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach()
            self.conv = None
        elif isinstance(layer, nn.Conv2d):
            w = layer.weight.detach().flatten(1)
            self.conv = dict(kernel=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                             dilation=layer.dilation, groups=layer.groups, in_channels=layer.in_channels)
            if layer.groups != 1:
                raise ValueError("ordered_dropout supports Conv2d layers with groups=1 only")
        else:
            raise ValueError(f"ordered_dropout decomposes nn.Linear or nn.Conv2d layers, got {type(layer).__name__}")
        out_f, in_f = w.shape
        full = min(out_f, in_f)
        r = full if rank is None else int(rank)
        if not 1 <= r <= full:
            raise ValueError(f"rank={rank!r} is out of range for a {out_f}x{in_f} layer; allowed: [1, {full}]")
        if init == "svd":
            p, s, qt = torch.linalg.svd(w.float(), full_matrices=False)
            root = s[:r].sqrt()
            u, v = p[:, :r] * root, root.unsqueeze(1) * qt[:r]
        else:
            u = torch.randn(out_f, r) / r ** 0.5
            v = torch.randn(r, in_f) / in_f ** 0.5
        self.u = nn.Parameter(u.to(w.dtype).contiguous())
        self.v = nn.Parameter(v.to(w.dtype).contiguous())
        self.bias = nn.Parameter(layer.bias.detach().clone()) if layer.bias is not None else None
        self.register_buffer("active_rank", torch.tensor(r, dtype=torch.long))

    @property
    def rank(self) -> int:
        return int(self.active_rank)

    def _project(self, x: Tensor) -> Tensor:
        """Rank activations ``V x``: ``[B, r]`` (linear) or ``[B, r, H, W]`` (conv)."""
        if self.conv is None:
            return F.linear(x, self.v)
        c = self.conv
        kernel = self.v.view(-1, c["in_channels"], *c["kernel"])
        return F.conv2d(x, kernel, None, c["stride"], c["padding"], c["dilation"])

    def _expand(self, h: Tensor) -> Tensor:
        if self.conv is None:
            return F.linear(h, self.u, self.bias)
        return F.conv2d(h, self.u.view(*self.u.shape, 1, 1), self.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self._project(x)
        r_all, r = h.shape[1] if self.conv is not None else h.shape[-1], self.rank
        idx = torch.arange(r_all, device=h.device)
        if self.training:
            lead = x.shape[0]
            b = torch.randint(1, r + 1, (lead,), device=h.device)
            mask = (idx.unsqueeze(0) < b.unsqueeze(1)).to(h.dtype)  # [B, r]
        else:
            mask = (idx < r).to(h.dtype).unsqueeze(0)
        if self.conv is not None:
            mask = mask[:, :, None, None]
        elif h.ndim > 2:
            mask = mask.view(mask.shape[0], *([1] * (h.ndim - 2)), r_all)
        return self._expand(h * mask)

    def group_norms(self) -> Tensor:
        """``g_b = sqrt(sum_{i >= b} ||U_i||^2 + ||V_i||^2)`` for b = 1..r (hierarchical groups)."""
        sq = self.u.pow(2).sum(0) + self.v.pow(2).sum(1)
        tail = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])
        return tail.clamp_min(1e-24).sqrt()

    def weight(self) -> Tensor:
        """Effective weight ``U[:, :r] V[:r]`` (out x in)."""
        r = self.rank
        return self.u[:, :r] @ self.v[:r]


@PLUGINS.register("ordered_dropout")
class OrderedDropout(Plugin):
    """Maestro: SVD-initialised low-rank layers trained with ordered rank dropout, group lasso, shrinking.

    Args:
        layers: dotted names of nn.Linear / nn.Conv2d sub-modules to decompose.
        rank: initial rank (None = full).
        group_lasso: weight of the hierarchical group lasso, >= 0.
        shrink_every: epochs between progressive-shrinking steps (0 = never).
        shrink_threshold: groups with norm below this are removed, >= 0.
        init: ``"svd"`` or ``"random"``.
    """

    order = 0

    def __init__(self, layers: list[str] = ("head",), rank: int | None = None, group_lasso: float = 0.0,
                 shrink_every: int = 0, shrink_threshold: float = 1e-3, init: str = "svd") -> None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        if not layers:
            raise ValueError("layers=[] must name at least one layer to decompose")
        if rank is not None:
            check_range("rank", rank, 1)
        check_range("group_lasso", group_lasso, 0.0)
        check_range("shrink_every", shrink_every, 0)
        check_range("shrink_threshold", shrink_threshold, 0.0)
        check_choice("init", init, ("svd", "random"))
        self.layers, self.rank, self.group_lasso = layers, rank, float(group_lasso)
        self.shrink_every, self.shrink_threshold, self.init = int(shrink_every), float(shrink_threshold), init
        self.decomposed: dict[str, LowRankLayer] = {}

    def attach(self, module: Any) -> None:
        for name in self.layers:
            layer = get_layer(module, name, "layers")
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                raise ValueError(f"layers={name!r} is a {type(layer).__name__}; ordered_dropout decomposes "
                                 "nn.Linear or nn.Conv2d layers")
            new = LowRankLayer(layer, self.rank, self.init)
            set_layer(module, name, new)
            self.decomposed[name] = new

    def extra_terms(self, outputs: dict[str, Tensor], batch: Any, module: Any) -> dict[str, Tensor]:
        if not self.group_lasso:
            return {}
        total = sum(m.group_norms()[: m.rank].sum() for m in self.decomposed.values())
        return {"group_lasso": self.group_lasso * total}

    @torch.no_grad()
    def shrink(self) -> dict[str, int]:
        """Drop trailing rank groups whose norm is below ``shrink_threshold``; returns the new ranks."""
        for m in self.decomposed.values():
            g = m.group_norms()[: m.rank]
            keep = int((g >= self.shrink_threshold).sum().clamp_min(1))  # tail norms are decreasing
            m.active_rank.fill_(keep)
        return {n: m.rank for n, m in self.decomposed.items()}

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.shrink_every and (trainer.current_epoch + 1) % self.shrink_every == 0:
            for name, r in self.shrink().items():
                pl_module.log(f"train/rank_{name}", float(r))
