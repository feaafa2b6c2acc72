"""PV-RNN: predictive-coding-inspired variational RNN (Ahmadi & Tani 2019, Neural Computation 31(11)).

Each layer ``l`` is a multiple-timescale RNN with time constant ``tau_l`` (their Eq. 1):
``h^l_t = (1 - 1/tau_l) h^l_{t-1} + 1/tau_l (W_dd d^l_{t-1} + W_zd z^l_t + W_top d^{l+1}_t)``, ``d = tanh(h)``.
Prior ``p(z^l_t | d^l_{t-1}) = N(tanh(W d), exp(W' d))`` (Eq. 2). Posterior (Eq. 3): *adaptive vectors*
``A`` per training sequence and step, ``q(z^l_t) = N(tanh(A^mu), exp(A^sigma))``: the data reach the
latents only through the gradient of the prediction error. Output ``x̂_t = W_out d^1_t``.

Loss (negative lower bound, Eq. 5 with the meta-prior): ``recon + w * sum_{t>1} KL_t + w1 * KL_1``;
``w`` balances prediction error against the KL (large ``w``: near-deterministic, small: noisy).

Error regression (Sec. 2.4) is the test-time predict path: for an unseen sequence the network weights are
frozen and fresh adaptive vectors are optimised on the observed steps inside a window of the last
``er_window`` steps, which slides forward ``er_stride`` steps at a time (vectors left behind by the window stay
fixed; those still inside are refined again, warm-started); then the prior generates the future.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.families.sequence._common import sequence_batch
from lightning_vi.registry import FAMILIES


@FAMILIES.register("pvrnn")
class PVRNN(VIModule):
    """Multi-layer PV-RNN with adaptive posterior vectors and meta-priors ``w``, ``w1``.

    Args:
        data_dim: channels of ``x`` [B, T, C].
        n_sequences: rows of the adaptive-vector table (batches carry ``index`` in ``[0, n_sequences)``).
        max_length: time steps of the table.
        d_sizes: deterministic units per layer (bottom first).
        z_sizes: latent units per layer (bottom first).
        taus: time constants per layer (bottom first).
        w: meta-prior (KL weight for t > 1; the paper's name, one per time range, so not ``kl_weight``).
        w1: meta-prior at t = 1.
        er_window: error-regression window length.
        er_stride: steps the window slides each time (1 = every step, ``er_window`` = disjoint blocks).
        er_steps: optimisation steps per window position.
        er_lr: error-regression step size.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        data_dim: int = 1,
        n_sequences: int = 256,
        max_length: int = 64,
        d_sizes: list[int] = (32, 16),
        z_sizes: list[int] = (2, 2),
        taus: list[float] = (2.0, 8.0),
        w: float = 0.01,
        w1: float = 1.0,
        er_window: int = 16,
        er_stride: int = 1,
        er_steps: int = 50,
        er_lr: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (len(d_sizes) == len(z_sizes) == len(taus)):
            raise ValueError(f"d_sizes={list(d_sizes)}, z_sizes={list(z_sizes)}, taus={list(taus)} must have one "
                             "entry per layer")
        for tau in taus:
            check_range("taus", tau, 1.0)
        check_range("w", w, 0.0)
        check_range("w1", w1, 0.0)
        check_range("n_sequences", n_sequences, 1)
        check_range("er_window", er_window, 1)
        check_range("er_stride", er_stride, 1, er_window)
        self.save_hyperparameters()
        self.d_sizes, self.z_sizes = [int(d) for d in d_sizes], [int(z) for z in z_sizes]
        self.taus = [float(t) for t in taus]
        self.n_layers = len(self.d_sizes)
        self.max_length = max_length
        self.z_total = sum(self.z_sizes)
        self.cell = nn.ModuleList()
        self.prior_net = nn.ModuleList()
        for l, (d, z) in enumerate(zip(self.d_sizes, self.z_sizes)):
            top = self.d_sizes[l + 1] if l + 1 < self.n_layers else 0
            self.cell.append(nn.Linear(d + z + top, d))
            self.prior_net.append(nn.Linear(d, 2 * z))
        self.readout = nn.Linear(self.d_sizes[0], data_dim)
        self.a_mu = nn.Parameter(torch.zeros(n_sequences, max_length, self.z_total))
        self.a_sigma = nn.Parameter(torch.zeros(n_sequences, max_length, self.z_total))
        self.term_weights = {"recon": 1.0, "kl": w, "kl_first": w1}

    # -- generative pass -----------------------------------------------------------------------
    def run(self, length: int, batch_size: int, a_mu: Tensor | None = None, a_sigma: Tensor | None = None,
            sample: bool = True) -> tuple[Tensor, Tensor]:
        """Unroll ``length`` steps; ``x̂`` [B, T, C] and KL [B, T].

        Steps ``t < a_mu.shape[1]`` use the posterior (adaptive vectors), later steps the prior mean.
        """
        n_post = 0 if a_mu is None else a_mu.shape[1]
        h = [torch.zeros(batch_size, d, device=self.device) for d in self.d_sizes]
        d_prev = [torch.zeros_like(x) for x in h]
        outs, kls = [], []
        for t in range(length):  # recurrence over time (vectorised over the batch)
            kl_t = torch.zeros(batch_size, device=self.device)
            d_new: list[Tensor] = [None] * self.n_layers  # type: ignore[list-item]
            offset = self.z_total
            for l in reversed(range(self.n_layers)):  # top-down
                zl = self.z_sizes[l]
                offset -= zl
                mu_p, ls_p = self.prior_net[l](d_prev[l]).chunk(2, -1)
                mu_p, ls_p = torch.tanh(mu_p), ls_p.clamp(-6, 3)
                if t < n_post:
                    mu_q = torch.tanh(a_mu[:, t, offset:offset + zl])
                    ls_q = a_sigma[:, t, offset:offset + zl].clamp(-6, 3)
                    z = mu_q + torch.exp(ls_q) * torch.randn_like(mu_q) if sample else mu_q
                    kl_t = kl_t + gaussian_kl(mu_q, 2 * ls_q, mu_p, 2 * ls_p).sum(-1)
                else:
                    z = mu_p
                inp = [d_prev[l], z] + ([d_new[l + 1]] if l + 1 < self.n_layers else [])
                tau = self.taus[l]
                h[l] = (1 - 1 / tau) * h[l] + (1 / tau) * self.cell[l](torch.cat(inp, -1))
                d_new[l] = torch.tanh(h[l])
            d_prev = d_new
            outs.append(self.readout(d_new[0]))
            kls.append(kl_t)
        return torch.stack(outs, 1), torch.stack(kls, 1)

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, t, mask = sequence_batch(batch)
        b, n_t = x.shape[:2]
        if n_t > self.max_length:
            raise ValueError(f"sequence length {n_t} exceeds max_length={self.max_length}; raise max_length")
        if "index" in batch:
            idx = batch["index"].long()
            if int(idx.max()) >= self.hparams.n_sequences:
                raise ValueError(f"batch['index'] has {int(idx.max())}; allowed: [0, n_sequences="
                                 f"{self.hparams.n_sequences}) (one adaptive-vector row per training sequence)")
            x_hat, kl = self.run(n_t, b, self.a_mu[idx, :n_t], self.a_sigma[idx, :n_t], sample=self.training)
        else:  # unseen sequences without error regression: closed-loop prior generation
            x_hat, kl = self.run(n_t, b)
        err = ((x_hat - x) ** 2).sum(-1)
        recon = (err * mask).sum(1).mean()
        return {"recon": recon, "kl": (kl[:, 1:] * mask[:, 1:]).sum(1).mean(), "kl_first": kl[:, 0].mean(),
                "mse": (err * mask).sum() / mask.sum().clamp_min(1), "x_hat": x_hat}

    # -- predict path: error regression --------------------------------------------------------
    def error_regression(self, x: Tensor, horizon: int = 0, window: int | None = None, steps: int | None = None,
                         lr: float | None = None, stride: int | None = None) -> Tensor:
        """Infer adaptive vectors for observed ``x`` [B, T_obs, C] (weights frozen), then predict ``horizon``
        more steps; returns ``x̂`` [B, T_obs + horizon, C].

        The window ``[e - window, e)`` ends at ``e = window, window + stride, ...`` (and at ``T_obs``); at each
        position ``steps`` Adam steps minimise the window's ``recon + w KL`` (``+ w1 KL_1`` while it holds t = 1)
        over the vectors inside it, starting from their previous values. Defaults: ``er_window``,
        ``er_steps``, ``er_lr``, ``er_stride``.
        """
        window = window or self.hparams.er_window
        steps = self.hparams.er_steps if steps is None else steps
        lr = lr or self.hparams.er_lr
        stride = stride or self.hparams.get("er_stride", 1)
        check_range("stride", stride, 1, window)
        b, n_obs = x.shape[:2]
        ends = list(range(min(window, n_obs), n_obs + 1, stride))
        if ends[-1] != n_obs:
            ends.append(n_obs)
        frozen = [p.requires_grad for p in self.parameters()]
        for p in self.parameters():
            p.requires_grad_(False)
        a_mu = torch.zeros(b, n_obs, self.z_total, device=self.device)
        a_sigma = torch.zeros(b, n_obs, self.z_total, device=self.device)
        try:
            with torch.enable_grad():
                for end in ends:  # the window slides over time
                    start = max(0, end - window)
                    w_mu = a_mu[:, start:end].clone().requires_grad_(True)
                    w_sig = a_sigma[:, start:end].clone().requires_grad_(True)
                    opt = torch.optim.Adam([w_mu, w_sig], lr=lr)
                    for _ in range(steps):
                        mu = torch.cat([a_mu[:, :start], w_mu], 1)
                        sig = torch.cat([a_sigma[:, :start], w_sig], 1)
                        x_hat, kl = self.run(end, b, mu, sig, sample=False)
                        err = ((x_hat[:, start:] - x[:, start:end]) ** 2).sum((1, 2)).mean()
                        kl_w = kl[:, max(start, 1):end].sum(1).mean()
                        loss = err + self.hparams.w * kl_w + (self.hparams.w1 * kl[:, 0].mean() if start == 0 else 0.0)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                    a_mu[:, start:end], a_sigma[:, start:end] = w_mu.detach(), w_sig.detach()
        finally:
            for p, f in zip(self.parameters(), frozen):
                p.requires_grad_(f)
        with torch.no_grad():
            return self.run(n_obs + horizon, b, a_mu, a_sigma, sample=False)[0]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        x, _, _ = sequence_batch(batch)
        n_obs = x.shape[1] // 2
        return self.error_regression(x[:, :n_obs], horizon=x.shape[1] - n_obs)

    def forward(self, x: Tensor) -> Tensor:
        """Closed-loop prior generation of ``x.shape[1]`` steps (no data used)."""
        return self.run(x.shape[1], x.shape[0])[0]

    @torch.no_grad()
    def sample(self, n: int, length: int = 32, generator: torch.Generator | None = None) -> Tensor:
        return self.run(length, n)[0]
