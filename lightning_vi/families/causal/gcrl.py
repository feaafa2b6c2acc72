"""GCRL: generative causal representation learning for out-of-distribution motion forecasting (P25).

Bagi, Gharaee, Schulte and Crowley (ICML 2023). Causal model: the past ``X`` and the future ``Y`` of a
trajectory are generated from invariant latents ``Z`` (mechanisms shared by all environments) and variant latents
``S`` (environment-specific style); a selection variable ``E`` (the environment) points only to ``S``, so only
``p(S | E)`` changes between environments and ``p(Z)``, ``p(X | Z, S)``, ``p(Y | Z, S)`` transfer unchanged.

Variational learning (the ELBO of ``log p(X, Y | E)``)::

    ELBO = E_q[log p(X | Z, S) + log p(Y | Z, S)] - KL(q(Z | X) || N(0, I)) - KL(q(S | X) || p(S | E))

with ``p(S | E = e) = N(mu_e, diag sigma_e^2)``, one learned Gaussian component per training environment (the
mixture ``p(S) = sum_e pi_e p(S | E = e)`` over training environments; the selection variable picks the
component; ``s_prior="mixture"`` uses the mixture itself, as the authors' code does). Coordinates are
relative to the last observed point; both decoders see only ``(Z, S)``.

Transfer to a new environment:

* zero-shot: encode the past with ``q(Z | X)``, ``q(S | X)`` (no environment label needed) and decode the future;
* low-shot (:func:`finetune_gcrl` with ``part="env"``): add a prior component for the new environment and
  fine-tune only the environment-specific parts, ``q(S | X)`` and ``p(S | E = new)``, on a few trajectories;
  ``part="all"`` fine-tunes every parameter (the baseline).

``split=False`` is the ablation: one latent of size ``z_dim + s_dim`` with prior ``N(0, I)`` and no
environment dependence. Metrics (:func:`ade_fde`): ADE = mean over time of the Euclidean error, FDE = the error
at the last step, of the posterior-mean prediction (``k=1``) or the best of ``k`` posterior samples.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.nn.mlp import MLP
from lightning_vi.registry import FAMILIES

LOG_2PI = math.log(2 * math.pi)


def _gauss_nll(y: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise ``-log N(y; mean, exp(log_std)^2)``."""
    return 0.5 * ((y - mean) / log_std.exp()).pow(2) + log_std + 0.5 * LOG_2PI


@FAMILIES.register("gcrl")
class GCRL(VIModule):
    """GCRL (P25): invariant ``Z`` and environment-specific ``S`` latents of a trajectory (module docstring).

    Batches are dicts with ``past`` [B, t_obs, 2], ``future`` [B, t_pred, 2] and ``env`` [B] (environment ids).

    Args:
        train_envs: ids of the training environments, one prior component ``p(S | E = e)`` each (non-empty).
        t_obs, t_pred: observed and predicted steps.
        z_dim, s_dim: sizes of the invariant and the environment-specific latent (each >= 1).
        split: ``False`` = the ablation, one latent of size ``z_dim + s_dim`` with an ``N(0, I)`` prior.
        hidden_dims: MLP widths of the encoders and decoders.
        reconstruct_past: include ``log p(X | Z, S)`` (the generative model explains the past too).
        kl_weight: weight of the KL terms (1 = the ELBO).
        s_prior: ``"label"``: ``KL(q(S | X) || p(S | E = e))`` with the batch's environment component (closed
            form); ``"mixture"``: ``KL(q(S | X) || sum_e pi_e p(S | E = e))`` against the mixture over training
            environments with learned weights ``pi`` (one-sample Monte Carlo estimate; no environment label
            used in the loss), as in the authors' code (github.com/sshirahmad/GCRL, ``models.py``).
        lr: learning rate of the default optimizer.
        **kwargs: the other shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``,
            ``check_finite``).
    """

    def __init__(
        self,
        train_envs: list[int] = (0, 1, 2),
        t_obs: int = 8,
        t_pred: int = 12,
        z_dim: int = 2,
        s_dim: int = 2,
        split: bool = True,
        hidden_dims: list[int] = (64, 64),
        reconstruct_past: bool = True,
        kl_weight: float = 1.0,
        s_prior: str = "label",
        lr: float = 2e-3,
        **kwargs: Any,
    ) -> None:
        envs = [int(e) for e in train_envs]
        if not envs:
            raise ValueError("train_envs=[] is empty: GCRL learns one prior component p(S | E=e) per training "
                             "environment, so give at least one environment id (e.g. [0, 1, 2])")
        if len(set(envs)) != len(envs):
            raise ValueError(f"train_envs={envs!r} repeats an environment id; give each once")
        for name, v in (("z_dim", z_dim), ("s_dim", s_dim)):
            if v < 1:
                raise ValueError(f"{name}={v!r}: GCRL needs an invariant and an environment-specific latent, "
                                 f"allowed: {name} >= 1")
        check_range("t_obs", t_obs, 2)
        check_range("t_pred", t_pred, 1)
        check_range("kl_weight", kl_weight, 0.0)
        check_choice("s_prior", s_prior, ["label", "mixture"])
        super().__init__(lr=lr, **kwargs)
        self.save_hyperparameters()
        self.train_envs, self.t_obs, self.t_pred, self.split = envs, t_obs, t_pred, bool(split)
        self.z_dim, self.s_dim, self.reconstruct_past = z_dim, s_dim, reconstruct_past
        hidden, d_in, d = list(hidden_dims), 2 * t_obs, z_dim + s_dim
        if self.split:
            self.enc_z = MLP(d_in, hidden, 2 * z_dim)          # q(Z | X)
            self.enc_s = MLP(d_in, hidden, 2 * s_dim)          # q(S | X): environment-specific
            # p(S | E = e): one diagonal Gaussian per environment (selection variable picks the component).
            self.prior_mu = nn.ParameterDict({str(e): nn.Parameter(0.5 * torch.randn(s_dim)) for e in envs})
            self.prior_log_var = nn.ParameterDict({str(e): nn.Parameter(torch.zeros(s_dim)) for e in envs})
        else:
            self.enc = MLP(d_in, hidden, 2 * d)                # q(Z' | X), Z' of size z_dim + s_dim, N(0, I)
        self.dec_past = MLP(d, hidden, 2 * t_obs)              # p(X | Z, S)
        self.s_prior = s_prior
        if self.split and s_prior == "mixture":     # mixing weights pi_e of p(S) = sum_e pi_e p(S | E = e)
            self.prior_logits = nn.Parameter(torch.zeros(len(envs)))
        self.dec_future = MLP(d, hidden, 2 * t_pred)           # p(Y | Z, S)
        self.log_std_past = nn.Parameter(torch.full((2 * t_obs,), -2.0))
        self.log_std_future = nn.Parameter(torch.full((2 * t_pred,), -2.0))
        self.term_weights = {"rec_past": float(reconstruct_past), "nll_future": 1.0, "kl_z": kl_weight,
                             "kl_s": kl_weight}

    # -- environments ----------------------------------------------------------------------------
    @property
    def known_envs(self) -> list[int]:
        """Environment ids with a prior component (training environments and any added by fine-tuning)."""
        return [int(e) for e in self.prior_mu] if self.split else list(self.train_envs)

    def add_environment(self, env: int) -> None:
        """A new component ``p(S | E = env)`` for low-shot transfer, initialised at the training mixture's
        moments (its zero-shot stand-in)."""
        if not self.split:
            raise ValueError("add_environment needs split=True: the ablation has no environment-specific prior")
        if str(int(env)) in self.prior_mu:
            raise ValueError(f"env={env} already has a prior component; known: {self.known_envs}")
        mus = torch.stack([self.prior_mu[str(e)] for e in self.train_envs]).detach()
        var = torch.stack([self.prior_log_var[str(e)] for e in self.train_envs]).detach().exp()
        mix_var = (var + mus.pow(2)).mean(0) - mus.mean(0).pow(2)
        self.prior_mu[str(int(env))] = nn.Parameter(mus.mean(0).clone())
        self.prior_log_var[str(int(env))] = nn.Parameter(mix_var.log().clone())

    def env_parameters(self, env: int) -> list[nn.Parameter]:
        """The environment-specific parameters of ``env``: ``q(S | X)`` and ``p(S | E = env)``."""
        if not self.split:
            raise ValueError("env_parameters needs split=True: the ablation has no environment-specific part")
        self._check_env(torch.tensor([env]))
        return [*self.enc_s.parameters(), self.prior_mu[str(int(env))], self.prior_log_var[str(int(env))]]

    def _check_env(self, env: Tensor) -> None:
        known = set(self.known_envs)
        unknown = sorted({int(e) for e in env.tolist()} - known)
        if unknown:
            raise ValueError(f"env ids {unknown} have no prior component p(S | E=e); known environments: "
                             f"{sorted(known)}. For a new environment call add_environment(env) (low-shot) or "
                             "predict without labels (zero-shot)")

    # -- model -----------------------------------------------------------------------------------
    def _relative(self, past: Tensor) -> tuple[Tensor, Tensor]:
        if past.ndim != 3 or past.shape[1:] != (self.t_obs, 2):
            raise ValueError(f"past has shape {tuple(past.shape)}; expected (batch, t_obs={self.t_obs}, 2)")
        origin = past[:, -1:, :]
        return (past - origin).flatten(1), origin

    def posterior(self, past: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``q(Z, S | X)`` [B, z_dim + s_dim] (``Z`` first, then ``S``)."""
        x, _ = self._relative(past.float())
        if not self.split:
            return self.enc(x).chunk(2, -1)
        mz, lz = self.enc_z(x).chunk(2, -1)
        ms, ls = self.enc_s(x).chunk(2, -1)
        return torch.cat([mz, ms], -1), torch.cat([lz, ls], -1)

    def objective(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        past, future, env = batch["past"].float(), batch["future"].float(), batch["env"].long()
        if future.ndim != 3 or future.shape[1:] != (self.t_pred, 2) or len(future) != len(past):
            raise ValueError(f"future has shape {tuple(future.shape)}; expected ({len(past)}, t_pred={self.t_pred}, 2)")
        x, origin = self._relative(past)
        y = (future - origin).flatten(1)
        mu, log_var = self.posterior(past)
        h = mu + (0.5 * log_var).exp() * torch.randn_like(mu)
        rec_past = _gauss_nll(x, self.dec_past(h), self.log_std_past).sum(-1).mean()
        nll_future = _gauss_nll(y, self.dec_future(h), self.log_std_future).sum(-1).mean()
        if self.split:
            self._check_env(env)
            dz = self.z_dim
            kl_z = gaussian_kl(mu[:, :dz], log_var[:, :dz]).sum(-1).mean()
            p_mu = torch.stack([self.prior_mu[str(e)] for e in self.known_envs])
            p_lv = torch.stack([self.prior_log_var[str(e)] for e in self.known_envs])
            idx = torch.as_tensor([self.known_envs.index(int(e)) for e in env.tolist()], device=mu.device)
            if self.s_prior == "mixture":
                # reference-code variant: KL(q(S | X) || sum_e pi_e N(mu_e, sigma_e^2)), one-sample MC estimate
                # over the training environments (a component added by add_environment is not in the mixture)
                s = h[:, dz:]
                log_q = -_gauss_nll(s, mu[:, dz:], 0.5 * log_var[:, dz:]).sum(-1)
                m_mu = torch.stack([self.prior_mu[str(e)] for e in self.train_envs])
                m_lv = torch.stack([self.prior_log_var[str(e)] for e in self.train_envs])
                comp = -_gauss_nll(s[:, None], m_mu[None], 0.5 * m_lv[None]).sum(-1)        # [B, n_envs]
                log_p = torch.logsumexp(comp + self.prior_logits.log_softmax(0), -1)
                kl_s = (log_q - log_p).mean()
            else:
                kl_s = gaussian_kl(mu[:, dz:], log_var[:, dz:], p_mu[idx], p_lv[idx]).sum(-1).mean()
        else:
            kl_z = gaussian_kl(mu, log_var).sum(-1).mean()
            kl_s = torch.zeros((), device=mu.device)
        elbo = -(rec_past * float(self.reconstruct_past) + nll_future + kl_z + kl_s)
        return {"rec_past": rec_past, "nll_future": nll_future, "kl_z": kl_z, "kl_s": kl_s, "elbo": elbo.detach()}

    @torch.no_grad()
    def predict(self, past: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """Predicted futures [k, B, t_pred, 2] in absolute coordinates: the posterior mean for ``k=1``,
        ``k`` samples of ``q(Z, S | X)`` decoded by the mean of ``p(Y | Z, S)`` otherwise (zero-shot: no
        environment label is needed)."""
        check_range("k", k, 1)
        _, origin = self._relative(past.float())
        mu, log_var = self.posterior(past)
        if k == 1:
            h = mu[None]
        else:
            eps = torch.randn((k, *mu.shape), generator=generator).to(mu)
            h = mu + (0.5 * log_var).exp() * eps
        out = self.dec_future(h.flatten(0, 1)).view(k, len(past), self.t_pred, 2)
        return out + origin[None]

    def forward(self, past: Tensor) -> Tensor:
        """Posterior-mean prediction of the future [B, t_pred, 2]."""
        return self.predict(past)[0]

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch["past"])

    @staticmethod
    def _batch_size(batch: dict[str, Tensor]) -> int:
        return int(batch["past"].shape[0])


def ade_fde(pred: Tensor, future: Tensor) -> tuple[float, float]:
    """ADE and FDE of predictions [k, B, T, 2] (or [B, T, 2]) against ``future`` [B, T, 2]: per trajectory the
    minimum over the ``k`` predictions, taken separately for ADE and FDE (best-of-k, as in Social GAN), averaged
    over B; ``k = 1`` is the plain error of one prediction."""
    pred = pred[None] if pred.ndim == 3 else pred
    if pred.shape[1:] != future.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)}; expected (k, *{tuple(future.shape)})")
    err = (pred - future[None]).norm(dim=-1)                   # [k, B, T]
    return float(err.mean(-1).min(0).values.mean()), float(err[..., -1].min(0).values.mean())


def fit_gcrl(model: GCRL, data: dict[str, Tensor], steps: int = 1500, lr: float = 2e-3, batch_size: int = 256,
             seed: int = 0) -> GCRL:
    """Train ``model`` with :func:`fit_objective` on minibatches of ``data`` (dict of ``past``/``future``/``env``)."""
    n = len(data["past"])
    g = torch.Generator().manual_seed(seed)
    if batch_size >= n:
        return fit_objective(model, data, steps, lr)
    keys = ("past", "future", "env")
    return fit_objective(model, lambda _: (lambda i: {k: data[k][i] for k in keys})(
        torch.randint(n, (batch_size,), generator=g)), steps, lr)


def finetune_gcrl(model: GCRL, shots: dict[str, Tensor], env: int, part: str = "env", steps: int = 200,
                  lr: float = 2e-3) -> GCRL:
    """Low-shot transfer: a copy of ``model`` with a new component ``p(S | E = env)``, fine-tuned on ``shots``.

    ``part="env"`` trains only the environment-specific parts (``q(S | X)`` and the new prior component; the
    invariant ``q(Z | X)``, ``p(X | Z, S)`` and ``p(Y | Z, S)`` transfer unchanged, as the selection variable
    says); ``part="all"`` trains every parameter (full fine-tuning). The ablation (``split=False``) has no
    environment part and accepts only ``part="all"``.
    """
    check_choice("part", part, ["env", "all"])
    if not len(shots["past"]):
        raise ValueError("shots holds no trajectories; low-shot transfer needs at least one")
    new = copy.deepcopy(model)
    batch = {"past": shots["past"], "future": shots["future"],
             "env": torch.full((len(shots["past"]),), int(env), dtype=torch.long)}
    if new.split:
        if str(int(env)) not in new.prior_mu:
            new.add_environment(env)
        keep = {id(p) for p in (new.env_parameters(env) if part == "env" else new.parameters())}
        for p in new.parameters():
            p.requires_grad_(id(p) in keep)
    elif part == "env":
        raise ValueError("part='env' needs split=True: the ablation has no environment-specific parameters")
    fit_objective(new, batch, steps, lr)
    for p in new.parameters():
        p.requires_grad_(True)
    return new.eval()
