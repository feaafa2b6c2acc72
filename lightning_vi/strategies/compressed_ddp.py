"""DDP with compressed gradient communication: ``ddp_topk`` and ``ddp_randk`` (the practical form of MASHA's
compressors, Beznosikov et al. 2022; Top-k with error feedback as in Stich et al. 2018).

Each gradient bucket goes through a DDP communication hook that compresses it, exchanges only what the
compressor keeps, decompresses and averages over the workers:

* Top-k (``ddp_topk``): every worker keeps its own ``k`` largest coordinates of ``e + g`` (error feedback
  on by default); an ``all_gather`` of the ``k`` values and their int32 indices; the sum of the
  scattered messages divided by the world size.
* Rand-k (``ddp_randk``): the ``k`` coordinates come from a generator seeded alike on every worker
  (``seed``, the bucket and the call count), so an ``all_reduce`` of the ``k`` values is enough (no
  indices). Unbiased (scaled by ``d/k``) without error feedback (the default); with error feedback the
  unscaled, contractive Rand-k is used, since EF needs a contraction.

Lightning registers DDP comm hooks only on CUDA; these strategies register theirs on any device, gloo
included. On one process there is nothing to communicate: a warning, then plain DDP behaviour.
The bytes each worker sends per step are logged as ``train/comm_bytes`` (and ``train/comm_bytes_dense``,
what plain DDP would send: the full gradient) by :class:`CommBytesMonitor`, which the strategy adds.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from lightning_vi.strategies.compressors import Compressor, ErrorFeedback, RandK, TopK


class CompressionState:
    """State of the comm hook: the compressor, error-feedback residuals per bucket, and byte counters."""

    def __init__(self, compressor: Compressor, error_feedback: bool, shared_indices: bool, seed: int,
                 process_group: Any = None) -> None:
        self.compressor = compressor
        self.ef = ErrorFeedback(compressor) if error_feedback else None
        self.shared_indices = shared_indices
        self.seed = int(seed)
        self.process_group = process_group
        self.calls: dict[object, int] = {}
        self.bytes_sent = 0  # since the last reset_step()
        self.dense_bytes = 0
        self.bytes_sent_total = 0
        self.dense_bytes_total = 0

    def generator(self, key: object) -> torch.Generator:
        """A generator seeded identically on every worker: common seed, bucket index, call count."""
        count = self.calls.get(key, 0)
        self.calls[key] = count + 1
        index = key[0] if isinstance(key, tuple) else 0
        return torch.Generator().manual_seed((self.seed * 1_000_003 + index * 7919 + count) % (2**63 - 1))

    def count(self, sent: int, dense: int) -> None:
        self.bytes_sent += sent
        self.dense_bytes += dense
        self.bytes_sent_total += sent
        self.dense_bytes_total += dense

    def reset_step(self) -> tuple[int, int]:
        out = (self.bytes_sent, self.dense_bytes)
        self.bytes_sent = self.dense_bytes = 0
        return out


def compressed_allreduce_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future:
    """DDP comm hook: compress the bucket, exchange the message, return the decompressed average."""
    flat = bucket.buffer()
    world = dist.get_world_size(state.process_group)
    key = (bucket.index(), flat.numel(), tuple(id(p) for p in bucket.parameters()))
    gen = state.generator(key) if state.shared_indices else None
    if state.ef is not None:
        msg = state.ef.compress(flat, key=key, generator=gen)
    else:
        msg = state.compressor.compress(flat, generator=gen)
    values = msg.values.contiguous()
    out = torch.zeros_like(flat)
    if state.shared_indices:  # every worker chose the same coordinates: sum the values only
        dist.all_reduce(values, group=state.process_group)
        out[msg.indices.long()] = values / world
        sent = msg.nbytes(send_indices=False)
    else:
        indices = msg.indices.contiguous()
        all_values = [torch.empty_like(values) for _ in range(world)]
        all_indices = [torch.empty_like(indices) for _ in range(world)]
        dist.all_gather(all_values, values, group=state.process_group)
        dist.all_gather(all_indices, indices, group=state.process_group)
        for v, i in zip(all_values, all_indices):
            out.index_add_(0, i.long(), v)
        out /= world
        sent = msg.nbytes(send_indices=True)
    state.count(sent, flat.numel() * flat.element_size())
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(out)
    return fut


# DDP checks the hook's annotations as objects (``from __future__ import annotations`` makes them strings).
compressed_allreduce_hook.__annotations__.update(bucket=dist.GradBucket, state=CompressionState,
                                                 **{"return": torch.futures.Future[torch.Tensor]})


class CompressedDDPStrategy(DDPStrategy):
    """DDPStrategy whose gradient all-reduce is replaced by a compressed exchange (any device, gloo too).

    Args:
        ratio: kept coordinates per bucket, a fraction in (0, 1] (``0.01``: 1%) or an absolute count.
        error_feedback: keep the compression error and add it to the next gradient (default: True for
            Top-k, False for Rand-k).
        seed: common seed of the Rand-k coordinate draws (same on all workers).
        **kwargs: DDPStrategy's arguments.
    """

    compressor_name = "topk"

    def __init__(self, ratio: float | int = 0.01, error_feedback: bool | None = None, seed: int = 0,
                 **kwargs: Any) -> None:
        if kwargs.get("ddp_comm_hook") is not None:
            raise ValueError("ddp_comm_hook is set by the compressed strategy itself; allowed: None")
        super().__init__(**kwargs)
        self.ratio = ratio
        self.error_feedback = self.default_error_feedback if error_feedback is None else bool(error_feedback)
        self.seed = seed
        self.make_compressor()  # validates ratio now (ValueError naming it)
        self.compression: CompressionState | None = None

    default_error_feedback = True

    def make_compressor(self) -> Compressor:
        raise NotImplementedError(f"{type(self).__name__} must define make_compressor()")

    @property
    def shared_indices(self) -> bool:
        return False

    def setup(self, trainer: pl.Trainer) -> None:
        if not any(isinstance(cb, CommBytesMonitor) for cb in trainer.callbacks):
            trainer.callbacks.append(CommBytesMonitor())
        super().setup(trainer)

    def _register_ddp_hooks(self) -> None:
        if self.world_size < 2:
            warnings.warn(f"{type(self).__name__} (ddp_{self.compressor_name}) runs on a single process: there is "
                          "no communication to compress, so it falls back to plain DDP (no compression).",
                          UserWarning, stacklevel=2)
            self.compression = None
            return
        assert isinstance(self.model, torch.nn.parallel.DistributedDataParallel)
        self.compression = CompressionState(self.make_compressor(), self.error_feedback, self.shared_indices,
                                            self.seed)
        self.model.register_comm_hook(self.compression, compressed_allreduce_hook)


class TopKDDPStrategy(CompressedDDPStrategy):
    """``ddp_topk``: Top-k sparsified gradients with error feedback; all_gather of values + indices."""

    compressor_name = "topk"
    default_error_feedback = True

    def make_compressor(self) -> Compressor:
        return TopK(self.ratio)


class RandKDDPStrategy(CompressedDDPStrategy):
    """``ddp_randk``: Rand-k with coordinates shared across workers; all_reduce of the k values only.

    Without error feedback the values are scaled by ``d/k`` (unbiased, MASHA1's compressor); with it,
    unscaled (a contraction, which error feedback needs).
    """

    compressor_name = "randk"
    default_error_feedback = False

    def make_compressor(self) -> Compressor:
        return RandK(self.ratio, scale=not self.error_feedback)

    @property
    def shared_indices(self) -> bool:
        return True


class CommBytesMonitor(Callback):
    """Logs the bytes this worker sent for the step's gradients: ``train/comm_bytes``; what plain DDP would
    send (the full gradient): ``train/comm_bytes_dense``; the running total: ``train/comm_bytes_total``."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        state = getattr(trainer.strategy, "compression", None)
        if state is None:
            return
        sent, dense = state.reset_step()
        if dense == 0:  # gradient accumulation step: nothing was communicated
            return
        pl_module.log("train/comm_bytes", float(sent), on_step=True, on_epoch=False)
        pl_module.log("train/comm_bytes_dense", float(dense), on_step=True, on_epoch=False)
        pl_module.log("train/comm_bytes_total", float(state.bytes_sent_total), on_step=True, on_epoch=False)


STRATEGIES = {"ddp_topk": TopKDDPStrategy, "ddp_randk": RandKDDPStrategy}


def register_strategies() -> None:
    """Register ``ddp_topk`` and ``ddp_randk`` in Lightning's StrategyRegistry (idempotent)."""
    from lightning.pytorch.strategies import StrategyRegistry

    for name, cls in STRATEGIES.items():
        if name not in StrategyRegistry:
            StrategyRegistry.register(name, cls, description=cls.__doc__.splitlines()[0])
