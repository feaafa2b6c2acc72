"""RePo: resilient model-based RL by regularizing posterior predictability (Zhu et al., P23).

A recurrent state-space model (RSSM, Hafner et al. 2019) with a deterministic GRU state ``h_t`` and a
stochastic diagonal-Gaussian state ``z_t``::

    h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])        prior      p(z_t | h_t)
    e_t = enc(o_t)                                 posterior  q(z_t | h_t, e_t)
    reward head  p(r_t | h_t, z_t) = N(mu_r, 1)

RePo drops the observation decoder. It maximises reward predictability under an information constraint on
the posterior (paper Eq. 3-4)::

    max  E_q[sum_t log p(r_t | h_t, z_t)]   s.t.   E_q[sum_t KL(q(z_t | h_t, o_t) || p(z_t | h_t))] <= eps

solved through its Lagrangian with a dual variable ``beta >= 0`` updated by dual (gradient) ascent::

    L(theta, beta) = reward_nll + beta * (KL - eps)      theta <- theta - lr * dL/dtheta
                                                         beta  <- beta  + lr * dL/dbeta = beta + lr * (KL - eps)

Both updates run in the one optimizer step of the framework: the objective returns the primal term
``sg[beta] * (KL_balanced - eps)`` (model gradients) and the dual term ``-beta * (sg[KL] - eps)``, whose
*descent* on the dual parameter is ascent on ``beta * (KL - eps)``; their values cancel, the gradients do not.
``beta = exp(dual_scale * log_beta_raw)`` (``dual_scale`` sets the dual step size under Adam). KL balancing
(Hafner et al. 2021, used by RePo) splits the primal KL as ``alpha KL(sg q || p) + (1 - alpha) KL(q || sg p)``.

``objective="reconstruction"`` is the equal-size Dreamer-style baseline: the same RSSM and reward head plus an
observation decoder ``p(o_t | h_t, z_t)`` and the ELBO's fixed KL weight (``kl_weight``), no constraint.

Test-time adaptation (paper Sec. 4.3, reward-free): on a shifted environment only the observation encoder is
fine-tuned (:func:`align_encoder`), dynamics, prior, posterior head and reward head frozen, with a support
constraint that pulls each target latent state onto the support of the source latent states (a
nearest-neighbour estimate of the support distance, standing in for the paper's adversarial support
alignment) plus the KL of the target posteriors to the frozen dynamics prior.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.nn.mlp import MLP
from lightning_vi.registry import FAMILIES

OBJECTIVES = ("repo", "reconstruction")


def check_trajectories(x: Tensor, action: Tensor, obs_shape: tuple[int, ...], action_dim: int,
                       reward: Tensor | None = None) -> None:
    """``x`` [B, T, *obs_shape], ``action`` [B, T, action_dim], ``reward`` [B, T], ``B, T >= 1`` (clear errors)."""
    if x.ndim != 2 + len(obs_shape) or tuple(x.shape[2:]) != tuple(obs_shape):
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (batch, time, {', '.join(map(str, obs_shape))})")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: a batch needs at least one trajectory of at least one "
                         "frame")
    if tuple(action.shape) != (x.shape[0], x.shape[1], action_dim):
        raise ValueError(f"action has shape {tuple(action.shape)}; expected ({x.shape[0]}, {x.shape[1]}, "
                         f"{action_dim}) (batch, time, action_dim) to match x {tuple(x.shape)}")
    if reward is not None and tuple(reward.shape) != tuple(x.shape[:2]):
        raise ValueError(f"reward has shape {tuple(reward.shape)}; expected {tuple(x.shape[:2])} (batch, time)")


@FAMILIES.register("repo")
class RePo(VIModule):
    """RePo (P23): reconstruction-free RSSM with a KL constraint and a dual ``beta`` (module docstring).

    Batches are dicts with ``x`` [B, T, *obs_shape] frames, ``action`` [B, T, action_dim] (the action that
    led to each frame) and ``reward`` [B, T] (other keys ignored).

    Args:
        obs_shape: shape of one frame, e.g. ``[3, 16, 16]``; action_dim: size of an action.
        deter_dim: GRU state ``h`` size; stoch_dim: Gaussian state ``z`` size; embed_dim: encoder output size.
        hidden_dim: width of the encoder, prior/posterior, reward (and decoder) MLPs.
        objective: ``repo`` (reward + constrained KL, no decoder) or ``reconstruction`` (ELBO baseline).
        kl_target: the constraint's ``eps``, nats per time step (``repo``).
        init_beta: starting ``beta`` (``repo``); kl_weight: fixed KL weight of ``reconstruction``.
        dual_update: update ``beta`` by dual ascent (False: ``beta`` stays at ``init_beta``).
        dual_scale: ``beta = exp(dual_scale * raw)``: multiplies the dual step size under Adam.
        kl_balance: ``alpha`` of KL balancing (1 trains only the prior, 0.5 plain KL).
        reconstruction_weight: weight of the observation term (``reconstruction``).
        lr: learning rate of the default optimizer.
        **kwargs: the other shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``,
            ``check_finite``).
    """

    def __init__(
        self,
        obs_shape: list[int] = (3, 16, 16),
        action_dim: int = 2,
        deter_dim: int = 32,
        stoch_dim: int = 8,
        embed_dim: int = 32,
        hidden_dim: int = 64,
        objective: str = "repo",
        kl_target: float = 1.0,
        init_beta: float = 0.1,
        kl_weight: float = 1.0,
        dual_update: bool = True,
        dual_scale: float = 10.0,
        kl_balance: float = 0.8,
        reconstruction_weight: float = 1.0,
        lr: float = 3e-3,
        **kwargs: Any,
    ) -> None:
        obs_shape = tuple(int(s) for s in obs_shape)
        if len(obs_shape) == 0 or any(s < 1 for s in obs_shape):
            raise ValueError(f"obs_shape={list(obs_shape)!r} must be a non-empty list of positive sizes, "
                             "e.g. [3, 16, 16]")
        for name, v in (("action_dim", action_dim), ("deter_dim", deter_dim), ("stoch_dim", stoch_dim),
                        ("embed_dim", embed_dim), ("hidden_dim", hidden_dim)):
            check_range(name, v, 1)
        check_choice("objective", objective, OBJECTIVES)
        check_range("kl_target", kl_target, 0.0, low_open=True)
        check_range("init_beta", init_beta, 0.0, low_open=True)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("dual_scale", dual_scale, 0.0, low_open=True)
        check_range("kl_balance", kl_balance, 0.0, 1.0)
        check_range("reconstruction_weight", reconstruction_weight, 0.0)
        super().__init__(lr=lr, **kwargs)
        self.save_hyperparameters()
        self.obs_shape, self.action_dim, self.objective_name = obs_shape, action_dim, objective
        self.deter_dim, self.stoch_dim = deter_dim, stoch_dim
        self.kl_target, self.kl_balance, self.dual_scale = kl_target, kl_balance, dual_scale
        obs_dim = int(torch.tensor(obs_shape).prod())
        self.encoder = MLP(obs_dim, [hidden_dim], embed_dim, act="elu")              # e_t = enc(o_t)
        self.gru = nn.GRUCell(stoch_dim + action_dim, deter_dim)                     # h_t
        self.prior_net = MLP(deter_dim, [hidden_dim], 2 * stoch_dim, act="elu")      # p(z_t | h_t)
        self.post_net = MLP(deter_dim + embed_dim, [hidden_dim], 2 * stoch_dim, act="elu")  # q(z_t | h_t, e_t)
        self.reward_head = MLP(deter_dim + stoch_dim, [hidden_dim, hidden_dim], 1, act="elu")
        self.decoder = (MLP(deter_dim + stoch_dim, [hidden_dim, hidden_dim], obs_dim, act="elu")
                        if objective == "reconstruction" else None)
        self.log_beta_raw = nn.Parameter(torch.tensor(float(torch.tensor(init_beta).log()) / dual_scale),
                                         requires_grad=bool(dual_update) and objective == "repo")
        if objective == "repo":
            self.term_weights = {"reward": 1.0, "kl_primal": 1.0, "dual": 1.0}
        else:
            self.term_weights = {"reward": 1.0, "recon": reconstruction_weight, "kl_balanced": kl_weight}

    @property
    def beta(self) -> Tensor:
        """The Lagrange multiplier ``beta = exp(dual_scale * raw) > 0``."""
        return (self.dual_scale * self.log_beta_raw).exp()

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The observation encoder's parameters: the only ones test-time alignment changes."""
        return list(self.encoder.parameters())

    # -- the RSSM ---------------------------------------------------------------------------
    def _stats(self, net: nn.Module, inp: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = net(inp).chunk(2, -1)
        log_var = 2 * torch.log(F.softplus(raw) + 0.1)  # std in (0.1, inf), as in Dreamer's min_std
        return mean, log_var

    def filter(self, x: Tensor, action: Tensor, sample: bool = True) -> dict[str, Tensor]:
        """Posterior roll-out over a batch of trajectories.

        Returns per-step tensors [B, T, .]: ``h``, ``z``, posterior ``post_mean``/``post_logvar`` and prior
        ``prior_mean``/``prior_logvar``. ``sample=False`` feeds posterior means (evaluation).
        """
        check_trajectories(x, action, self.obs_shape, self.action_dim)
        b, t = x.shape[:2]
        embed = self.encoder(x.reshape(b * t, -1).float()).view(b, t, -1)
        h = x.new_zeros(b, self.deter_dim)
        z = x.new_zeros(b, self.stoch_dim)
        out: dict[str, list[Tensor]] = {k: [] for k in ("h", "z", "post_mean", "post_logvar", "prior_mean",
                                                         "prior_logvar")}
        for i in range(t):
            h = self.gru(torch.cat([z, action[:, i].float()], -1), h)
            pm, plv = self._stats(self.prior_net, h)
            qm, qlv = self._stats(self.post_net, torch.cat([h, embed[:, i]], -1))
            z = qm + (0.5 * qlv).exp() * torch.randn_like(qm) if sample else qm
            for k, v in zip(out, (h, z, qm, qlv, pm, plv)):
                out[k].append(v)
        return {k: torch.stack(v, 1) for k, v in out.items()}

    def features(self, x: Tensor, action: Tensor, sample: bool = False) -> Tensor:
        """Latent states ``[h_t, z_t]`` [B, T, deter_dim + stoch_dim] (posterior means by default)."""
        s = self.filter(x, action, sample)
        return torch.cat([s["h"], s["z"]], -1)

    def predict_reward(self, x: Tensor, action: Tensor) -> Tensor:
        """Reward predictions [B, T] from the posterior-mean latent states."""
        return self.reward_head(self.features(x, action).flatten(0, 1)).view(x.shape[:2])

    @torch.no_grad()
    def reward_mse(self, batch: dict[str, Tensor]) -> float:
        """Mean squared reward-prediction error on a batch of trajectories (posterior means)."""
        was = self.training
        self.eval()
        check_trajectories(batch["x"], batch["action"], self.obs_shape, self.action_dim, batch["reward"])
        err = float((self.predict_reward(batch["x"], batch["action"]) - batch["reward"].float()).pow(2).mean())
        self.train(was)
        return err

    def objective(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, action, reward = batch["x"], batch["action"], batch["reward"].float()
        check_trajectories(x, action, self.obs_shape, self.action_dim, reward)
        s = self.filter(x, action)
        feat = torch.cat([s["h"], s["z"]], -1)
        reward_nll = 0.5 * (self.reward_head(feat.flatten(0, 1)).view(reward.shape) - reward).pow(2).sum(1).mean()
        qm, qlv, pm, plv = s["post_mean"], s["post_logvar"], s["prior_mean"], s["prior_logvar"]
        kl = gaussian_kl(qm, qlv, pm, plv).sum(-1).mean()  # nats per time step
        a = self.kl_balance
        kl_bal = (a * gaussian_kl(qm.detach(), qlv.detach(), pm, plv)
                  + (1 - a) * gaussian_kl(qm, qlv, pm.detach(), plv.detach())).sum(-1).mean()
        terms: dict[str, Tensor] = {"reward": reward_nll, "kl": kl.detach(), "kl_balanced": kl_bal,
                                    "beta": self.beta.detach(), "z": s["z"]}
        frames = x.shape[1]
        if self.objective_name == "repo":
            # Lagrangian summed over time: sum_t [beta (KL_t - eps)]; primal (model) and dual (beta) parts.
            terms["kl_primal"] = frames * self.beta.detach() * (kl_bal - self.kl_target)
            terms["dual"] = -frames * self.beta * (kl.detach() - self.kl_target)
        else:
            recon = self.decoder(feat.flatten(0, 1))
            terms["recon"] = 0.5 * (recon - x.flatten(2).flatten(0, 1).float()).pow(2).sum(-1).view(
                x.shape[:2]).sum(1).mean()
            terms["kl_balanced"] = frames * kl_bal
        return terms

    def forward(self, x: Tensor, action: Tensor) -> Tensor:
        """Posterior-mean latent states ``[h_t, z_t]`` of the trajectories."""
        return self.features(x, action)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self.predict_reward(batch["x"], batch["action"])


def support_loss(target: Tensor, source: Tensor) -> Tensor:
    """Support constraint: mean over target latents of the squared distance to the nearest source latent.

    Zero iff every target latent lies on the (empirical) support of the source latents; unlike full
    distribution matching it does not force the target's state frequencies to equal the source's (RePo
    Sec. 4.3). ``target`` [N, D], ``source`` [M, D], both non-empty.
    """
    if target.ndim != 2 or source.ndim != 2 or target.shape[1] != source.shape[1]:
        raise ValueError(f"target {tuple(target.shape)} and source {tuple(source.shape)} must be [N, D] and [M, D]")
    if len(target) == 0 or len(source) == 0:
        raise ValueError(f"support_loss needs non-empty latent sets; got {len(target)} target and {len(source)} "
                         "source latents")
    return torch.cdist(target, source).pow(2).min(1).values.mean()


def align_encoder(model: RePo, source: dict[str, Tensor], target: dict[str, Tensor] | Callable[[int], dict],
                  steps: int = 200, lr: float = 1e-3, kl_weight: float = 1.0, bank_size: int = 2048,
                  seed: int = 0) -> RePo:
    """Reward-free test-time alignment (RePo Sec. 4.3) of a copy of ``model`` to a shifted environment.

    Only the observation encoder is trained; the loss is ``support_loss(target latents, source latents)
    + kl_weight * KL(q(z | h, o_target) || p(z | h))`` with the source latents (posterior-mean ``[h, z]``
    of ``source`` trajectories under the unadapted model) fixed and the dynamics/prior frozen. ``target``
    holds ``x`` and ``action`` only (no rewards are read): one batch, or ``step -> batch``.
    """
    check_range("steps", steps, 0)
    check_range("lr", lr, 0.0, low_open=True)
    check_range("kl_weight", kl_weight, 0.0)
    check_range("bank_size", bank_size, 1)
    adapted = copy.deepcopy(model).eval()
    with torch.no_grad():
        bank = adapted.features(source["x"], source["action"]).flatten(0, 1)
    g = torch.Generator().manual_seed(seed)
    if len(bank) > bank_size:
        bank = bank[torch.randperm(len(bank), generator=g)[:bank_size]]
    for p in adapted.parameters():
        p.requires_grad_(False)
    enc = adapted.encoder_parameters()
    for p in enc:
        p.requires_grad_(True)
    opt = torch.optim.Adam(enc, lr)
    for step in range(int(steps)):
        batch = target(step) if callable(target) else target
        s = adapted.filter(batch["x"], batch["action"], sample=False)
        feat = torch.cat([s["h"], s["z"]], -1).flatten(0, 1)
        kl = gaussian_kl(s["post_mean"], s["post_logvar"], s["prior_mean"], s["prior_logvar"]).sum(-1).mean()
        loss = support_loss(feat, bank) + kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p in adapted.parameters():
        p.requires_grad_(True)
    adapted.log_beta_raw.requires_grad_(model.log_beta_raw.requires_grad)
    return adapted.eval()
