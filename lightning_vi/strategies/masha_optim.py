"""MASHA1/MASHA2 (Beznosikov et al. 2022, Algorithms 1-2) as a ``torch.optim.Optimizer`` for min-max objectives,
communicating compressed operator differences across real processes with ``torch.distributed`` (gloo works).

Each process is one worker ``m`` holding its local objective; the game's operator is the mean of the workers'
operators ``F_m(z) = (grad_x f_m, -grad_y f_m)``. Parameters of groups marked ``maximize=True`` are the max
players: their gradients are negated to form the operator (``z`` is all parameters, flattened in group order).

``step(closure)`` needs a closure that zeroes the gradients, evaluates the local loss, calls ``backward()`` and
returns the loss (the usual PyTorch convention; it is called at ``z^{k+1/2}``, and at ``w^{k+1}`` when the
reference point is refreshed, and once at ``z^0`` on the first step). After ``step`` the parameters hold
``z^{k+1}``. Communication per step: an ``all_gather`` of each worker's compressed message (Rand-k: k values,
coordinates regenerated from the shared seed schedule; Top-k: k values and k int32 indices); on a refresh,
an ``all_reduce`` of the full ``F_m(w)``. The server of the paper's star topology is replicated on every rank:
each rank computes the same server reply from the gathered messages (same numbers, same order, same shared
generator), so ``server_k`` (downlink compression) changes the iterates exactly as in
:class:`lightning_vi.strategies.masha.Masha1`/``Masha2``, which this optimizer reproduces draw for draw.
Bits are counted as in that simulation (the star model, both directions, all workers), so
``optimizer.bits_up``/``bits_down`` are the same numbers on every rank. Without an initialised process group
it runs as a single worker (M = 1).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from lightning_vi.strategies.compressors import ErrorFeedback, RandK, Sparse, TopK
from lightning_vi.strategies.masha import (
    BITS_PER_COIN,
    BITS_PER_FLOAT,
    BITS_PER_INDEX,
    check_probabilities,
    check_step,
    coin_generator,
    masha1_server,
    masha2_server,
    server_generator,
    worker_generator,
)

VARIANTS = ("masha1", "masha2")


class Masha(torch.optim.Optimizer):
    """MASHA as an optimizer.

    Args:
        params: parameters or groups; a group with ``maximize=True`` holds max players (gradient ascent).
        lr: the step size ``gamma`` (> 0), one for all groups (the method is defined with a single step).
        k: kept coordinates per message, a fraction in (0, 1] or a count in [1, d].
        variant: ``"masha1"`` (Rand-k, unbiased) or ``"masha2"`` (Top-k with error feedback).
        p, tau: refresh probability (default ``k/d``) and weight of ``z^k`` in ``z_bar`` (default ``1 - p``).
        server_k: compression of the server's reply (None: uncompressed downlink).
        error_feedback: MASHA2 only; False drops the residuals (not the paper's method).
        seed: the shared seed schedule (same on every rank).
        process_group: the workers' group (default: the world; none initialised: a single worker).
    """

    def __init__(self, params: Iterable[Any], lr: float, k: float | int = 0.1, variant: str = "masha1",
                 p: float | None = None, tau: float | None = None, server_k: float | int | None = None,
                 error_feedback: bool = True, seed: int = 0, process_group: Any = None) -> None:
        check_step(lr)
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}; allowed: {', '.join(map(repr, VARIANTS))}")
        super().__init__(params, dict(lr=lr, maximize=False))
        lrs = {group["lr"] for group in self.param_groups}
        if len(lrs) != 1:
            raise ValueError(f"param groups have lr={sorted(lrs)!r}; allowed: a single step size for all groups")
        self.params = [p_ for group in self.param_groups for p_ in group["params"]]
        self.signs = [(-1.0 if group["maximize"] else 1.0) for group in self.param_groups for _ in group["params"]]
        self.d = sum(p_.numel() for p_ in self.params)
        self.variant = variant
        make = RandK if variant == "masha1" else TopK
        self.compressor = make(k)
        self.kept = self.compressor.num_kept(self.d)  # ValueError naming k when outside (0, d]
        self.server = None if server_k is None else make(server_k)
        self.server_kept = None if self.server is None else self.server.num_kept(self.d)
        self.p, self.tau = check_probabilities(p, tau, self.kept / self.d)
        self.error_feedback = bool(error_feedback)
        self.group = process_group
        distributed = dist.is_available() and dist.is_initialized()
        self.M = dist.get_world_size(process_group) if distributed else 1
        self.rank = dist.get_rank(process_group) if distributed else 0
        self.distributed = distributed and self.M > 1
        self.seed = int(seed)
        # every rank keeps every worker's generator (to regenerate the Rand-k coordinates), the server's and the coins
        self.generators = [worker_generator(self.seed, m) for m in range(self.M)]
        self.server_gen = server_generator(self.seed)
        self.coins = coin_generator(self.seed)
        self.worker_ef = ErrorFeedback(self.compressor)
        self.server_ef = None if (self.server is None or variant == "masha1") else ErrorFeedback(self.server)
        self.bits_up = 0
        self.bits_down = 0
        self.w: Tensor | None = None
        self.F_w_local: Tensor | None = None
        self.F_w: Tensor | None = None

    @property
    def bits(self) -> int:
        return self.bits_up + self.bits_down

    # -- parameters <-> the flat point z, gradients -> the local operator F_m(z)
    def _get(self) -> Tensor:
        return torch.cat([p_.detach().reshape(-1) for p_ in self.params])

    @torch.no_grad()
    def _set(self, z: Tensor) -> None:
        offset = 0
        for p_ in self.params:
            p_.copy_(z[offset:offset + p_.numel()].view_as(p_))
            offset += p_.numel()

    def _operator(self, closure: Callable[[], Any], z: Tensor) -> tuple[Tensor, Any]:
        self._set(z)
        with torch.enable_grad():
            loss = closure()
        parts = []
        for p_, sign in zip(self.params, self.signs):
            g = p_.grad if p_.grad is not None else torch.zeros_like(p_)
            parts.append(sign * g.detach().reshape(-1))
        return torch.cat(parts), loss

    # -- communication
    def _full_round(self, closure: Callable[[], Any], point: Tensor) -> Any:
        F_local, loss = self._operator(closure, point)
        total = F_local.clone()
        if self.distributed:
            dist.all_reduce(total, group=self.group)
        self.F_w_local, self.F_w = F_local, total / self.M
        self.bits_up += self.M * self.d * BITS_PER_FLOAT
        self.bits_down += self.M * self.d * BITS_PER_FLOAT
        return loss

    def _gather(self, msg: Sparse, indices: list[Tensor]) -> list[Sparse]:
        """Every worker's message; Rand-k coordinates were drawn alike on every rank (``indices``)."""
        if not self.distributed:
            return [msg]
        values = [torch.empty_like(msg.values) for _ in range(self.M)]
        dist.all_gather(values, msg.values.contiguous(), group=self.group)
        if self.variant == "masha1":
            return [Sparse(v, i, self.d) for v, i in zip(values, indices)]
        idx = [torch.empty_like(msg.indices) for _ in range(self.M)]
        dist.all_gather(idx, msg.indices.contiguous(), group=self.group)
        return [Sparse(v, i, self.d) for v, i in zip(values, idx)]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise ValueError("closure=None; MASHA evaluates the operator at several points per step: pass a closure "
                             "that zeroes the gradients, computes the local loss, calls backward() and returns it")
        gamma = self.param_groups[0]["lr"]
        z = self._get()
        if self.w is None:  # initialisation: w^0 = z^0, F(w^0) known to all
            self.w = z.clone()
            self._full_round(closure, self.w)
        z_bar = self.tau * z + (1 - self.tau) * self.w
        z_half = z_bar - gamma * self.F_w
        F_half, loss = self._operator(closure, z_half)
        if self.variant == "masha1":
            # draw every worker's coordinates (in worker order) so all ranks stay in step
            indices = [self.compressor.indices(self.d, gen, z.device) for gen in self.generators]
            delta = F_half - self.F_w_local
            msg = Sparse(delta[indices[self.rank].long()] * (self.d / self.kept), indices[self.rank], self.d)
            msgs = self._gather(msg, indices)
            self.bits_up += self.M * self.kept * BITS_PER_FLOAT
        else:
            delta = gamma * (F_half - self.F_w_local)
            msg = (self.worker_ef.compress(delta, key="worker") if self.error_feedback
                   else self.compressor.compress(delta))
            msgs = self._gather(msg, [])
            self.bits_up += self.M * self.kept * (BITS_PER_FLOAT + BITS_PER_INDEX)
        total = torch.zeros_like(z)
        for m in msgs:  # worker order, as in the simulation
            total += m.dense()
        mean = total / self.M
        if self.variant == "masha1":
            g, bits = masha1_server(mean, [m.indices for m in msgs], self.server_kept, self.server_gen)
            z_new = z_bar - gamma * (self.F_w + g)
        else:
            g, bits = masha2_server(mean, [m.indices for m in msgs], self.server_ef, self.error_feedback)
            z_new = z_bar - gamma * self.F_w - g
        self.bits_down += self.M * bits + self.M * BITS_PER_COIN
        if torch.rand((), generator=self.coins) < self.p:  # the common coin b_k: refresh w
            self.w = z_new.clone()
            self._full_round(closure, self.w)
        self._set(z_new)
        return loss
