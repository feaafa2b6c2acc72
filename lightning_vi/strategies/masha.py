"""MASHA1 and MASHA2 (Beznosikov, Richtarik, Diskin, Ryabinin, Gasnikov 2022, Algorithms 1 and 2) and uncompressed
extragradient, for a variational inequality ``find z*: <F(z*), z - z*> >= 0`` with ``F = (1/M) sum_m F_m`` split
over M workers. For a min-max game ``min_x max_y f(x, y)`` the operator is ``F(z) = (grad_x f, -grad_y f)``.

Both are the loopless variance-reduced extragradient of Alacaoglu & Malitsky (2021) in which each worker sends
only a compression of the difference of its operator to a reference point ``w``:

    z_bar     = tau z^k + (1 - tau) w^k
    z^{k+1/2} = z_bar - gamma F(w^k)
    MASHA1 (Alg. 1, unbiased Q = Rand-k):
        worker m sends  Q_m(F_m(z^{k+1/2}) - F_m(w^k));   server sends  g = Q_serv(mean_m Q_m(...))
        z^{k+1} = z_bar - gamma (F(w^k) + g)
    MASHA2 (Alg. 2, contractive C = Top-k with error feedback e_m on workers and e on the server):
        worker m sends  c_m = C_m(gamma (F_m(z^{k+1/2}) - F_m(w^k)) + e_m),  e_m <- e_m + gamma(...) - c_m
        server sends    g = C_serv(mean_m c_m + e),                          e <- e + mean_m c_m - g
        z^{k+1} = z_bar - gamma F(w^k) - g
    w^{k+1} = z^{k+1} with probability p (a coin b_k the server sends; then every worker sends F_m(w^{k+1})
    uncompressed and the server broadcasts F(w^{k+1})), else w^k.

``server_k=None`` leaves the downlink uncompressed: the server relays the mean of the workers' sparse messages
(supported on the union U of their coordinates). ``server_k`` set compresses it (bidirectional compression).

Workers are simulated in one process and every message is counted in the paper's star model, per worker link,
both ways: 32 bits a float, 32 bits an index (int32, as on the wire in ``ddp_topk``), 1 bit a coin.
Rand-k coordinates come from generators whose seed schedule is shared (workers: ``(seed, m)``, server:
``seed``), so Rand-k messages carry values only; Top-k messages carry values and indices. The relayed
uncompressed downlink costs ``|U|`` values (MASHA1: U is regenerable) or ``min(|U|(32+32), 32 d)`` bits
(MASHA2) per worker. :class:`lightning_vi.strategies.masha_optim.Masha` is the same method as a
``torch.optim.Optimizer`` across real processes, drawing the same random numbers in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from lightning_vi.strategies.compressors import Compressor, ErrorFeedback, RandK, TopK

Operator = Callable[[Tensor], Tensor]
BITS_PER_FLOAT = 32
BITS_PER_INDEX = 32
BITS_PER_COIN = 1


def worker_generator(seed: int, m: int) -> torch.Generator:
    """Generator of worker ``m``'s Rand-k coordinates (its seed schedule is known to everyone)."""
    return torch.Generator().manual_seed(seed * 1000 + m)


def coin_generator(seed: int) -> torch.Generator:
    """The server's generator: the coins ``b_k`` (and, after them, nothing else)."""
    return torch.Generator().manual_seed(seed * 1000 + 999)


def server_generator(seed: int) -> torch.Generator:
    """Generator of the server's Rand-k coordinates (shared schedule: no indices on the downlink)."""
    return torch.Generator().manual_seed(seed * 1000 + 998)


@dataclass
class History:
    """Per-iteration record: the iterate's distance to a known solution and the bits sent so far, per direction
    (``bits_up``: workers to server, ``bits_down``: server to workers, ``bits``: both)."""

    distance: list[float] = field(default_factory=list)
    bits: list[int] = field(default_factory=list)
    bits_up: list[int] = field(default_factory=list)
    bits_down: list[int] = field(default_factory=list)
    messages: int = 0

    def bits_to_reach(self, tol: float, direction: str = "total") -> int | None:
        """Bits sent (``direction``: "total", "up" or "down") when the distance first fell below ``tol``
        (None if it never did)."""
        series = {"total": self.bits, "up": self.bits_up, "down": self.bits_down}
        if direction not in series:
            raise ValueError(f"direction={direction!r}; allowed: 'total', 'up', 'down'")
        for dist, bits in zip(self.distance, series[direction]):
            if dist < tol:
                return bits
        return None


def check_step(gamma: float) -> float:
    if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or not gamma > 0:
        raise ValueError(f"gamma={gamma!r} must be a positive number (the step size)")
    return float(gamma)


def check_probabilities(p: float | None, tau: float | None, default_p: float) -> tuple[float, float]:
    """``p`` in (0, 1] (default: ``default_p``) and ``tau`` in [0, 1) (default ``1 - p``, the paper's choice)."""
    p_val = default_p if p is None else p
    if not isinstance(p_val, (int, float)) or not 0 < p_val <= 1:
        raise ValueError(f"p={p!r} must lie in (0, 1] (the probability of refreshing the reference point)")
    tau_val = 1 - float(p_val) if tau is None else tau
    if not isinstance(tau_val, (int, float)) or not 0 <= tau_val < 1:
        raise ValueError(f"tau={tau!r} must lie in [0, 1)")
    return float(p_val), float(tau_val)


def sparse_union_size(indices: Sequence[Tensor]) -> int:
    return int(torch.unique(torch.cat([i.long() for i in indices])).numel())


def masha1_server(mean: Tensor, indices: Sequence[Tensor], server_kept: int | None,
                  server_gen: torch.Generator) -> tuple[Tensor, int]:
    """MASHA1's server reply to the mean of the workers' Rand-k messages, and its bits per worker.

    ``server_kept=None``: the mean itself, relayed as its values on the union ``U`` of the workers' coordinates
    (regenerable by every worker from the shared seed schedule). Otherwise ``Q_serv``: Rand-k over ``U``,
    ``min(k_s, |U|)`` coordinates drawn from the shared server generator, scaled ``|U|/k_s`` (unbiased on
    vectors supported on ``U``, variance ``(|U|/k_s - 1)||x||^2``; values only on the wire).
    """
    union = torch.unique(torch.cat([i.long() for i in indices]))
    if server_kept is None:
        return mean, union.numel() * BITS_PER_FLOAT
    kept = min(server_kept, union.numel())
    pick = union[torch.randperm(union.numel(), generator=server_gen)[:kept]]
    g = torch.zeros_like(mean)
    g[pick] = mean[pick] * (union.numel() / kept)
    return g, kept * BITS_PER_FLOAT


def masha2_server(mean: Tensor, indices: Sequence[Tensor], server_ef: ErrorFeedback | None,
                  error_feedback: bool = True) -> tuple[Tensor, int]:
    """MASHA2's server reply to the mean of the workers' Top-k messages, and its bits per worker.

    ``server_ef=None``: the mean relayed on the union of the workers' coordinates (values + int32 indices, or
    dense floats if cheaper). Otherwise ``C_serv(mean + e)`` with Top-k, ``e <- e + mean - C_serv(...)``.
    """
    if server_ef is None:
        per_index = BITS_PER_FLOAT + BITS_PER_INDEX
        return mean, min(sparse_union_size(indices) * per_index, mean.numel() * BITS_PER_FLOAT)
    msg = server_ef.compress(mean, key="server") if error_feedback else server_ef.compressor.compress(mean)
    return msg.dense(), msg.values.numel() * (BITS_PER_FLOAT + BITS_PER_INDEX)


class _VIMethod:
    """Shared bookkeeping: bit counters (both directions), the iterate ``z`` and :meth:`run`."""

    z: Tensor

    def __init__(self, operators: Sequence[Operator], z0: Tensor, gamma: float) -> None:
        if not operators:
            raise ValueError("operators is empty; allowed: one operator F_m per worker (at least one)")
        self.gamma = check_step(gamma)
        self.operators = list(operators)
        self.M = len(self.operators)
        self.z = z0.detach().clone().reshape(-1)
        self.d = self.z.numel()
        self.bits_up = 0
        self.bits_down = 0
        self.messages = 0

    @property
    def bits(self) -> int:
        """Bits sent both ways so far."""
        return self.bits_up + self.bits_down

    def _full_round(self, point: Tensor) -> tuple[list[Tensor], Tensor]:
        """Every worker sends ``F_m(point)`` uncompressed; the server broadcasts the mean to every worker."""
        values = [F(point) for F in self.operators]
        self.bits_up += self.M * self.d * BITS_PER_FLOAT
        self.bits_down += self.M * self.d * BITS_PER_FLOAT
        self.messages += self.M
        return values, torch.stack(values).mean(0)

    def step(self) -> Tensor:
        raise NotImplementedError

    def run(self, iterations: int, solution: Tensor | None = None) -> History:
        history = History()
        for _ in range(iterations):
            self.step()
            if solution is not None:
                history.distance.append(float(torch.linalg.vector_norm(self.z - solution.reshape(-1))))
            history.bits.append(self.bits)
            history.bits_up.append(self.bits_up)
            history.bits_down.append(self.bits_down)
        history.messages = self.messages
        return history


class _Masha(_VIMethod):
    """The common loop of MASHA1/MASHA2: reference point ``w``, its operator values and the server's coin."""

    def __init__(self, operators: Sequence[Operator], z0: Tensor, gamma: float, compressor: Compressor,
                 p: float | None, tau: float | None, seed: int, server: Compressor | None) -> None:
        super().__init__(operators, z0, gamma)
        self.compressor = compressor
        self.kept = compressor.num_kept(self.d)  # validates k against d (ValueError naming k)
        self.server = server
        self.server_kept = None if server is None else server.num_kept(self.d)
        self.p, self.tau = check_probabilities(p, tau, self.kept / self.d)
        self.seed = int(seed)
        self.generators = [worker_generator(self.seed, m) for m in range(self.M)]
        self.server_gen = server_generator(self.seed)
        self.coins = coin_generator(self.seed)
        self.w = self.z.clone()
        self.F_w_local, self.F_w = self._full_round(self.w)  # initialisation: z^0 = w^0, F(w^0) known to all

    def combine(self, z_bar: Tensor, z_half: Tensor) -> Tensor:
        """The compressed exchange; returns the new iterate ``z^{k+1}``."""
        raise NotImplementedError

    def step(self) -> Tensor:
        z_bar = self.tau * self.z + (1 - self.tau) * self.w
        z_half = z_bar - self.gamma * self.F_w
        self.z = self.combine(z_bar, z_half)
        self.bits_down += self.M * BITS_PER_COIN  # the server sends the coin b_k
        if torch.rand((), generator=self.coins) < self.p:
            self.w = self.z.clone()
            self.F_w_local, self.F_w = self._full_round(self.w)
        return self.z


class Masha1(_Masha):
    """MASHA1 (Algorithm 1): unbiased Rand-k compression of the workers' differences to the reference point,
    optionally also of the server's reply (``server_k``: Rand-k, bidirectional compression).

    Args:
        operators: the workers' operators ``F_m``; z0: the starting point (``w^0 = z^0``).
        gamma: step size (> 0); tau: weight of ``z^k`` in ``z_bar`` (default ``1 - p``, as in the analysis);
        p: probability of refreshing the reference point ``w`` (default ``k/d``, which balances the expected
            full and compressed traffic); k: Rand-k size (fraction in (0, 1] or count in [1, d]);
        server_k: Rand-k size of the server-to-worker message (None: uncompressed downlink); seed: randomness.
    """

    def __init__(self, operators: Sequence[Operator], z0: Tensor, gamma: float, k: float | int = 0.1,
                 p: float | None = None, tau: float | None = None, seed: int = 0,
                 server_k: float | int | None = None) -> None:
        super().__init__(operators, z0, gamma, RandK(k), p, tau, seed, None if server_k is None else RandK(server_k))

    def combine(self, z_bar: Tensor, z_half: Tensor) -> Tensor:
        total = torch.zeros_like(self.z)
        indices = []
        for F, F_w, gen in zip(self.operators, self.F_w_local, self.generators):
            msg = self.compressor.compress(F(z_half) - F_w, generator=gen)
            self.bits_up += msg.values.numel() * BITS_PER_FLOAT  # indices: regenerated from the shared seed
            self.messages += 1
            indices.append(msg.indices)
            total += msg.dense()
        g, bits = masha1_server(total / self.M, indices, self.server_kept, self.server_gen)
        self.bits_down += self.M * bits
        return z_bar - self.gamma * (self.F_w + g)


class Masha2(_Masha):
    """MASHA2 (Algorithm 2): contractive Top-k compression with error feedback of ``gamma`` times the workers'
    differences to the reference point; the server's reply optionally Top-k compressed with its own error
    feedback (``server_k``). ``error_feedback=False`` drops both residuals (plain biased compression, for
    comparison: not the paper's method). Other arguments as :class:`Masha1`."""

    def __init__(self, operators: Sequence[Operator], z0: Tensor, gamma: float, k: float | int = 0.1,
                 p: float | None = None, tau: float | None = None, seed: int = 0,
                 server_k: float | int | None = None, error_feedback: bool = True) -> None:
        super().__init__(operators, z0, gamma, TopK(k), p, tau, seed, None if server_k is None else TopK(server_k))
        self.error_feedback = bool(error_feedback)
        self.worker_ef = ErrorFeedback(self.compressor)
        self.server_ef = None if self.server is None else ErrorFeedback(self.server)

    def _compress(self, ef: ErrorFeedback, x: Tensor, key: object):
        return ef.compress(x, key=key) if self.error_feedback else ef.compressor.compress(x)

    def combine(self, z_bar: Tensor, z_half: Tensor) -> Tensor:
        total = torch.zeros_like(self.z)
        indices = []
        for m, (F, F_w) in enumerate(zip(self.operators, self.F_w_local)):
            msg = self._compress(self.worker_ef, self.gamma * (F(z_half) - F_w), key=m)
            self.bits_up += msg.values.numel() * (BITS_PER_FLOAT + BITS_PER_INDEX)
            self.messages += 1
            indices.append(msg.indices)
            total += msg.dense()
        g, bits = masha2_server(total / self.M, indices, self.server_ef, self.error_feedback)
        self.bits_down += self.M * bits
        return z_bar - self.gamma * self.F_w - g

    def residuals(self) -> tuple[list[Tensor], Tensor | None]:
        """The workers' error-feedback residuals ``e_m`` and the server's ``e`` (zeros before the first step)."""
        zeros = torch.zeros_like(self.z)
        workers = [self.worker_ef.residual(m) if self.worker_ef.residual(m) is not None else zeros
                   for m in range(self.M)]
        server = None if self.server_ef is None else (self.server_ef.residual("server")
                                                     if self.server_ef.residual("server") is not None else zeros)
        return workers, server


class Extragradient(_VIMethod):
    """Uncompressed distributed extragradient (Korpelevich 1976): two full rounds (up and down) per iteration,
    ``z^{k+1/2} = z^k - gamma F(z^k)``, ``z^{k+1} = z^k - gamma F(z^{k+1/2})``."""

    def step(self) -> Tensor:
        z_half = self.z - self.gamma * self._full_round(self.z)[1]
        self.z = self.z - self.gamma * self._full_round(z_half)[1]
        return self.z


def quadratic_game(n: int, workers: int, mu: float = 1.0, similarity: float = 0.1, seed: int = 0,
                   dtype: torch.dtype = torch.float64) -> tuple[list[Operator], Tensor, float]:
    """A strongly-monotone quadratic game ``f_m(x, y) = x'A_m x/2 + x'B_m y - y'C_m y/2 + a_m'x - c_m'y``
    split over ``workers``; local data differ from the mean by ``similarity`` (relative spread).

    Returns the workers' operators ``F_m(z) = J_m z + b_m``, the saddle point ``z* = -(mean J)^{-1} mean b``
    (solved in closed form) and the Lipschitz constant ``L = ||mean J||_2``.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    def spd(base: Tensor) -> Tensor:
        return base @ base.T / n + mu * torch.eye(n, dtype=dtype)

    A0, C0, B0, b0 = randn(n, n), randn(n, n), randn(n, n) / n**0.5, randn(2 * n)
    jacobians, offsets = [], []
    for _ in range(workers):
        A, C = spd(A0 + similarity * randn(n, n)), spd(C0 + similarity * randn(n, n))
        B = B0 + similarity * randn(n, n) / n**0.5
        J = torch.cat([torch.cat([A, B], 1), torch.cat([-B.T, C], 1)], 0)
        jacobians.append(J)
        offsets.append(b0 + similarity * randn(2 * n))
    J_mean, b_mean = torch.stack(jacobians).mean(0), torch.stack(offsets).mean(0)
    solution = -torch.linalg.solve(J_mean, b_mean)
    lipschitz = float(torch.linalg.matrix_norm(J_mean, ord=2))
    operators = [(lambda z, J=J, b=b: J @ z + b) for J, b in zip(jacobians, offsets)]
    return operators, solution, lipschitz
