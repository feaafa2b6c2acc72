"""MASHA1 (Beznosikov, Richtarik, Diskin, Ryabinin, Gasnikov 2022, Algorithm 1) and uncompressed extragradient,
for a variational inequality ``find z*: <F(z*), z - z*> >= 0`` with ``F = (1/M) sum_m F_m`` split over M workers.

For a min-max game ``min_x max_y f(x, y)`` the operator is ``F(z) = (grad_x f, -grad_y f)`` at ``z = (x, y)``.

MASHA1 is the loopless variance-reduced extragradient of Alacaoglu & Malitsky (2021) in which each worker
sends only an unbiased compression (Rand-k) of the difference of its operator to a reference point ``w``:

    z_bar     = tau z^k + (1 - tau) w^k
    z^{k+1/2} = z_bar - gamma F(w^k)
    worker m sends  Q_m(F_m(z^{k+1/2}) - F_m(w^k))           (k values)
    z^{k+1}   = z_bar - gamma (F(w^k) + (1/M) sum_m Q_m(...))
    w^{k+1}   = z^{k+1} with probability p (then every worker sends F_m(w^{k+1}) uncompressed), else w^k

Workers are simulated in one process; every message is counted (uplink, worker -> server, 32 bits per float;
the server's broadcast is not counted, for MASHA1 and extragradient alike). Each worker draws its own Rand-k
coordinates (independent compressors, as the paper's analysis assumes) from a generator whose seed schedule
(seed, worker) the server shares, so the server regenerates the indices and only the k values travel. The
coin for ``w`` is common (drawn by the server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from lightning_vi.strategies.compressors import RandK

Operator = Callable[[Tensor], Tensor]
BITS_PER_FLOAT = 32


@dataclass
class History:
    """Per-iteration record: the iterate's distance to a known solution and the bits sent so far."""

    distance: list[float] = field(default_factory=list)
    bits: list[int] = field(default_factory=list)
    messages: int = 0

    def bits_to_reach(self, tol: float) -> int | None:
        """Bits sent when the distance first fell below ``tol`` (None if it never did)."""
        for dist, bits in zip(self.distance, self.bits):
            if dist < tol:
                return bits
        return None


class Masha1:
    """MASHA1 with Rand-k compression of worker-to-server messages (Algorithm 1 of the paper).

    Args:
        operators: the workers' operators ``F_m``.
        gamma: step size; tau: momentum toward the reference point (default ``1 - p``, as in the analysis);
        p: probability of refreshing the reference point ``w`` (default ``k/d``, which balances the
            expected full and compressed traffic); k: Rand-k size (fraction or count); seed: randomness.
    """

    def __init__(self, operators: Sequence[Operator], z0: Tensor, gamma: float, k: float | int = 0.1,
                 p: float | None = None, tau: float | None = None, seed: int = 0) -> None:
        if not operators:
            raise ValueError("operators is empty; allowed: one operator F_m per worker (at least one)")
        if gamma <= 0:
            raise ValueError(f"gamma={gamma!r} must be positive")
        self.operators = list(operators)
        self.z = z0.detach().clone().reshape(-1)
        self.d = self.z.numel()
        self.compressor = RandK(k)  # unbiased: MASHA1's compressor
        self.kept = self.compressor.num_kept(self.d)
        self.p = self.kept / self.d if p is None else float(p)
        if not 0 < self.p <= 1:
            raise ValueError(f"p={p!r} must lie in (0, 1]")
        self.tau = 1 - self.p if tau is None else float(tau)
        if not 0 <= self.tau < 1:
            raise ValueError(f"tau={tau!r} must lie in [0, 1)")
        self.gamma = float(gamma)
        self.generators = [torch.Generator().manual_seed(seed * 1000 + m) for m in range(len(self.operators))]
        self.server = torch.Generator().manual_seed(seed * 1000 + 999)
        self.bits = 0
        self.messages = 0
        self.w = self.z.clone()
        self.F_w = self._full_round(self.w)

    def _full_round(self, point: Tensor) -> Tensor:
        """Every worker sends ``F_m(point)`` uncompressed; the server averages."""
        values = [F(point) for F in self.operators]
        self.bits += len(values) * self.d * BITS_PER_FLOAT
        self.messages += len(values)
        return torch.stack(values).mean(0)

    def step(self) -> Tensor:
        z_bar = self.tau * self.z + (1 - self.tau) * self.w
        z_half = z_bar - self.gamma * self.F_w
        total = torch.zeros_like(self.z)
        for F, gen in zip(self.operators, self.generators):
            msg = self.compressor.compress(F(z_half) - F(self.w), generator=gen)
            self.bits += msg.values.numel() * BITS_PER_FLOAT  # indices: regenerated from the shared seed
            self.messages += 1
            total += msg.dense()
        self.z = z_bar - self.gamma * (self.F_w + total / len(self.operators))
        if torch.rand((), generator=self.server) < self.p:
            self.w = self.z.clone()
            self.F_w = self._full_round(self.w)
        return self.z

    def run(self, iterations: int, solution: Tensor | None = None) -> History:
        history = History()
        for _ in range(iterations):
            self.step()
            if solution is not None:
                history.distance.append(float(torch.linalg.vector_norm(self.z - solution.reshape(-1))))
            history.bits.append(self.bits)
        history.messages = self.messages
        return history


class Extragradient:
    """Uncompressed distributed extragradient (Korpelevich 1976): two full rounds per iteration,
    ``z^{k+1/2} = z^k - gamma F(z^k)``, ``z^{k+1} = z^k - gamma F(z^{k+1/2})``."""

    def __init__(self, operators: Sequence[Operator], z0: Tensor, gamma: float) -> None:
        if gamma <= 0:
            raise ValueError(f"gamma={gamma!r} must be positive")
        self.operators = list(operators)
        self.z = z0.detach().clone().reshape(-1)
        self.gamma = float(gamma)
        self.bits = 0
        self.messages = 0

    def _round(self, point: Tensor) -> Tensor:
        values = [F(point) for F in self.operators]
        self.bits += len(values) * point.numel() * BITS_PER_FLOAT
        self.messages += len(values)
        return torch.stack(values).mean(0)

    def step(self) -> Tensor:
        z_half = self.z - self.gamma * self._round(self.z)
        self.z = self.z - self.gamma * self._round(z_half)
        return self.z

    def run(self, iterations: int, solution: Tensor | None = None) -> History:
        history = History()
        for _ in range(iterations):
            self.step()
            if solution is not None:
                history.distance.append(float(torch.linalg.vector_norm(self.z - solution.reshape(-1))))
            history.bits.append(self.bits)
        history.messages = self.messages
        return history


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
