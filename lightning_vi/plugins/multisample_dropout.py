"""Multi-sample dropout (Inoue 2019, "Multi-Sample Dropout for Accelerated Training and Better
Generalization", Sec. 2).

    loss = 1/K sum_k L(head(dropout_k(h)), y)

K independent dropout masks on the feature vector ``h`` go through the *shared* head; the loss is the
mean of the K per-sample losses (not the loss of the mean logits). Inference is a single pass without
dropout. The head returns ``[K, B, C]`` in training; the classifier averages the per-sample losses.
With ``K=1`` this is exactly ordinary dropout with the same probability (same random stream).

Defaults: ``k=8``, ``p=0.5``. The family's own ``dropout`` layer is replaced by the plugin's.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.protocols import HasHead, require_capability
from lightning_vi.plugins._util import require
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


class MultiSampleHead(nn.Module):
    """``head`` applied to ``k`` dropout samples of its input: ``[B, F] -> [K, B, C]`` in training."""

    def __init__(self, head: nn.Module, k: int, p: float) -> None:
        super().__init__()
        self.head, self.k, self.p = head, k, p

    def forward(self, h: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            out = self.head(h)
            return out.unsqueeze(0).expand(self.k, *out.shape) if self.training else out
        # one mask per sample; for K=1 the [1, B, F] draw is the same random stream as ordinary dropout on [B, F]
        hk = F.dropout(h.unsqueeze(0).expand(self.k, *h.shape), self.p, True)
        return self.head(hk)


@PLUGINS.register("multisample_dropout")
class MultiSampleDropout(Plugin):
    """Multi-sample dropout: K dropout samples through the shared head, per-sample losses averaged.

    Args:
        k: number of dropout samples, >= 1.
        p: dropout probability, in [0, 1).
    """

    order = 5

    def __init__(self, k: int = 8, p: float = 0.5) -> None:
        check_range("k", k, 1)
        check_range("p", p, 0.0, 1.0, high_open=True)
        if int(k) != k:
            raise ValueError(f"k={k!r} must be an integer >= 1")
        self.k, self.p = int(k), float(p)

    def attach(self, module: Any) -> None:
        require_capability(module, HasHead, f"plugin {self.name!r} (e.g. on the 'classifier' family)")
        require(not isinstance(module.head, MultiSampleHead), self.name, module, "multisample_dropout is attached twice")
        if isinstance(getattr(module, "dropout", None), nn.Dropout):
            module.dropout = nn.Identity()
        module.head = MultiSampleHead(module.head, self.k, self.p)
