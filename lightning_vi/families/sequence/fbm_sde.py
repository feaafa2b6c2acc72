"""Latent SDE driven by Markov-approximated fractional Brownian motion (Daems et al. 2024,
"Variational Inference for SDEs Driven by Fractional Noise", ICLR).

Markov approximation (MA-fBM, their Sec. 3, after Harms & Stefanovits 2019): type-I fBM is written as
``B^H_t ~ B̂_t = sum_k omega_k (Y_k(t) - Y_k(0))`` with stationary OU processes
``dY_k = -gamma_k Y_k dt + dW_t`` all driven by the same Brownian motion ``W``. We include
``gamma_0 = 0`` (the BM itself), so that ``H = 1/2`` is represented exactly (``omega = e_0``).

Optimal weights (their Prop. 5): ``omega = A^{-1} b`` minimising ``int_0^T E[(B^H_t - B̂_t)^2] dt``,
the normal equations of a least-squares problem with, for ``Z_k(t) = Y_k(t) - Y_k(0)``,

* ``E[Z_i(t) Z_j(s)] = (e^{-g |t-s|} - e^{-gamma_i t} - e^{-gamma_j s} + 1) / (gamma_i + gamma_j)``
  (``g = gamma_i`` if ``t >= s`` else ``gamma_j``; ``min(t, s)`` when both rates are 0),
* ``E[B^H_t Z_k(t)] = gamma_k^{-a} (2 - e^{-gamma_k t} - e^{gamma_k t} Q(a, gamma_k t)) / sqrt(V_H)``,
  ``a = H + 1/2``, ``Q`` the regularised upper incomplete gamma function, ``V_H = 1 / (Gamma(2H+1) sin(pi H))``
  the Mandelbrot-van Ness variance (derived from the moving-average kernel; ``t^a / Gamma(a+1) / sqrt(V_H)``
  for ``gamma_k = 0``).

Both are closed form in ``t``; the ``dt``-integral is a fine trapezoid rule. ``dω/dH`` (for a learnable
Hurst index) is a central difference in float64, since torch has no derivative of ``Q`` in its first argument.

Model: the augmented state ``(X, Y)`` is Markov. Prior ``dX = [b(X) - sigma sum_k omega_k gamma_k Y_k] dt
+ sigma (sum_k omega_k) dW``; the posterior adds a control ``u(X, Y, context_t)`` to the BM, ``dW -> dW + u dt``,
so by Girsanov ``KL = E int 1/2 |u|^2 dt`` (their Eq. 12) plus ``KL(q(X_0) || N(0, I))``. The SDE is integrated
with ``torchsde.sdeint`` (general noise), the KL rate carried as an extra state coordinate.

torchsde is imported where the SDE is built and solved (``lightning_vi.registry.require``), so the rest of
the package (and this module's closed-form helpers) import without it and a missing install names the fix.
Randomness: the Brownian motion's entropy and ``X_0`` are drawn from the torch RNG (the global one in
training, a passed ``generator`` in ``sample_paths``); sampling never reseeds or advances a global RNG
(torchsde's own default would draw its entropy from NumPy's global RNG).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import gaussian_kl_per_dim
from lightning_vi.core.module import VIModule
from lightning_vi.families.sequence._common import sequence_batch
from lightning_vi.registry import FAMILIES, require


TORCHSDE_MISSING = "fbm_sde needs torchsde: pip install 'lightning-vi[sequence]'"


def _torchsde() -> Any:
    """Import torchsde at the point of use; a clear ImportError (:data:`TORCHSDE_MISSING`) when it is missing."""
    return require("torchsde", "fbm_sde", message=TORCHSDE_MISSING)


def check_hurst(hurst: float | Tensor) -> None:
    value = float(hurst.detach()) if isinstance(hurst, Tensor) else float(hurst)
    check_range("hurst", value, 0.0, 1.0, low_open=True, high_open=True)


def ou_rates(n_ou: int, gamma_min: float = 0.1, gamma_max: float = 100.0, include_bm: bool = True) -> Tensor:
    """Mean-reversion rates: ``0`` (the BM itself, if ``include_bm``) then ``n_ou`` geometric rates."""
    check_range("n_ou", n_ou, 0)
    check_range("gamma_min", gamma_min, 0.0, low_open=True)
    check_range("gamma_max", gamma_max, gamma_min)
    geo = torch.logspace(math.log10(gamma_min), math.log10(gamma_max), n_ou, dtype=torch.float64) if n_ou else \
        torch.zeros(0, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), geo]) if include_bm else geo


def mvn_variance(hurst: float) -> float:
    """``Var B_1`` of the Mandelbrot-van Ness integral with kernel ``(t-s)_+^{H-1/2}/Gamma(H+1/2)``."""
    return 1.0 / (math.gamma(2 * hurst + 1) * math.sin(math.pi * hurst))


def _exp_q(a: float, x: Tensor) -> Tensor:
    """``e^x Q(a, x)``, stable for large ``x`` (asymptotic series ``x^{a-1}/Gamma(a) (1 + (a-1)/x + ...)``)."""
    small = x < 40
    xs = torch.where(small, x, torch.zeros_like(x))
    direct = torch.exp(xs) * torch.special.gammaincc(torch.full_like(xs, a), xs)
    xl = torch.where(small, torch.full_like(x, 40.0), x)
    series = 1 + (a - 1) / xl + (a - 1) * (a - 2) / xl**2 + (a - 1) * (a - 2) * (a - 3) / xl**3
    asym = xl ** (a - 1) / math.gamma(a) * series
    return torch.where(small, direct, asym)


def fbm_ou_cross_cov(t: Tensor, gammas: Tensor, hurst: float) -> Tensor:
    """``E[B^H_t Z_k(t)]`` for unit-variance type-I fBM; ``t`` [M] -> ``[M, K]`` (float64)."""
    a = hurst + 0.5
    t = t.to(torch.float64)[:, None]
    g = gammas.to(torch.float64)[None, :]
    zero = g == 0
    gs = torch.where(zero, torch.ones_like(g), g)
    x = gs * t
    val = gs ** (-a) * (2 - torch.exp(-x) - _exp_q(a, x))
    val = torch.where(zero, t ** a / math.gamma(a + 1), val)
    return val / math.sqrt(mvn_variance(hurst))


def ou_diff_cov(t: Tensor, s: Tensor, gammas: Tensor) -> Tensor:
    """``E[Z_i(t) Z_j(s)]`` for ``t`` [M], ``s`` [N] -> ``[M, N, K, K]`` (float64)."""
    t = t.to(torch.float64)[:, None, None, None]
    s = s.to(torch.float64)[None, :, None, None]
    gi = gammas.to(torch.float64)[None, None, :, None]
    gj = gammas.to(torch.float64)[None, None, None, :]
    g_lag = torch.where(t >= s, gi, gj)
    num = torch.expm1(-g_lag * (t - s).abs()) - torch.expm1(-gi * t) - torch.expm1(-gj * s)
    den = gi + gj
    both0 = den == 0
    return torch.where(both0, torch.minimum(t, s).expand(num.shape), num / torch.where(both0, torch.ones_like(den), den))


def ou_diff_var(t: Tensor, gammas: Tensor) -> Tensor:
    """``E[Z_i(t) Z_j(t)] = (2 - e^{-gamma_i t} - e^{-gamma_j t}) / (gamma_i + gamma_j)``; ``[M] -> [M, K, K]``."""
    t = t.to(torch.float64)[:, None, None]
    gi = gammas.to(torch.float64)[None, :, None]
    gj = gammas.to(torch.float64)[None, None, :]
    num = -torch.expm1(-gi * t) - torch.expm1(-gj * t)
    den = gi + gj
    both0 = den == 0
    return torch.where(both0, t.expand(num.shape), num / torch.where(both0, torch.ones_like(den), den))


def _quadrature(horizon: float, n_grid: int) -> tuple[Tensor, Tensor]:
    u = torch.linspace(0, horizon, n_grid + 1, dtype=torch.float64)[1:]
    w = torch.full((n_grid,), horizon / n_grid, dtype=torch.float64)
    w[-1] *= 0.5  # trapezoid; the integrand vanishes at t = 0
    return u, w


def _weights_and_error(hurst: float, gammas: Tensor, horizon: float, n_grid: int) -> tuple[Tensor, Tensor]:
    device, gammas = gammas.device, gammas.detach().cpu()  # a K x K float64 solve: on the CPU, results moved back
    u, w = _quadrature(horizon, n_grid)
    zz = ou_diff_var(u, gammas)  # [M, K, K]
    a_mat = (w[:, None, None] * zz).sum(0)
    b_vec = (w[:, None] * fbm_ou_cross_cov(u, gammas, hurst)).sum(0)
    scale = a_mat.diagonal().clamp_min(1e-300).sqrt()
    a_n = a_mat / scale[:, None] / scale[None, :]
    omega = torch.linalg.solve(a_n + 1e-13 * torch.eye(len(gammas), dtype=torch.float64), b_vec / scale) / scale
    total = (w * u ** (2 * hurst)).sum()
    err = (total - 2 * omega @ b_vec + omega @ a_mat @ omega) / total
    return omega.to(device), err.to(device)


class _OptimalWeights(torch.autograd.Function):
    """``omega(H)`` with a float64 central-difference derivative in ``H``."""

    @staticmethod
    def forward(ctx, hurst: Tensor, gammas: Tensor, horizon: float, n_grid: int, eps: float) -> Tensor:
        h = float(hurst)
        ctx.save_for_backward(hurst, gammas)
        ctx.args = (horizon, n_grid, eps)
        return _weights_and_error(h, gammas, horizon, n_grid)[0].to(hurst.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Any, ...]:
        hurst, gammas = ctx.saved_tensors
        horizon, n_grid, eps = ctx.args
        h = float(hurst)
        lo, hi = max(h - eps, 1e-4), min(h + eps, 1 - 1e-4)
        d = (_weights_and_error(hi, gammas, horizon, n_grid)[0] - _weights_and_error(lo, gammas, horizon, n_grid)[0]) / (hi - lo)
        return (grad.to(torch.float64) * d).sum().to(hurst.dtype).reshape(hurst.shape), None, None, None, None


def optimal_weights(hurst: float | Tensor, gammas: Tensor, horizon: float = 1.0, n_grid: int = 200) -> Tensor:
    """Closed-form optimal MA-fBM weights ``omega = A^{-1} b`` on ``[0, horizon]`` (differentiable in ``hurst``)."""
    check_hurst(hurst)
    check_range("horizon", horizon, 0.0, low_open=True)
    h = hurst if isinstance(hurst, Tensor) else torch.tensor(float(hurst), dtype=torch.float64)
    return _OptimalWeights.apply(h, gammas.to(torch.float64), float(horizon), int(n_grid), 1e-5)


def approximation_error(hurst: float, gammas: Tensor, horizon: float = 1.0, n_grid: int = 200) -> float:
    """Relative L2 error ``int E[(B^H_t - B̂_t)^2] dt / int E[(B^H_t)^2] dt`` at the optimal weights."""
    check_hurst(hurst)
    return float(_weights_and_error(float(hurst), gammas.to(torch.float64), float(horizon), n_grid)[1])


def ma_fbm_covariance(t: Tensor, s: Tensor, omega: Tensor, gammas: Tensor) -> Tensor:
    """``Cov(B̂_t, B̂_s) = omega^T E[Z(t) Z(s)^T] omega`` for ``t`` [M], ``s`` [N] -> ``[M, N]``."""
    zz = ou_diff_cov(t, s, gammas)
    om = omega.to(zz.dtype)
    return torch.einsum("i,mnij,j->mn", om, zz, om)


def ma_fbm_log_likelihood(x: Tensor, t: Tensor, hurst: Tensor, gammas: Tensor, sigma: Tensor | float = 1.0,
                          obs_std: float = 1e-3, horizon: float | None = None) -> Tensor:
    """Exact Gaussian log-likelihood of paths ``x`` [B, T] observed at ``t`` [T] under ``sigma * B̂^H + noise``.

    The evidence that the ELBO bounds when the prior drift is zero; differentiable in ``hurst`` and ``sigma``.
    """
    horizon = float(t.max()) if horizon is None else horizon
    omega = optimal_weights(hurst, gammas, horizon)
    cov = sigma**2 * ma_fbm_covariance(t, t, omega, gammas) + obs_std**2 * torch.eye(len(t), dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(torch.zeros(len(t), dtype=torch.float64), covariance_matrix=cov)
    return dist.log_prob(x.to(torch.float64))


class _AugmentedSDE(nn.Module):
    """Augmented state ``[X (d), Y (d*K), kl (1)]`` for torchsde (Ito, general noise: the d BMs)."""

    noise_type = "general"
    sde_type = "ito"

    def __init__(self, owner: FBMSDE) -> None:
        super().__init__()
        object.__setattr__(self, "owner", owner)  # no submodule registration (avoids a cycle)
        self.ctx: Tensor | None = None
        self.ctx_times: Tensor | None = None
        self.controlled = True

    def f(self, t: Tensor, s: Tensor) -> Tensor:
        o = self.owner
        d, k = o.latent_dim, o.n_rates
        x, y = s[:, :d], s[:, d:d + d * k].view(-1, d, k)
        omega, sigma = o._omega, o.sigma
        drift_x = o.prior_drift(x) - sigma * (y * (omega * o.gammas)).sum(-1)
        drift_y = -o.gammas * y
        if self.controlled:
            i = torch.searchsorted(self.ctx_times, t.reshape(1).to(self.ctx_times), right=False).clamp_max(self.ctx.shape[1] - 1)
            ctx = self.ctx[:, int(i)]
            u = o.control(torch.cat([x, y.flatten(1), ctx], -1))
            drift_x = drift_x + sigma * omega.sum() * u
            drift_y = drift_y + u[..., None]
            rate = 0.5 * u.pow(2).sum(-1, keepdim=True)
        else:
            rate = torch.zeros_like(s[:, :1])
        return torch.cat([drift_x, drift_y.flatten(1), rate], -1)

    def g(self, t: Tensor, s: Tensor) -> Tensor:
        o = self.owner
        d, k = o.latent_dim, o.n_rates
        eye = torch.eye(d, dtype=s.dtype, device=s.device)
        gx = eye * (o.sigma * o._omega.sum())
        gy = eye[:, None, :].expand(d, k, d).reshape(d * k, d)
        g = torch.cat([gx, gy, torch.zeros(1, d, dtype=s.dtype, device=s.device)], 0)
        return g.expand(s.shape[0], *g.shape)


@FAMILIES.register("fbm_sde")
class FBMSDE(VIModule):
    """Latent SDE driven by Markov-approximated fBM with a learnable Hurst index (Daems et al. 2024).

    ELBO: ``sum_t log p(x_t | X_t) - E int 1/2 |u|^2 dt - KL(q(X_0) || p(X_0))`` (Eq. 12), solved with torchsde.

    Args:
        data_dim: channels of ``x`` [B, T, C].
        latent_dim: dimension of ``X``.
        n_ou: number of OU processes (plus the BM, ``gamma_0 = 0``).
        gamma_min: smallest OU rate.
        gamma_max: largest OU rate (``dt * gamma_max <= 1``).
        hurst: initial Hurst index in (0, 1).
        learn_hurst: optimise the Hurst index with the ELBO.
        drift: prior drift ``b``: ``"zero"``, ``"linear"`` or ``"mlp"``.
        hidden: width of the networks.
        context_dim: size of the GRU context of the posterior control.
        dt: Euler step of the solver.
        obs_std: initial observation noise std (learned).
        horizon: time span the weights are optimised on.
        kl_weight: weight of the KL term (control cost plus ``KL(q(X_0) || p(X_0))``).
        beta: deprecated name of ``kl_weight``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    requires = ("torchsde",)  # import names this family needs beyond the core install (the registry lists them)

    def __init__(
        self,
        data_dim: int = 1,
        latent_dim: int = 1,
        n_ou: int = 5,
        gamma_min: float = 0.1,
        gamma_max: float = 50.0,
        hurst: float = 0.5,
        learn_hurst: bool = True,
        drift: str = "zero",
        hidden: int = 32,
        context_dim: int = 16,
        dt: float = 0.01,
        obs_std: float = 0.1,
        horizon: float = 1.0,
        kl_weight: float = 1.0,
        beta: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        _torchsde()  # fail at construction, not at the first training step
        super().__init__(**kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, 1.0)
        check_hurst(hurst)
        check_choice("drift", drift, ("zero", "linear", "mlp"))
        check_range("data_dim", data_dim, 1)
        check_range("latent_dim", latent_dim, 1)
        check_range("dt", dt, 0.0, low_open=True)
        if dt * gamma_max > 1.0:
            raise ValueError(f"dt={dt!r} is too large for gamma_max={gamma_max!r}: the Euler step of the fastest OU "
                             f"process is unstable; allowed: dt <= 1/gamma_max = {1 / gamma_max:.4g}")
        check_range("obs_std", obs_std, 0.0, low_open=True)
        check_range("kl_weight", kl_weight, 0.0)
        self.save_hyperparameters()
        self.latent_dim, self.data_dim, self.dt, self.horizon = latent_dim, data_dim, dt, horizon
        self.register_buffer("gammas", ou_rates(n_ou, gamma_min, gamma_max).float())
        self.n_rates = len(self.gammas)
        self._h_lo, self._h_hi = 0.01, 0.99
        raw = math.log((hurst - self._h_lo) / (self._h_hi - hurst))
        self.hurst_raw = nn.Parameter(torch.tensor(raw), requires_grad=learn_hurst)
        self.log_sigma = nn.Parameter(torch.zeros(latent_dim))
        self.log_obs_std = nn.Parameter(torch.tensor(math.log(obs_std)))
        self.drift_net = None if drift == "zero" else (
            nn.Linear(latent_dim, latent_dim) if drift == "linear"
            else nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, latent_dim)))
        self.encoder = nn.GRU(data_dim + 2, context_dim, batch_first=True)
        self.init_head = nn.Linear(context_dim, 2 * latent_dim)
        self.control = nn.Sequential(nn.Linear(latent_dim * (1 + self.n_rates) + context_dim, hidden), nn.Tanh(),
                                     nn.Linear(hidden, latent_dim))
        nn.init.zeros_(self.control[-1].weight)
        nn.init.zeros_(self.control[-1].bias)
        self.readout = nn.Linear(latent_dim, data_dim)
        self.sde = _AugmentedSDE(self)
        self.term_weights = {"recon": 1.0, "kl": kl_weight}

    # -- parameters ----------------------------------------------------------------------------
    @property
    def hurst(self) -> Tensor:
        return self._h_lo + (self._h_hi - self._h_lo) * torch.sigmoid(self.hurst_raw)

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def weights(self) -> Tensor:
        """Optimal MA-fBM weights at the current Hurst index (differentiable)."""
        return optimal_weights(self.hurst.double(), self.gammas.double(), self.horizon).float()

    def prior_drift(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x) if self.drift_net is None else self.drift_net(x)

    # -- solver --------------------------------------------------------------------------------
    def _initial_ou(self, b: int, generator: torch.Generator | None = None) -> Tensor:
        """Stationary ``Y(0)``: ``Cov(Y_i(0), Y_j(0)) = 1 / (gamma_i + gamma_j)`` (the BM coordinate starts at 0)."""
        g = self.gammas[1:].detach().double().cpu()  # a tiny factorisation: on the CPU, like eps
        y0 = torch.zeros(b, self.latent_dim, self.n_rates, device=self.device)
        if len(g):
            cov = 1.0 / (g[:, None] + g[None, :])
            chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(len(g), dtype=torch.float64))
            eps = torch.randn(b, self.latent_dim, len(g), generator=generator, dtype=torch.float64)
            y0[..., 1:] = (eps @ chol.T.cpu()).float().to(self.device)
        return y0

    def _integrate(self, x0: Tensor, ts: Tensor, controlled: bool, generator: torch.Generator | None = None) -> Tensor:
        """Euler-Maruyama solve of the augmented SDE; ``Y(0)`` and the BM entropy come from ``generator``
        (``None``: the global torch RNG), so no global RNG is reseeded and NumPy's is never touched."""
        torchsde = _torchsde()
        b = x0.shape[0]
        y0 = self._initial_ou(b, generator)
        s0 = torch.cat([x0, y0.flatten(1), torch.zeros(b, 1, device=x0.device)], -1)
        self._omega = self.weights().to(x0.device)
        self.sde.controlled = controlled
        entropy = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        bm = torchsde.BrownianInterval(t0=ts[0], t1=ts[-1], size=(b, self.latent_dim), dtype=s0.dtype,
                                       device=s0.device, entropy=entropy)
        return torchsde.sdeint(self.sde, s0, ts, bm=bm, method="euler", dt=self.dt)  # [T, B, state]

    def _times(self, t: Tensor) -> tuple[Tensor, int]:
        grid = t[0]
        if not torch.allclose(t, grid.expand_as(t)):
            raise ValueError("fbm_sde needs one time grid for the whole batch (torchsde integrates all paths on the "
                             "same times); give missing observations through batch['mask'] instead")
        if grid[0] > 0:
            return torch.cat([grid.new_zeros(1), grid]), 1
        return grid, 0

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, t, mask = sequence_batch(batch)
        ts, offset = self._times(t)
        feats = torch.cat([x * mask[..., None], mask[..., None], t[..., None]], -1)
        ctx = self.encoder(feats.flip(1))[0].flip(1)  # context at step i summarises observations i..T
        ctx = torch.cat([ctx[:, :1], ctx], 1) if offset else ctx
        self.sde.ctx, self.sde.ctx_times = ctx, ts
        mu0, log_var0 = self.init_head(ctx[:, 0]).chunk(2, -1)
        x0 = mu0 + torch.randn_like(mu0) * torch.exp(0.5 * log_var0)
        path = self._integrate(x0, ts, controlled=True)
        states = path[offset:, :, : self.latent_dim].transpose(0, 1)  # [B, T, d]
        mean = self.readout(states)
        log_px = torch.distributions.Normal(mean, self.log_obs_std.exp()).log_prob(x).sum(-1)
        recon = -(log_px * mask).sum(1).mean()
        kl_path = path[-1, :, -1].mean()
        kl0 = gaussian_kl_per_dim(mu0, log_var0).sum(-1).mean()
        kl = kl_path + kl0
        return {"recon": recon, "kl": kl, "kl_path": kl_path, "elbo": -(recon + kl),
                "hurst": self.hurst.detach(), "states": states}

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Posterior-mean-path reconstruction (one sample) of ``x`` [B, T, C]."""
        batch = {"x": x} if t is None else {"x": x, "t": t}
        return self.readout(self.objective(batch)["states"])

    @torch.no_grad()
    def sample_paths(self, n: int, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``n`` prior paths ``readout(X_t)`` [n, T, C] at the times ``t`` [T] (no control, X_0 ~ N(0, I)).

        With a CPU ``generator`` every draw (``X_0``, ``Y(0)``, the BM entropy) comes from it: the same
        generator state gives the same paths, and the global RNGs are left as they were.
        """
        ts, offset = self._times(t.to(self.device)[None])
        x0 = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        path = self._integrate(x0, ts, controlled=False, generator=generator)
        return self.readout(path[offset:, :, : self.latent_dim].transpose(0, 1))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        t = torch.linspace(0, self.horizon, 33)[1:]
        return self.sample_paths(n, t, generator)
