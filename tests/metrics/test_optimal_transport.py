"""Entropic OT solvers (Sinkhorn, Sinkhorn-Newton-Sparse; Tang et al. 2024) against independent oracles.

* Closed form: a = b = [.5, .5], M = [[0, 1], [1, 0]], reg = 1. By symmetry P = [[p, .5 - p], [.5 - p, p]]
  and the Gibbs form P_ij = u_i v_j exp(-M_ij / reg) gives p / (.5 - p) = e, so cost = 2 (.5 - p) = 1/(1+e).
* LP limit: for uniform marginals on n x n the LP optimum is min over permutations sigma of
  sum_i M_{i sigma(i)} / n (Birkhoff-von Neumann), enumerated here (and cross-checked by scipy's linprog);
  the entropic cost decreases monotonically to it as reg -> 0.
* Gradients: central finite differences of the returned cost / objective.
* Iterations: SNS reaches 1e-8 marginal error; Sinkhorn given 100x as many iterations does not.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lightning_vi.metrics.optimal_transport import (SinkhornLoss, entropic_ot, ot_cost, sinkhorn,
                                                    sinkhorn_newton_sparse)
from lightning_vi.metrics.sample_distances import sinkhorn_distance

D = torch.float64


def _rand(shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def _l1_marginal_error(P, a, b):
    return float((P.sum(-1) - a).abs().sum() + (P.sum(-2) - b).abs().sum())


# ----------------------------------------------------------------------------- closed form

@pytest.mark.parametrize("solver", ["sinkhorn", "sns", "sns_pure_newton"])
def test_closed_form_two_by_two(solver):
    M = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D)
    a = torch.tensor([0.5, 0.5], dtype=D)
    p = 0.5 * math.e / (1 + math.e)  # p / (.5 - p) = e
    expected_cost = 2 * (0.5 - p)
    assert abs(expected_cost - 1 / (1 + math.e)) < 1e-15
    if solver == "sinkhorn":
        res = sinkhorn(M, a, a, 1.0, tol=1e-13)
    else:
        res = sinkhorn_newton_sparse(M, a, a, 1.0, tol=1e-13, warmup=0 if solver == "sns_pure_newton" else 20)
    assert abs(float(res.cost) - expected_cost) < 1e-10
    assert torch.allclose(res.plan, torch.tensor([[p, 0.5 - p], [0.5 - p, p]], dtype=D), atol=1e-10)
    if solver == "sns_pure_newton":
        assert res.newton_iterations >= 1 and res.sinkhorn_iterations == 0


def test_closed_form_asymmetric_start_pure_newton():
    """Non-uniform marginals, pure Newton from zero potentials; oracle: the 2x2 plan with given marginals
    and P11 P22 / (P12 P21) = exp(-(M11 + M22 - M12 - M21) / reg), solved as a quadratic in P11."""
    M = torch.tensor([[0.0, 2.0], [1.0, 0.5]], dtype=D)
    a, b = torch.tensor([0.3, 0.7], dtype=D), torch.tensor([0.6, 0.4], dtype=D)
    reg = 0.5
    k = math.exp(-(0 + 0.5 - 2 - 1) / reg)
    # x (0.7 - 0.6 + x) = k (0.3 - x)(0.6 - x), x = P11  ->  (1 - k) x^2 + (0.1 + 0.9 k) x - 0.18 k = 0
    A, B, C = 1 - k, 0.1 + 0.9 * k, -0.18 * k
    x = [r for r in np.roots([A, B, C]).real if 0 < r < 0.3][0]
    P = torch.tensor([[x, 0.3 - x], [0.6 - x, 0.1 + x]], dtype=D)
    for res in (sinkhorn(M, a, b, reg, tol=1e-13), sinkhorn_newton_sparse(M, a, b, reg, warmup=0, tol=1e-13)):
        assert torch.allclose(res.plan, P, atol=1e-10), (res.plan, P)
        assert abs(float(res.cost) - float((P * M).sum())) < 1e-10


# ----------------------------------------------------------------------------- LP limit

def _lp_by_permutations(M):
    n = M.shape[0]
    return min(sum(float(M[i, s[i]]) for i in range(n)) for s in itertools.permutations(range(n))) / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cost_tends_to_lp_optimum(seed):
    n = 5
    M = _rand((n, n), seed) + 8.0  # offset: exp(-M / reg) underflows at reg = 1e-3 without log-sum-exp
    lp = _lp_by_permutations(M)
    from scipy.optimize import linprog
    A_eq = np.vstack([np.kron(np.eye(n), np.ones(n)), np.kron(np.ones(n), np.eye(n))])
    lin = linprog(M.numpy().ravel(), A_eq=A_eq, b_eq=np.full(2 * n, 1 / n), bounds=(0, None), method="highs")
    assert abs(lin.fun - lp) < 1e-9
    for method, regs, gap in (("sinkhorn", (1.0, 0.1, 0.01), 5e-3), ("sns", (1.0, 0.1, 0.01, 0.001), 5e-4)):
        costs = [float(entropic_ot(M, reg=r, method=method, tol=1e-10).cost) for r in regs]
        assert all(c1 > c2 for c1, c2 in zip(costs, costs[1:])), (method, costs)
        assert all(c >= lp - 1e-9 for c in costs), (method, costs, lp)
        assert costs[-1] - lp < gap, (method, costs, lp)  # measured: ~1.7e-3 at reg 0.01, ~1e-4 at 0.001
        assert costs[0] - lp > 1e-2  # the regularised cost is really above the LP at reg = 1


# ----------------------------------------------------------------------------- gradients

def _fd(fun, X, h=1e-6):
    G = torch.zeros_like(X)
    for idx in itertools.product(*(range(s) for s in X.shape)):
        E = torch.zeros_like(X)
        E[idx] = h
        G[idx] = (fun(X + E) - fun(X - E)) / (2 * h)
    return G


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unrolled_gradient_of_cost_matches_finite_differences(seed):
    M = _rand((3, 4), seed)
    a = torch.tensor([0.2, 0.5, 0.3], dtype=D)
    b = torch.tensor([0.1, 0.4, 0.3, 0.2], dtype=D)
    reg = 0.3
    Mg = M.clone().requires_grad_(True)
    sinkhorn(Mg, a, b, reg, tol=1e-14, max_iter=5000).cost.backward()
    fd = _fd(lambda X: float(sinkhorn(X, a, b, reg, tol=1e-14, max_iter=5000).cost), M)
    assert torch.allclose(Mg.grad, fd, atol=1e-7), (Mg.grad, fd)
    # d cost / dM is not the plan (that is the objective's gradient): the test can tell them apart
    P = sinkhorn(M, a, b, reg, tol=1e-14).plan
    assert (Mg.grad - P).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["sinkhorn", "sns"])
def test_envelope_gradient_of_objective_matches_finite_differences(method):
    M = _rand((4, 3), 5)
    a = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D)
    b = torch.tensor([0.5, 0.25, 0.25], dtype=D)
    reg = 0.2
    Mg, ag = M.clone().requires_grad_(True), a.clone().requires_grad_(True)
    res = entropic_ot(Mg, ag, b, reg, method=method, grad="envelope", tol=1e-13)
    res.objective.backward()
    fd = _fd(lambda X: float(entropic_ot(X, a, b, reg, method=method, grad="envelope", tol=1e-13).objective), M)
    assert torch.allclose(Mg.grad, fd, atol=1e-7)
    assert torch.allclose(Mg.grad, res.plan.detach(), atol=1e-10)  # envelope theorem: dW/dM = P
    # dW/da = f along directions that keep the mass (the mass constraint fixes the rest)
    u = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=D) * 1e-6
    obj = lambda aa: float(entropic_ot(M, aa, b, reg, method=method, grad="envelope", tol=1e-13).objective)
    assert abs((obj(a + u) - obj(a - u)) / 2 - float((ag.grad * u).sum())) < 1e-12


def test_sinkhorn_loss_point_cloud_gradient():
    x = _rand((6, 2), 0)
    y = _rand((5, 2), 1)
    loss = SinkhornLoss(reg=0.05, tol=1e-13, max_iter=20_000)
    xg = x.clone().requires_grad_(True)
    loss(xg, y).backward()
    fd = _fd(lambda X: float(loss(X, y)), x)
    assert torch.allclose(xg.grad, fd, atol=1e-6), (xg.grad, fd)
    # SNS loss (envelope, objective): d W / dx_i = sum_j P_ij 2 (x_i - y_j)
    sns = SinkhornLoss(reg=0.05, method="sns", output="objective", tol=1e-12)
    xg = x.clone().requires_grad_(True)
    sns(xg, y).backward()
    P = sinkhorn_newton_sparse(((x[:, None] - y[None]) ** 2).sum(-1), reg=0.05, tol=1e-12).plan
    expected = 2 * (P.sum(1, keepdim=True) * x - P @ y)
    assert torch.allclose(xg.grad, expected, atol=1e-9)


def test_sinkhorn_loss_descent_moves_points_to_target():
    torch.manual_seed(0)
    y = torch.randn(32, 2, dtype=D) + 3.0
    x = torch.randn(32, 2, dtype=D).requires_grad_(True)
    loss = SinkhornLoss(reg=1.0, max_iter=500, tol=1e-6)
    opt = torch.optim.SGD([x], lr=8.0)  # per-point gradient is 2 (x_i - T(x_i)) / n
    first = float(loss(x, y).detach())
    for _ in range(40):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    assert float(loss(x, y).detach()) < 0.1 * first


# ----------------------------------------------------------------------------- iterations (SNS vs Sinkhorn)

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sns_needs_100x_fewer_iterations_than_sinkhorn(seed):
    n, eta, tol = 100, 600.0, 1e-8  # random assignment problem (Tang et al. Sec. 5), cost in [0, 1]
    M = _rand((n, n), seed)
    a = torch.full((n,), 1 / n, dtype=D)
    sns = sinkhorn_newton_sparse(M, a, a, 1 / eta, tol=tol)
    assert sns.converged and _l1_marginal_error(sns.plan, a, a) <= tol
    assert sns.iterations == sns.sinkhorn_iterations + sns.newton_iterations
    sk = sinkhorn(M, a, a, 1 / eta, tol=tol, max_iter=100 * sns.iterations)
    print("seed", seed, "SNS", sns.sinkhorn_iterations, "+", sns.newton_iterations, "(CG", sns.cg_iterations,
          ") Sinkhorn at cap", sk.iterations, "error", float(sk.marginal_error))
    assert not sk.converged and float(sk.marginal_error) > tol  # Sinkhorn needs > 100x the iterations
    assert abs(float(sk.cost - sns.cost)) < 1e-4  # same problem, same answer (Sinkhorn not quite there)


# ----------------------------------------------------------------------------- batching, metric, sample distance

def test_batched_equals_individual_solves():
    M = _rand((3, 6, 5), 3)
    a = torch.softmax(_rand((3, 6), 4), -1)
    b = torch.softmax(_rand((5,), 5), -1)  # broadcast over the batch
    for method in ("sinkhorn", "sns"):
        res = entropic_ot(M, a, b, 0.05, method=method, tol=1e-11)
        assert res.cost.shape == (3,) and res.plan.shape == (3, 6, 5) and res.f.shape == (3, 6)
        for i in range(3):
            one = entropic_ot(M[i], a[i], b, 0.05, method=method, tol=1e-11)
            assert abs(float(res.cost[i] - one.cost)) < 1e-9
        assert float(res.marginal_error.max()) <= 1e-11
    assert torch.allclose(ot_cost(M, a, b, 0.05), res.cost, atol=1e-9)


def test_sinkhorn_distance_keeps_its_numbers():
    """Reference: the hand-written loop ``sample_distances`` used before (200 log-domain iterations)."""
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(64, 2, generator=g), torch.randn(48, 2, generator=g) + 0.5
        C = torch.cdist(x.double(), y.double()) ** 2
        eps = 0.01 * C.mean()
        f, g_ = torch.zeros(64, dtype=D), torch.zeros(48, dtype=D)
        la, lb = torch.full((64,), -math.log(64), dtype=D), torch.full((48,), -math.log(48), dtype=D)
        for _ in range(200):
            f = -eps * torch.logsumexp((g_[None] - C) / eps + lb[None], 1)
            g_ = -eps * torch.logsumexp((f[:, None] - C) / eps + la[:, None], 0)
        ref = ((((f[:, None] + g_[None] - C) / eps + la[:, None] + lb[None]).exp() * C).sum().sqrt())
        assert abs(float(sinkhorn_distance(x, y)) - float(ref)) < 1e-6


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("reg", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_reg(reg):
    M = _rand((3, 3), 0)
    for fn in (sinkhorn, sinkhorn_newton_sparse):
        with pytest.raises(ValueError, match=r"reg must be a finite number > 0, got"):
            fn(M, reg=reg)
    with pytest.raises(ValueError, match="reg must be"):
        SinkhornLoss(reg=reg)


def test_mismatched_mass_and_shapes():
    M = _rand((3, 4), 0)
    a, b = torch.full((3,), 1 / 3, dtype=D), torch.full((4,), 0.3, dtype=D)
    with pytest.raises(ValueError, match=r"same mass.*sum\(a\) = 1 != sum\(b\) = 1.2"):
        sinkhorn(M, a, b, 0.1)
    with pytest.raises(ValueError, match=r"marginals must have shapes \[\.\.\., n=3\] and \[\.\.\., m=4\]"):
        sinkhorn_newton_sparse(M, torch.full((4,), 0.25, dtype=D), torch.full((4,), 0.25, dtype=D), 0.1)
    with pytest.raises(ValueError, match="do not broadcast"):
        sinkhorn(_rand((2, 3, 4), 0), torch.full((5, 3), 1 / 3, dtype=D), None, 0.1)
    with pytest.raises(ValueError, match=r"marginals must be >= 0"):
        sinkhorn(M, torch.tensor([1.0, 0.5, -0.5], dtype=D), torch.full((4,), 0.25, dtype=D), 0.1)
    with pytest.raises(ValueError, match=r"cost M must be a tensor of shape \[\.\.\., n, m\]"):
        sinkhorn(torch.ones(3, dtype=D), reg=0.1)
    with pytest.raises(ValueError, match=r"method must be one of \('sinkhorn', 'sns'\), got 'newton'"):
        entropic_ot(M, reg=0.1, method="newton")
    with pytest.raises(ValueError, match=r"grad must be one of \('envelope',\), got 'unroll'"):
        sinkhorn_newton_sparse(M, reg=0.1, grad="unroll")
    with pytest.raises(ValueError, match=r"sparsity must be in \(0, 1\], got 0"):
        sinkhorn_newton_sparse(M, reg=0.1, sparsity=0)
    with pytest.raises(ValueError, match="point clouds must be"):
        SinkhornLoss(reg=0.1)(torch.ones(4, 2), torch.ones(3, 3))
