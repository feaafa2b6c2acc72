"""Koopman VAE (Naiman et al. 2024, "Generative Modeling of Regular and Irregular Time Series Data via
Koopman VAEs", ICLR).

Posterior ``q(z_t | x)`` from a bidirectional GRU; decoder ``p(x_t | z_t)``; a GRU prior
``p(z̄_t | z_{<t})`` whose latents are tied to *linear* dynamics: the Koopman operator ``A`` solves the
least-squares problem ``Z̄_{2:T} ≈ Z̄_{1:T-1} A`` over the batch (their Eq. 5, ``A = Z̄_{1:T-1}^+ Z̄_{2:T}``),
and the prediction loss ``L_pred = E ||Z̄_{2:T} - Z̄_{1:T-1} A||^2`` (Eq. 6; here divided by the total
variance of the latents, or with ``pred_scale="covariance"`` whitened by their covariance, so that it cannot
be zeroed by shrinking them) is added to the ELBO
(Eq. 7: ``recon + kl_weight KL + alpha L_pred + gamma L_eig``). Eigenvalue constraints (Sec. 4.2):
``"unit_disk"`` penalises ``sum relu(|lambda| - 1)^2`` (stable dynamics), ``"prescribed"`` penalises
``sum (|lambda| - r)^2`` for every eigenvalue (``r = eig_radius``).

Which latents ``A`` is fitted on: ``koopman_latents="prior"`` follows the paper (GRU-prior means);
the default ``"posterior"`` fits it on the posterior means ``E[z_t | x]`` (the prior GRU is still trained by
the KL), which identifies the dynamics in a few hundred full-batch steps on small data.

Regular and irregular data share one path: missing steps have ``mask = 0``; the encoder reads
``(x * mask, mask, dt)`` and the reconstruction term counts observed steps only.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import diag_normal
from lightning_vi.core.module import VIModule
from lightning_vi.families.sequence._common import sequence_batch
from lightning_vi.registry import FAMILIES


def koopman_lstsq(z: Tensor, mask: Tensor | None = None, ridge: float = 0.0) -> Tensor:
    """Least-squares Koopman operator ``A`` [d, d] with ``z[:, 1:] ≈ z[:, :-1] @ A`` (z [B, T, d]).

    ``mask`` [B, T] drops pairs whose ends are not both kept. ``ridge`` adds ``ridge * I`` to the normal
    equations (0 = plain pseudo-inverse solution).

    The solve runs in float64 and returns ``A`` in ``z``'s dtype (fp32 for fp16/bf16 inputs). A float32 solve
    has rounding errors of order ``cond(Z) * eps_32 * |A|`` (about 1e-6 here) that change with the input's
    memory alignment and the BLAS thread count (their vectorised kernels sum in different orders), so the
    same latents gave operators that differed by 1e-6 from call to call; in float64 that noise is below
    float32 resolution and the result is reproducible.
    """
    with torch.autocast(z.device.type, enabled=False):  # under bf16/fp16 autocast too
        out_dtype = z.dtype if z.dtype in (torch.float32, torch.float64) else torch.float32
        z = z.float() if z.device.type == "mps" else z.double()  # MPS has no float64
        prev, nxt = z[:, :-1].reshape(-1, z.shape[-1]), z[:, 1:].reshape(-1, z.shape[-1])
        if mask is not None:
            keep = (mask[:, :-1] * mask[:, 1:]).reshape(-1, 1).to(z.dtype)
            prev, nxt = prev * keep, nxt * keep
        if ridge > 0:
            gram = prev.T @ prev + ridge * torch.eye(prev.shape[1], device=z.device, dtype=z.dtype)
            return torch.linalg.solve(gram, prev.T @ nxt).to(out_dtype)
        return torch.linalg.lstsq(prev, nxt).solution.to(out_dtype)


def koopman_prediction_loss(z: Tensor, a: Tensor, mask: Tensor | None = None, scale: str = "none") -> Tensor:
    """``mean ||z[:, 1:] - z[:, :-1] A||^2`` over (kept) step pairs.

    ``scale="variance"`` divides by the latents' total variance; ``"covariance"`` measures each residual in the
    metric of the latents' covariance ``C`` (``r^T C^{-1} r / d``), so no latent direction can be shrunk to
    zero its share of the loss. Both make the loss invariant to rescaling the latents.
    """
    check_choice("scale", scale, ("none", "variance", "covariance"))
    r = z[:, 1:] - z[:, :-1] @ a
    if scale == "covariance":
        with torch.autocast(z.device.type, enabled=False):
            zf = z.reshape(-1, z.shape[-1])
            zf, rf = (zf, r) if zf.dtype == torch.float64 else (zf.float(), r.float())
            zc = zf - zf.mean(0)
            cov = zc.T @ zc / max(len(zf) - 1, 1)
            cov = cov + 1e-7 * cov.diagonal().mean() * torch.eye(z.shape[-1], device=z.device, dtype=cov.dtype)
            chol = torch.linalg.cholesky(cov)
            white = torch.linalg.solve_triangular(chol, rf.reshape(-1, z.shape[-1]).T, upper=False)
            err = white.pow(2).sum(0).view(r.shape[:-1]) / z.shape[-1]
    else:
        err = r.pow(2).sum(-1)
        if scale == "variance":
            err = err / z.var(dim=(0, 1)).sum().clamp_min(1e-6)
    if mask is None:
        return err.mean()
    keep = mask[:, :-1] * mask[:, 1:]
    return (err * keep).sum() / keep.sum().clamp_min(1)


@FAMILIES.register("kvae")
class KoopmanVAE(VIModule):
    """Koopman VAE: sequence VAE whose GRU prior is pulled to linear (Koopman) latent dynamics.

    Args:
        data_dim: channels of ``x`` [B, T, C].
        latent_dim: size of ``z_t``.
        hidden: GRU/MLP width.
        kl_weight: weight of the KL term (the paper's beta).
        alpha: weight of the Koopman prediction loss.
        eig_constraint: ``"none"``, ``"unit_disk"`` or ``"prescribed"`` (with ``eig_radius``).
        eig_weight: weight of the eigenvalue constraint.
        eig_radius: modulus of the prescribed eigenvalues.
        obs_std: initial observation std (learned).
        ridge: ridge of the least-squares solve.
        koopman_latents: ``"posterior"`` or ``"prior"`` (see the module docstring).
        decoder: ``"mlp"`` or ``"linear"`` (``x_t = W z_t + b``: the latents must carry the oscillations
            themselves, so the operator's eigenvalue angles are the data's frequencies).
        pred_scale: normalisation of the prediction loss, ``"variance"`` or ``"covariance"``
            (see ``koopman_prediction_loss``).
        beta: deprecated name of ``kl_weight``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        data_dim: int = 1,
        latent_dim: int = 4,
        hidden: int = 64,
        kl_weight: float = 0.1,
        alpha: float = 1.0,
        eig_constraint: str = "none",
        eig_weight: float = 1.0,
        eig_radius: float = 1.0,
        obs_std: float = 0.1,
        ridge: float = 0.0,
        koopman_latents: str = "posterior",
        decoder: str = "mlp",
        pred_scale: str = "variance",
        beta: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, 0.1)
        check_choice("koopman_latents", koopman_latents, ("posterior", "prior"))
        check_choice("decoder", decoder, ("mlp", "linear"))
        check_choice("pred_scale", pred_scale, ("variance", "covariance"))
        check_choice("eig_constraint", eig_constraint, ("none", "unit_disk", "prescribed"))
        for name, v in (("kl_weight", kl_weight), ("alpha", alpha), ("eig_weight", eig_weight), ("ridge", ridge)):
            check_range(name, v, 0.0)
        check_range("obs_std", obs_std, 0.0, low_open=True)
        check_range("eig_radius", eig_radius, 0.0, low_open=True)
        self.save_hyperparameters()
        self.data_dim, self.latent_dim = data_dim, latent_dim
        self.encoder = nn.GRU(data_dim + 2, hidden, batch_first=True, bidirectional=True)
        self.enc_head = nn.Linear(2 * hidden, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, data_dim) if decoder == "linear" else \
            nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))
        self.prior_rnn = nn.GRU(latent_dim, hidden, batch_first=True)
        self.prior_head = nn.Linear(hidden, 2 * latent_dim)
        self.log_obs_std = nn.Parameter(torch.tensor(float(obs_std)).log())
        self.term_weights = {"recon": 1.0, "kl": kl_weight, "pred": alpha}
        if eig_constraint != "none":
            self.term_weights["eig"] = eig_weight

    # -- networks ------------------------------------------------------------------------------
    def encode(self, x: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        dt = torch.diff(t, dim=1, prepend=t[:, :1])
        h = self.encoder(torch.cat([x * mask[..., None], mask[..., None], dt[..., None]], -1))[0]
        mu, log_var = self.enc_head(h).chunk(2, -1)
        return mu, log_var.clamp(-12, 8)

    def prior(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``p(z̄_t | z_{<t})`` parameters [B, T, d] from the GRU run on ``z`` shifted by one step."""
        inp = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1)
        mu, log_var = self.prior_head(self.prior_rnn(inp)[0]).chunk(2, -1)
        return mu, log_var.clamp(-12, 8)

    def eig_penalty(self, a: Tensor) -> Tensor:
        mod = torch.linalg.eigvals(a).abs()
        if self.hparams.eig_constraint == "unit_disk":
            return torch.relu(mod - 1).pow(2).sum()
        return (mod - self.hparams.eig_radius).pow(2).sum()

    # -- objective -----------------------------------------------------------------------------
    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, t, mask = sequence_batch(batch)
        mu, log_var = self.encode(x, t, mask)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        p_mu, p_log_var = self.prior(z)
        q, p = diag_normal(mu, log_var), diag_normal(p_mu, p_log_var)
        kl = torch.distributions.kl_divergence(q, p).sum(1).mean()
        x_hat = self.decoder(z)
        log_px = torch.distributions.Normal(x_hat, self.log_obs_std.exp()).log_prob(x).sum(-1)
        recon = -(log_px * mask).sum(1).mean()
        lat = mu if self.hparams.koopman_latents == "posterior" else p_mu
        a = koopman_lstsq(lat, ridge=self.hparams.ridge)
        # relative to the latents' spread, so shrinking the latents cannot zero the loss
        pred = koopman_prediction_loss(lat, a, scale=self.hparams.pred_scale)
        out = {"recon": recon, "kl": kl, "pred": pred, "elbo": -(recon + kl),
               "mse": ((x_hat - x).pow(2).sum(-1) * mask).sum() / mask.sum().clamp_min(1),
               "koopman": a, "z": z}
        if self.hparams.eig_constraint != "none":
            out["eig"] = self.eig_penalty(a)
        return out

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def koopman_operator(self, batch: dict[str, Any]) -> Tensor:
        """``A`` solved on the latents of ``batch`` (posterior means, or the prior's means given them)."""
        x, t, mask = sequence_batch(batch)
        mu, _ = self.encode(x, t, mask)
        lat = mu if self.hparams.koopman_latents == "posterior" else self.prior(mu)[0]
        return koopman_lstsq(lat, ridge=self.hparams.ridge)

    @torch.no_grad()
    def eigenvalues(self, batch: dict[str, Any]) -> Tensor:
        return torch.linalg.eigvals(self.koopman_operator(batch))

    @torch.no_grad()
    def modes(self, batch: dict[str, Any], dt: float | None = None) -> tuple[Tensor, Tensor]:
        """Eigenvalues of the operator on ``batch`` and their frequencies ``|angle| / (2 pi dt)``, sorted by
        decreasing modulus (undamped oscillations first); ``dt`` defaults to the batch's mean time step."""
        _, t, _ = sequence_batch(batch)
        lam = self.eigenvalues(batch)
        lam = lam[lam.abs().argsort(descending=True)]
        dt = float(torch.diff(t, dim=1).mean()) if dt is None else dt
        return lam, lam.angle().abs() / (2 * torch.pi * dt)

    def forward(self, x: Tensor, t: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Reconstruction (decoder at the posterior means)."""
        batch = {"x": x, **({"t": t} if t is not None else {}), **({"mask": mask} if mask is not None else {})}
        x, t, mask = sequence_batch(batch)
        return self.decoder(self.encode(x, t, mask)[0])

    @torch.no_grad()
    def forecast(self, batch: dict[str, Any], horizon: int, n_samples: int = 16,
                 generator: torch.Generator | None = None) -> Tensor:
        """Samples of the next ``horizon`` steps after the context ``batch``: [n_samples, B, horizon, C].

        The posterior latents of the context condition the GRU prior, which is then rolled out by sampling.
        """
        x, t, mask = sequence_batch(batch)
        mu, _ = self.encode(x, t, mask)
        b = x.shape[0]
        z = mu.repeat(n_samples, 1, 1)  # [S*B, T, d]
        _, h = self.prior_rnn(torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], 1))
        inp, outs = z[:, -1:], []
        for _ in range(horizon):  # autoregressive roll-out over time (not over the batch)
            o, h = self.prior_rnn(inp, h)
            p_mu, p_log_var = self.prior_head(o).chunk(2, -1)
            eps = torch.randn(p_mu.shape, generator=generator).to(p_mu)
            inp = p_mu + eps * torch.exp(0.5 * p_log_var.clamp(-12, 8))
            outs.append(self.decoder(inp))
        return torch.cat(outs, 1).view(n_samples, b, horizon, -1)

    @torch.no_grad()
    def sample(self, n: int, length: int = 32, generator: torch.Generator | None = None) -> Tensor:
        """``n`` sequences [n, length, C] sampled from the GRU prior."""
        h, inp, outs = None, torch.zeros(n, 1, self.latent_dim, device=self.device), []
        for _ in range(length):
            o, h = self.prior_rnn(inp, h)
            p_mu, p_log_var = self.prior_head(o).chunk(2, -1)
            inp = p_mu + torch.randn(p_mu.shape, generator=generator).to(p_mu) * torch.exp(0.5 * p_log_var)
            outs.append(self.decoder(inp))
        return torch.cat(outs, 1)
