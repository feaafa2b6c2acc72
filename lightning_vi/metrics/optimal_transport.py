"""Entropic optimal transport: log-domain batched Sinkhorn and Sinkhorn-Newton-Sparse (SNS).

Problem (Cuturi 2013; Tang et al. 2024, "Accelerating Sinkhorn Algorithm with Sparse Newton
Iterations", Eq. 2-4) for a cost ``M [..., n, m]`` and marginals ``a [..., n]``, ``b [..., m]``::

    min_P <P, M> + reg KL(P | a b^T)   s.t.  P 1 = a,  P^T 1 = b.

Its dual is the concave Lyapunov potential (Tang et al. Eq. 4, here with the reference measure a b^T)::

    L(f, g) = <f, a> + <g, b> - reg sum_ij a_i b_j exp((f_i + g_j - M_ij) / reg)  (+ reg |a| |b|),

maximised by the potentials with plan ``P_ij = a_i b_j exp((f_i + g_j - M_ij) / reg)``. The gradient of
``L`` is the marginal residual ``(a - P 1, b - P^T 1)`` and its Hessian is
``-(1/reg) [[diag(P 1), P], [P^T, diag(P^T 1)]]``.

* :func:`sinkhorn`: alternating exact maximisation of ``L`` in ``f`` and ``g`` (the Sinkhorn updates in
  log-sum-exp form, so any ``reg > 0`` is stable in float64).
* :func:`sinkhorn_newton_sparse`: ``warmup`` Sinkhorn steps, then Newton steps on ``L`` with the Hessian
  sparsified to its largest ``sparsity * n * m`` off-diagonal-block entries (the diagonal blocks
  ``diag(P 1)``, ``diag(P^T 1)`` stay exact, which keeps the sparsified matrix positive semi-definite),
  the Newton system solved by conjugate gradient and the step chosen by Armijo backtracking on ``L``
  (Tang et al. Algorithm 1). The sparse matrix is applied as a masked dense product (same arithmetic as a
  sparse matvec; batched dense kernels are faster than torch's sparse ones at these sizes).

Both stop when the L1 marginal error ``|P 1 - a|_1 + |P^T 1 - b|_1`` of every batch element is
``<= tol``. Gradients (``grad=``):

* ``"unroll"`` (Sinkhorn only): autograd through every iteration; exact gradient of the returned
  ``cost`` and ``objective`` as computed (the iteration count is chosen without gradient).
* ``"envelope"``: the potentials are detached and ``objective`` is the dual value ``L(f, g)`` recomputed
  from the inputs, so by the envelope (Danskin) theorem its gradient is exact at convergence:
  ``d objective / dM = P``, ``d objective / da = f``, ``d objective / db = g``. ``cost`` is
  ``<P, M>`` with ``P`` built from the detached potentials: its gradient misses ``dP/dM`` (not the
  gradient of the transport cost); use ``objective`` as the loss in this mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["OTResult", "sinkhorn", "sinkhorn_newton_sparse", "entropic_ot", "ot_cost", "SinkhornLoss"]

METHODS = ("sinkhorn", "sns")
GRADS = ("unroll", "envelope")


@dataclass
class OTResult:
    """Solver output. ``plan [..., n, m]``, ``cost = <P, M> [...]``, ``objective`` = entropic objective
    (equal to the dual value at convergence) ``[...]``, potentials ``f [..., n]``, ``g [..., m]``,
    ``marginal_error [...]`` (L1, row + column), ``iterations`` (Sinkhorn + Newton steps),
    ``sinkhorn_iterations``, ``newton_iterations``, ``cg_iterations`` (total over Newton steps) and
    ``converged`` (every batch element reached ``tol``)."""

    plan: Tensor
    cost: Tensor
    objective: Tensor
    f: Tensor
    g: Tensor
    marginal_error: Tensor
    iterations: int
    sinkhorn_iterations: int
    newton_iterations: int
    cg_iterations: int
    converged: bool


# ----------------------------------------------------------------------------- validation

def _check(M: Tensor, a: Tensor | None, b: Tensor | None, reg: float, mass_rtol: float = 1e-6):
    if not isinstance(M, Tensor) or M.dim() < 2:
        raise ValueError(f"cost M must be a tensor of shape [..., n, m] with at least 2 dims, got "
                         f"{type(M).__name__} of shape {tuple(getattr(M, 'shape', ()))}")
    if isinstance(reg, Tensor):
        reg = float(reg)
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    if not M.is_floating_point():
        M = M.double()
    n, m = M.shape[-2:]
    if n == 0 or m == 0:
        raise ValueError(f"cost M must have n, m >= 1, got shape {tuple(M.shape)}")
    a = torch.full(M.shape[:-1], 1.0 / n, dtype=M.dtype, device=M.device) if a is None else a.to(M)
    b = torch.full(M.shape[:-2] + (m,), 1.0 / m, dtype=M.dtype, device=M.device) if b is None else b.to(M)
    if a.shape[-1:] != (n,) or b.shape[-1:] != (m,):
        raise ValueError(f"marginals must have shapes [..., n={n}] and [..., m={m}] for M of shape "
                         f"{tuple(M.shape)}, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    try:
        batch = torch.broadcast_shapes(M.shape[:-2], a.shape[:-1], b.shape[:-1])
    except RuntimeError as e:
        raise ValueError(f"batch shapes of M {tuple(M.shape[:-2])}, a {tuple(a.shape[:-1])} and b "
                         f"{tuple(b.shape[:-1])} do not broadcast") from e
    M, a, b = M.expand(batch + (n, m)), a.expand(batch + (n,)), b.expand(batch + (m,))
    if not (torch.isfinite(M).all() and torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("M, a and b must be finite (found nan or inf)")
    if (a < 0).any() or (b < 0).any():
        raise ValueError(f"marginals must be >= 0, got min(a) = {float(a.min()):.3g}, min(b) = {float(b.min()):.3g}")
    ma, mb = a.sum(-1), b.sum(-1)
    if (ma <= 0).any():
        raise ValueError(f"marginal a must have positive mass, got mass {float(ma.min()):.3g}")
    if not torch.allclose(ma, mb, rtol=mass_rtol, atol=0):
        i = int((ma - mb).abs().flatten().argmax())
        raise ValueError(f"marginals must have the same mass (balanced OT, rtol {mass_rtol}), got "
                         f"sum(a) = {float(ma.flatten()[i]):.10g} != sum(b) = {float(mb.flatten()[i]):.10g}")
    return M, a, b, float(reg)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


# ----------------------------------------------------------------------------- shared pieces

def _log_plan(M: Tensor, f: Tensor, g: Tensor, log_a: Tensor, log_b: Tensor, reg: float) -> Tensor:
    return (f[..., :, None] + g[..., None, :] - M) / reg + log_a[..., :, None] + log_b[..., None, :]


def _marginal_error(P: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return (P.sum(-1) - a).abs().sum(-1) + (P.sum(-2) - b).abs().sum(-1)


def _dual(M, f, g, a, b, log_a, log_b, reg) -> Tensor:
    """Lyapunov potential L(f, g) (without the constant reg |a||b|), per batch element."""
    return ((f * a).sum(-1) + (g * b).sum(-1)
            - reg * _log_plan(M, f, g, log_a, log_b, reg).exp().sum((-2, -1)))


def _result(M, a, b, f, g, log_a, log_b, reg, grad, n_sk, n_newton, n_cg, tol) -> OTResult:
    if grad == "envelope":
        f, g = f.detach(), g.detach()
    P = _log_plan(M, f, g, log_a, log_b, reg).exp()
    cost = (P * M).sum((-2, -1))
    mass = a.sum(-1) * b.sum(-1)
    if grad == "envelope":  # dual value at detached potentials: envelope-theorem gradients
        objective = _dual(M, f, g, a, b, log_a, log_b, reg) + reg * mass
    else:  # primal <P, M> + reg KL(P | a b^T), with log(P / ab) = (f + g - M) / reg
        objective = (P * (f[..., :, None] + g[..., None, :])).sum((-2, -1)) - reg * (P.sum((-2, -1)) - mass)
    with torch.no_grad():
        err = _marginal_error(P, a, b)
    return OTResult(P, cost, objective, f, g, err, n_sk + n_newton, n_sk, n_newton, n_cg, bool((err <= tol).all()))


def _sinkhorn_loop(M, a, b, log_a, log_b, f, g, reg, max_iter, tol):
    """Alternating updates f <- argmax_f L, g <- argmax_g L; stops on the row error (columns are exact)."""
    lse = torch.logsumexp((g[..., None, :] - M) / reg + log_b[..., None, :], -1)
    it = 0
    while it < max_iter:
        it += 1
        f = -reg * lse
        g = -reg * torch.logsumexp((f[..., :, None] - M) / reg + log_a[..., :, None], -2)
        lse = torch.logsumexp((g[..., None, :] - M) / reg + log_b[..., None, :], -1)
        if tol > 0:
            with torch.no_grad():  # row marginal of the current plan is a * exp(f / reg + lse)
                row_err = (a * torch.expm1(f / reg + lse)).abs().sum(-1)
            if bool((row_err <= tol).all()):
                break
    return f, g, it


# ----------------------------------------------------------------------------- solvers

def sinkhorn(M: Tensor, a: Tensor | None = None, b: Tensor | None = None, reg: float = 0.1, *,
             max_iter: int = 10_000, tol: float = 1e-9, grad: str = "unroll",
             init: tuple[Tensor, Tensor] | None = None) -> OTResult:
    """Log-domain batched Sinkhorn (Cuturi 2013) for ``M [..., n, m]``; ``a``/``b`` default to uniform.

    Runs until the L1 marginal error is ``<= tol`` (``tol = 0``: exactly ``max_iter`` iterations) or
    ``max_iter``. ``init = (f, g)`` warm-starts the potentials. See the module docstring for ``grad``."""
    M, a, b, reg = _check(M, a, b, reg)
    _check_choice("grad", grad, GRADS)
    _check_int("max_iter", max_iter, 1)
    if not (tol >= 0):
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    log_a, log_b = a.log(), b.log()
    f, g = (torch.zeros_like(a), torch.zeros_like(b)) if init is None else (init[0].to(a), init[1].to(b))
    with torch.set_grad_enabled(torch.is_grad_enabled() and grad == "unroll"):
        f, g, it = _sinkhorn_loop(M, a, b, log_a, log_b, f, g, reg, max_iter, tol)
    return _result(M, a, b, f, g, log_a, log_b, reg, grad, it, 0, 0, tol)


def _cg(matvec, rhs: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """Batched conjugate gradient for the PSD systems ``matvec(x) = rhs`` (rows of ``rhs``)."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rs = (r * r).sum(-1)
    stop = tol * tol * rs.clamp_min(1e-300)
    it = 0
    while it < max_iter and bool((rs > stop).any()):
        it += 1
        Ap = matvec(p)
        pAp = (p * Ap).sum(-1)
        active = (rs > stop) & (pAp > 0)
        alpha = torch.where(active, rs / torch.where(active, pAp, torch.ones_like(pAp)), torch.zeros_like(rs))
        x = x + alpha[..., None] * p
        r = r - alpha[..., None] * Ap
        rs_new = (r * r).sum(-1)
        beta = torch.where(active, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs))
        p = r + beta[..., None] * p
        rs = torch.where(active, rs_new, torch.zeros_like(rs))  # inactive rows stop
    return x, it


def sinkhorn_newton_sparse(M: Tensor, a: Tensor | None = None, b: Tensor | None = None, reg: float = 0.1, *,
                           warmup: int = 20, max_newton: int = 200, tol: float = 1e-9, sparsity: float | None = None,
                           cg_tol: float = 1e-10, cg_max_iter: int | None = None, armijo: float = 1e-4,
                           max_backtracks: int = 60, init: tuple[Tensor, Tensor] | None = None,
                           grad: str = "envelope") -> OTResult:
    """Sinkhorn-Newton-Sparse (Tang et al. 2024, Algorithm 1) for ``M [..., n, m]``.

    ``warmup`` Sinkhorn iterations (stage 1), then up to ``max_newton`` Newton steps on the Lyapunov
    potential: keep the ``ceil(sparsity * n * m)`` largest entries of ``P`` as the off-diagonal Hessian
    blocks (default ``sparsity = 3 / min(n, m)``, i.e. about three entries per row, Tang et al. Sec. 4
    keep O(n) entries), keep the diagonal blocks exact, solve by conjugate gradient to relative residual
    ``cg_tol`` (at most ``cg_max_iter``, default ``10 (n + m)``: at small ``reg`` the Hessian is
    ill-conditioned and CG needs more than ``n + m`` steps in floating point), and backtrack (halving) until ``L`` rises by at least ``armijo * step * <grad, dir>``.
    (or, once the predicted rise is below round-off of ``L``, until the marginal error drops).
    Stops when the L1 marginal error is ``<= tol``. Only ``grad="envelope"`` is supported (no autograd
    through CG and the line search)."""
    M, a, b, reg = _check(M, a, b, reg)
    _check_choice("grad", grad, ("envelope",))
    _check_int("warmup", warmup, 0)
    _check_int("max_newton", max_newton, 0)
    n, m = M.shape[-2:]
    sparsity = min(1.0, 3.0 / min(n, m)) if sparsity is None else sparsity
    if not (isinstance(sparsity, (int, float)) and 0 < sparsity <= 1):
        raise ValueError(f"sparsity must be in (0, 1], got {sparsity!r}")
    if not (tol >= 0):
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    cg_max_iter = 10 * (n + m) if cg_max_iter is None else cg_max_iter
    log_a, log_b = a.log(), b.log()
    k = max(1, math.ceil(sparsity * n * m))
    Md = M.detach()
    with torch.no_grad():
        f, g = (torch.zeros_like(a), torch.zeros_like(b)) if init is None else (init[0].to(a), init[1].to(b))
        n_sk = 0
        if warmup > 0:
            f, g, n_sk = _sinkhorn_loop(Md, a, b, log_a, log_b, f, g, reg, warmup, tol)
        n_newton = n_cg = 0
        while True:
            P = _log_plan(Md, f, g, log_a, log_b, reg).exp()
            r, c = P.sum(-1), P.sum(-2)
            err = (r - a).abs().sum(-1) + (c - b).abs().sum(-1)
            if bool((err <= tol).all()) or n_newton >= max_newton:
                break
            n_newton += 1
            # sparsified Hessian: top-k entries of P (per batch element), exact diagonal blocks
            flat = P.flatten(-2)
            thresh = flat.topk(k, dim=-1).values[..., -1:]
            Ps = torch.where(flat >= thresh, flat, torch.zeros_like(flat)).view_as(P)
            ridge = 1e-12 * torch.cat([r, c], -1).amax(-1, keepdim=True)

            def matvec(v, Ps=Ps, r=r, c=c, ridge=ridge):
                vf, vg = v[..., :n], v[..., n:]
                return torch.cat([r * vf + (Ps @ vg[..., None])[..., 0],
                                  c * vg + (Ps.transpose(-2, -1) @ vf[..., None])[..., 0]], -1) + ridge * v

            grad_L = torch.cat([a - r, b - c], -1)
            d, it_cg = _cg(matvec, grad_L, cg_tol, cg_max_iter)  # (K / reg) dir = grad  <=>  K (dir / reg) = grad
            n_cg += it_cg
            d = reg * d
            slope = (grad_L * d).sum(-1)
            L0 = _dual(Md, f, g, a, b, log_a, log_b, reg)
            roundoff = 1e-13 * (L0.abs() + reg * a.sum(-1))  # below this L cannot resolve the increase
            step = torch.ones_like(L0)
            done = err <= tol
            for _ in range(max_backtracks):
                ft, gt = f + step[..., None] * d[..., :n], g + step[..., None] * d[..., n:]
                Pt = _log_plan(Md, ft, gt, log_a, log_b, reg).exp()
                Lt = (ft * a).sum(-1) + (gt * b).sum(-1) - reg * Pt.sum((-2, -1))
                armijo_ok = torch.nan_to_num(Lt, nan=-math.inf) >= L0 + armijo * step * slope
                # at round-off level of L, Armijo is decided by rounding: accept if the marginal error drops
                tiny_ok = (step * slope <= roundoff) & (_marginal_error(Pt, a, b) < err)
                ok = done | armijo_ok | tiny_ok
                if bool(ok.all()):
                    break
                step = torch.where(ok, step, step / 2)
            step = torch.where(done, torch.zeros_like(step), step)
            f = f + step[..., None] * d[..., :n]
            g = g + step[..., None] * d[..., n:]
    return _result(M, a, b, f, g, log_a, log_b, reg, grad, n_sk, n_newton, n_cg, tol)


def entropic_ot(M: Tensor, a: Tensor | None = None, b: Tensor | None = None, reg: float = 0.1, *,
                method: str = "sinkhorn", **kwargs) -> OTResult:
    """Dispatch to :func:`sinkhorn` (``method="sinkhorn"``) or :func:`sinkhorn_newton_sparse` (``"sns"``)."""
    _check_choice("method", method, METHODS)
    return (sinkhorn if method == "sinkhorn" else sinkhorn_newton_sparse)(M, a, b, reg, **kwargs)


def ot_cost(M: Tensor, a: Tensor | None = None, b: Tensor | None = None, reg: float = 0.1, *,
            method: str = "sns", tol: float = 1e-9, **kwargs) -> Tensor:
    """Metric form: the transport cost ``<P, M> [...]`` of the entropic plan, computed without gradient."""
    with torch.no_grad():
        return entropic_ot(M, a, b, reg, method=method, tol=tol, **kwargs).cost


def _point_cost(x: Tensor, y: Tensor, p: float) -> Tensor:
    if x.dim() < 2 or y.dim() < 2 or x.shape[-1] != y.shape[-1]:
        raise ValueError(f"point clouds must be [..., n, d] and [..., m, d] with the same d, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    d2 = ((x[..., :, None, :] - y[..., None, :, :]) ** 2).sum(-1)  # differentiable at x = y (cdist is not)
    return d2 if p == 2 else d2.clamp_min(1e-300) ** (p / 2)


class SinkhornLoss(nn.Module):
    """Entropic OT between point clouds as a loss: ``forward(x [..., n, d], y [..., m, d], a=None, b=None)``.

    Cost ``|x_i - y_j|^p``; ``output="cost"`` returns ``<P, M>``, ``"objective"`` the entropic objective;
    ``reduction`` in ("mean", "sum", "none") over batch dims. ``method="sinkhorn"`` with ``grad="unroll"``
    (default) backpropagates through the iterations; ``method="sns"`` requires ``grad="envelope"``
    (exact gradient of ``objective``). Computes in float64 and returns the input dtype."""

    def __init__(self, reg: float, method: str = "sinkhorn", p: float = 2.0, output: str = "cost",
                 grad: str | None = None, reduction: str = "mean", **solver_kwargs) -> None:
        super().__init__()
        _check_choice("method", method, METHODS)
        _check_choice("output", output, ("cost", "objective"))
        _check_choice("reduction", reduction, ("mean", "sum", "none"))
        grad = ("unroll" if method == "sinkhorn" else "envelope") if grad is None else grad
        _check_choice("grad", grad, GRADS if method == "sinkhorn" else ("envelope",))
        if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
            raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
        if not (isinstance(p, (int, float)) and p > 0):
            raise ValueError(f"p must be > 0, got {p!r}")
        self.reg, self.method, self.p, self.output, self.grad = reg, method, p, output, grad
        self.reduction, self.solver_kwargs = reduction, solver_kwargs

    def forward(self, x: Tensor, y: Tensor, a: Tensor | None = None, b: Tensor | None = None) -> Tensor:
        M = _point_cost(x.double(), y.double(), self.p)
        res = entropic_ot(M, a, b, self.reg, method=self.method, grad=self.grad, **self.solver_kwargs)
        out = res.cost if self.output == "cost" else res.objective
        out = out.mean() if self.reduction == "mean" else out.sum() if self.reduction == "sum" else out
        return out.to(x.dtype if x.is_floating_point() else torch.float64)

    def extra_repr(self) -> str:
        return f"reg={self.reg}, method={self.method!r}, p={self.p}, output={self.output!r}, grad={self.grad!r}"
