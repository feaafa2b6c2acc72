"""Mask-and-replace transition of VQ-Diffusion (Gu et al. 2022, "Vector Quantized Diffusion Model for
Text-to-Image Synthesis", Sec. 3.2, Eq. 7-8): ``K`` codes plus one absorbing ``[MASK]`` token (index ``K``).

Row convention here: ``Q_t[i, j] = q(x_t = j | x_{t-1} = i)`` (the paper writes the transpose). One step::

    Q_t[i, i] = alpha_t + beta_t,  Q_t[i, j] = beta_t (j != i code),  Q_t[i, MASK] = gamma_t   (i a code)
    Q_t[MASK, MASK] = 1                                                                    (MASK absorbs)

with ``beta_t = (1 - alpha_t - gamma_t) / K``. The product ``Q_1 ... Q_t`` has the same form (Eq. 8)::

    Qbar_t[i, i] = alpha_bar_t + beta_bar_t,  Qbar_t[i, j] = beta_bar_t,  Qbar_t[i, MASK] = gamma_bar_t
    alpha_bar_t = prod_{s<=t} alpha_s,  1 - gamma_bar_t = prod_{s<=t} (1 - gamma_s),
    beta_bar_t = (1 - alpha_bar_t - gamma_bar_t) / K.

The schedule is the paper's linear one (Sec. 4.1; ``alpha_schedule`` of the official code): ``alpha_bar_t``
falls linearly from ``0.99999`` (t = 1) to ``0.000009`` (t = T) and ``gamma_bar_t`` rises linearly from
``0.000009`` to ``0.9``; ``alpha_bar_0 = 1, gamma_bar_0 = 0``. The per-step values invert the products:
``alpha_t = alpha_bar_t / alpha_bar_{t-1}``, ``gamma_t = 1 - (1 - gamma_bar_t) / (1 - gamma_bar_{t-1})``.
More generally, ``q(x_t | x_s)`` for ``s < t`` is a mask-and-replace matrix with ``alpha_{s->t} =
alpha_bar_t / alpha_bar_s`` and ``1 - gamma_{s->t} = (1 - gamma_bar_t) / (1 - gamma_bar_s)``, which gives the
paper's fast sampling with strides (Sec. 3.3, "Fast inference strategy").

Distributions over tokens are ``[..., K + 1]`` probability vectors (the last entry is MASK); every
function is vectorised over the leading dimensions and takes per-example timesteps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_range

_TINY = 1e-30


class MaskReplaceSchedule(nn.Module):
    """Linear mask-and-replace schedule over ``num_codes`` codes and ``num_timesteps`` steps.

    Buffers (float64, index ``t = 0..T``): ``alpha_bar``, ``gamma_bar``, ``beta_bar``; per step ``alpha``,
    ``gamma``, ``beta`` (index 0 is the identity step).

    Args:
        num_codes: K, codes of the VQ-VAE (MASK is index K).
        num_timesteps: T.
        alpha_bar_start / alpha_bar_end: ``alpha_bar_1`` and ``alpha_bar_T`` (paper: 0.99999, 0.000009).
        gamma_bar_start / gamma_bar_end: ``gamma_bar_1`` and ``gamma_bar_T`` (paper: 0.000009, 0.9).
    """

    def __init__(self, num_codes: int, num_timesteps: int = 100, alpha_bar_start: float = 0.99999,
                 alpha_bar_end: float = 0.000009, gamma_bar_start: float = 0.000009,
                 gamma_bar_end: float = 0.9) -> None:
        super().__init__()
        check_range("num_codes", num_codes, 1)
        check_range("num_timesteps", num_timesteps, 2)
        check_range("alpha_bar_start", alpha_bar_start, 0.0, 1.0, low_open=True)
        check_range("alpha_bar_end", alpha_bar_end, 0.0, alpha_bar_start, low_open=True)
        check_range("gamma_bar_start", gamma_bar_start, 0.0, 1.0)
        check_range("gamma_bar_end", gamma_bar_end, gamma_bar_start, 1.0, high_open=True)
        self.K, self.T = int(num_codes), int(num_timesteps)
        s = torch.arange(self.T, dtype=torch.float64) / (self.T - 1)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
        abar = torch.cat([one, alpha_bar_start + (alpha_bar_end - alpha_bar_start) * s])
        gbar = torch.cat([zero, gamma_bar_start + (gamma_bar_end - gamma_bar_start) * s])
        bbar = (1 - abar - gbar) / self.K
        if (bbar < 0).any():
            raise ValueError(f"alpha_bar + gamma_bar exceeds 1 at t={int((bbar < 0).nonzero()[0])}: choose "
                             "alpha_bar_start + gamma_bar_start <= 1")
        alpha = torch.cat([one, abar[1:] / abar[:-1]])
        gamma = torch.cat([zero, 1 - (1 - gbar[1:]) / (1 - gbar[:-1])])
        beta = (1 - alpha - gamma) / self.K
        if (beta < -1e-12).any():
            t = int((beta < -1e-12).nonzero()[0])
            raise ValueError(f"the schedule gives a negative per-step beta_t={float(beta[t]):.3g} at t={t} "
                             "(alpha_t + gamma_t > 1): make alpha_bar fall at least as fast, relatively, as "
                             "1 - gamma_bar")
        for name, v in (("alpha_bar", abar), ("gamma_bar", gbar), ("beta_bar", bbar),
                        ("alpha", alpha), ("gamma", gamma), ("beta", beta.clamp_min(0))):
            self.register_buffer(name, v, persistent=False)

    # -- transition parameters --------------------------------------------------------------------
    def transition(self, s: Tensor | int, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """``(alpha, beta, gamma)`` of ``q(x_t | x_s)``, ``s <= t`` (``s = t - 1``: one step; ``s = 0``: Qbar_t)."""
        s, t = torch.as_tensor(s, device=self.alpha_bar.device), torch.as_tensor(t, device=self.alpha_bar.device)
        a = self.alpha_bar[t] / self.alpha_bar[s]
        c = 1 - (1 - self.gamma_bar[t]) / (1 - self.gamma_bar[s])
        return a, ((1 - a - c) / self.K).clamp_min(0), c

    @staticmethod
    def _dense(a: float, b: float, c: float, K: int) -> Tensor:
        m = torch.zeros(K + 1, K + 1, dtype=torch.float64)
        m[:K, :K] = b
        m[:K, :K] += a * torch.eye(K, dtype=torch.float64)
        m[:K, K] = c
        m[K, K] = 1.0  # MASK is absorbing
        return m

    def step_matrix(self, t: int) -> Tensor:
        """Dense ``Q_t`` ``[K+1, K+1]`` (float64, Eq. 7), ``t = 1..T``."""
        return self._dense(float(self.alpha[t]), float(self.beta[t]), float(self.gamma[t]), self.K)

    def cumulative_matrix(self, t: int) -> Tensor:
        """Dense ``Qbar_t`` from the closed form (Eq. 8), ``t = 0..T``."""
        return self._dense(float(self.alpha_bar[t]), float(self.beta_bar[t]), float(self.gamma_bar[t]), self.K)

    # -- vectorised distributions -----------------------------------------------------------------
    def _coef(self, v: Tensor, like: Tensor) -> Tensor:
        """Per-example coefficients ``[B]`` broadcast against ``like`` ``[B, ..., K+1]``."""
        return v.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def marginal(self, p: Tensor, t: Tensor, s: Tensor | int = 0) -> Tensor:
        """``p @ Q_{s->t}`` for (possibly unnormalised) ``p`` ``[B, ..., K+1]``: ``q(x_t | x_0 ~ p)`` when
        ``s = 0`` (Eq. 8), without forming the matrix."""
        a, b, c = self.transition(s, t)
        a, b, c = self._coef(a, p), self._coef(b, p), self._coef(c, p)
        codes = p[..., : self.K].sum(-1, keepdim=True)
        return torch.cat([a * p[..., : self.K] + b * codes, c * codes + p[..., self.K:]], -1)

    def column(self, x_t: Tensor, t: Tensor | int, s: Tensor | int, dtype: torch.dtype = torch.float64) -> Tensor:
        """``q(x_t | x_s = j)`` for every ``j``: column ``x_t`` of ``Q_{s->t}``, ``[B, ..., K+1]``."""
        a, b, c = self.transition(s, t)
        like = torch.empty((*x_t.shape, self.K + 1), dtype=dtype, device=x_t.device)
        a, b, c = self._coef(a, like), self._coef(b, like), self._coef(c, like)
        is_mask = (x_t == self.K).unsqueeze(-1).to(dtype)
        onehot = nn.functional.one_hot(x_t, self.K + 1)[..., : self.K].to(dtype)
        codes = a * onehot + b * (1 - is_mask) + c * is_mask
        return torch.cat([codes, is_mask], -1)  # from MASK only MASK is reachable

    def posterior(self, p0: Tensor, x_t: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """``sum_{x0} p0(x0) q(x_s | x_t, x0)`` ``[B, ..., K+1]`` (``s = t - 1`` by default), by Bayes' rule
        ``q(x_s | x_t, x0) = q(x_t | x_s) q(x_s | x0) / q(x_t | x0)``; with ``p0`` the network's
        ``p_theta(x0 | x_t)`` this is ``p_theta(x_s | x_t)`` (Sec. 3.3, reparameterisation trick). For ``s = 0``
        it returns ``p0``."""
        s = t - 1 if s is None else s
        q_t_x0 = self.column(x_t, t, 0, p0.dtype)  # q(x_t | x0 = j)
        w = torch.where(p0 > 0, p0 / q_t_x0.clamp_min(_TINY), torch.zeros_like(p0))
        post = self.column(x_t, t, s, p0.dtype) * self.marginal(w, s)  # q(x_t | x_s) * sum_x0 w(x0) q(x_s | x0)
        return post / post.sum(-1, keepdim=True).clamp_min(_TINY)

    def prior(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """Stationary ``p(x_T)`` (``alpha_bar_T -> 0``): MASK with ``gamma_bar_T``, each code ``(1 - gamma_bar_T) / K``."""
        g = float(self.gamma_bar[self.T])
        p = torch.full((*shape, self.K + 1), (1 - g) / self.K, dtype=dtype, device=self.alpha_bar.device)
        p[..., self.K] = g
        return p


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One draw per row of ``probs`` ``[..., C]`` by the Gumbel-max trick (noise drawn on the CPU from
    ``generator``, so a seed gives the same draw on any device)."""
    u = torch.rand(probs.shape, generator=generator, dtype=torch.float64).to(probs.device)
    gumbel = -torch.log(-torch.log(u.clamp(1e-30, 1 - 1e-16)))
    return (probs.clamp_min(_TINY).log().to(gumbel.dtype) + gumbel).argmax(-1)


def q_sample(schedule: MaskReplaceSchedule, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x_t ~ q(x_t | x0)`` for code indices ``x0`` ``[B, ...]`` and timesteps ``t`` ``[B]``."""
    onehot = nn.functional.one_hot(x0, schedule.K + 1).to(schedule.alpha_bar.dtype)
    return sample_categorical(schedule.marginal(onehot, t), generator)
