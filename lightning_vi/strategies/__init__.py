"""Compressed communication (MASHA, Beznosikov et al. 2022): compressors, ``ddp_topk``/``ddp_randk``, MASHA1/MASHA2
(simulated workers, ``masha``) and the ``Masha`` optimizer (real processes, ``masha_optim``).

Importing this package (``import lightning_vi`` does) registers ``ddp_topk`` and ``ddp_randk`` in Lightning's
StrategyRegistry, so ``Trainer(strategy="ddp_topk")`` and ``lvi fit --trainer.strategy ddp_topk`` work.
"""

from lightning_vi.strategies.compressed_ddp import (
    CommBytesMonitor,
    CompressedDDPStrategy,
    RandKDDPStrategy,
    TopKDDPStrategy,
    register_strategies,
)
from lightning_vi.strategies.compressors import ErrorFeedback, RandK, Sparse, TopK, resolve_k
from lightning_vi.strategies.masha import Extragradient, Masha1, Masha2
from lightning_vi.strategies.masha_optim import Masha

register_strategies()

__all__ = ["CommBytesMonitor", "CompressedDDPStrategy", "RandKDDPStrategy", "TopKDDPStrategy", "ErrorFeedback",
           "RandK", "Sparse", "TopK", "resolve_k", "register_strategies", "Extragradient", "Masha1", "Masha2", "Masha"]
