"""Variationally regularized graph-based representation learning for EHR (P34, graph-EHR).

A record is the set of medical codes it holds (multi-hot ``x`` [B, C]); no code graph is given. The model
learns one by attention from co-occurrence (the paper's encoder-decoder graph network):

* code embeddings ``e_c`` (``h_c = e_c`` for every code);
* **encoder**: self-attention among the record's codes, masked to the codes present
  (``A_ij = softmax_j over present j of <W_q h_i, W_k h_j> / sqrt(d)``, the learned graph of the record),
  ``h'_i = h_i + sum_j A_ij W_v h_j``;
* **variational regularisation** of the node representations: ``q(z_i | record) = N(mu_i, diag sigma_i^2)``
  from an MLP of ``h'_i``, reparameterised sample ``z_i`` (posterior mean at eval), and
  ``KL(q(z_i) || N(0, I))`` (summed over latent dims, averaged over present nodes) weighted by ``kl_weight``;
  ``kl_weight = 0`` is the same graph network without the KL term;
* **decoder**: a second masked attention layer over the ``z_i``; the record representation is the mean over
  its present codes and an MLP gives the outcome logit (loss ``bce``);
* co-occurrence reconstruction (link prediction of the record's codes, ``rec``): every present ``z_i`` scores
  every other code ``j`` by ``<z_i, W_r e_j>`` against ``1[j present]`` (BCE), weighted by ``rec_weight``.

Loss: ``bce + rec_weight * rec + kl_weight * kl``. Learned code graphs: :meth:`EHRGNN.learned_graph` (the
encoder attention averaged over records in which both codes occur) and :meth:`EHRGNN.similarity_graph`
(cosine similarity of the codes' mean node representations).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl
from lightning_vi.core.module import VIModule
from lightning_vi.nn.mlp import MLP
from lightning_vi.registry import FAMILIES


def check_records(x: Tensor, n_codes: int) -> None:
    """``x`` must be multi-hot records [B, n_codes] with at least one code each (a clear error otherwise)."""
    if x.ndim != 2 or x.shape[1] != n_codes:
        raise ValueError(f"records have shape {tuple(x.shape)}; expected (records, n_codes={n_codes}) multi-hot")
    empty = (x.sum(1) == 0).nonzero()[:, 0]
    if len(empty):
        raise ValueError(f"{len(empty)} record(s) hold no code (first at index {int(empty[0])}); every record "
                         "needs at least one code: the graph is built over a record's present codes")


def effective_rank(m: Tensor) -> float:
    """``exp`` of the entropy of the normalised singular values of ``m`` (Roy & Vetterli 2007)."""
    s = torch.linalg.svdvals(m.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def record_effective_rank(nodes: Tensor, x: Tensor) -> float:
    """Mean over records of the :func:`effective_rank` of the record's graph, the ``[n_present, d]`` matrix of
    the node representations ``nodes`` [B, C, d] of its present codes (``x`` [B, C] multi-hot). Over-smoothing
    of a graph layer makes a record's node representations alike: the per-record rank drops towards 1 (the
    singular-value analysis of Zhu & Razavian 2021, here of the encoder's graph-layer node representations)."""
    present = x > 0.5
    if nodes.ndim != 3 or nodes.shape[:2] != x.shape:
        raise ValueError(f"node representations of shape {tuple(nodes.shape)} do not match records {tuple(x.shape)}; "
                         "expected [B, C, d] with [B, C] the records' shape")
    ranks = [effective_rank(nodes[i][present[i]]) for i in range(len(x)) if present[i].sum() >= 2]
    if not ranks:
        raise ValueError("record_effective_rank needs at least one record with 2 or more codes")
    return sum(ranks) / len(ranks)


class _MaskedAttention(nn.Module):
    """One self-attention layer over the codes of a record, keys masked to the present codes."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, out_dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        scores = self.q(h) @ self.k(h).transpose(-1, -2) * self.scale          # [B, C, C]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        att = scores.softmax(-1)
        return att @ self.v(h), att


@FAMILIES.register("ehr_gnn")
class EHRGNN(VIModule):
    """Variationally regularized graph network over EHR codes (P34, module docstring).

    Batches are dicts with ``x`` [B, n_codes] (multi-hot) and ``y`` [B] (0/1); other keys are ignored.

    Args:
        n_codes: number of medical codes ``C``.
        embed_dim: code-embedding width (also the encoder attention width).
        latent_dim: width of the variational node representation ``z_i``.
        hidden_dim: hidden width of the posterior and outcome MLPs.
        kl_weight: weight of ``KL(q(z_i) || N(0, I))`` (0 = the same network without the KL).
        rec_weight: weight of the co-occurrence reconstruction (0 = prediction only).
        mask_attention: mask attention to the record's present codes (the paper's graph over a record).
        lr: learning rate of the default optimizer (this family's default 3e-3).
        **kwargs: the other shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``,
            ``check_finite``).
    """

    def __init__(
        self,
        n_codes: int = 40,
        embed_dim: int = 16,
        latent_dim: int = 16,
        hidden_dim: int = 32,
        kl_weight: float = 1.0,
        rec_weight: float = 1.0,
        mask_attention: bool = True,
        lr: float = 3e-3,
        **kwargs: Any,
    ) -> None:
        check_range("n_codes", n_codes, 2)
        check_range("embed_dim", embed_dim, 1)
        check_range("latent_dim", latent_dim, 1)
        check_range("hidden_dim", hidden_dim, 1)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("rec_weight", rec_weight, 0.0)
        super().__init__(lr=lr, **kwargs)
        self.save_hyperparameters()
        self.n_codes, self.mask_attention = n_codes, mask_attention
        self.embed = nn.Parameter(torch.randn(n_codes, embed_dim) * 0.5)
        self.encoder = _MaskedAttention(embed_dim, embed_dim)
        self.posterior_net = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 2 * latent_dim))
        self.decoder = _MaskedAttention(latent_dim, latent_dim)
        self.link = nn.Linear(embed_dim, latent_dim, bias=False)
        self.head = MLP(latent_dim, [hidden_dim], 1)
        self.term_weights = {"bce": 1.0, "rec": rec_weight, "kl": kl_weight}

    def encoder_nodes(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Node representations after the encoder graph layer, ``h'_i = h_i + sum_j A_ij W_v h_j`` [B, C, embed],
        and the encoder attention (the record's learned graph) [B, C, C]."""
        check_records(x, self.n_codes)
        h = self.embed.expand(len(x), -1, -1)
        msg, att = self.encoder(h, x > 0.5 if self.mask_attention else None)
        return h + msg, att

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior ``q(z_i | record)`` of every code's node: mean, log-variance [B, C, latent] and the encoder
        attention (the record's learned graph) [B, C, C]."""
        nodes, att = self.encoder_nodes(x)
        mu, log_var = self.posterior_net(nodes).chunk(2, -1)
        return mu, log_var, att

    def logits(self, x: Tensor, z: Tensor) -> Tensor:
        """Outcome logit [B] from node representations ``z`` [B, C, latent] (decoder attention + mean pool)."""
        present = x > 0.5
        msg, _ = self.decoder(z, present if self.mask_attention else None)
        w = present.float()[..., None]
        pooled = ((z + msg) * w).sum(1) / w.sum(1)
        return self.head(pooled)[:, 0]

    def objective(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x, y = batch["x"].float(), batch["y"].float()
        mu, log_var, _ = self.encode(x)
        z = mu + (0.5 * log_var).exp() * torch.randn_like(mu) if self.training else mu
        present = x > 0.5
        n_present = present.sum()
        bce = F.binary_cross_entropy_with_logits(self.logits(x, z), y)
        kl = (gaussian_kl(mu, log_var).sum(-1) * present).sum() / n_present
        scores = z @ self.link(self.embed).T                                    # [B, C(i), C(j)]
        target = x[:, None, :].expand_as(scores)
        off_diag = ~torch.eye(self.n_codes, dtype=torch.bool, device=x.device)
        pair = present[:, :, None] & off_diag
        rec = F.binary_cross_entropy_with_logits(scores[pair], target[pair])
        return {"bce": bce, "rec": rec, "kl": kl}

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Outcome probability [B] of each record (posterior means of the node representations)."""
        mu, _, _ = self.encode(x.float())
        return torch.sigmoid(self.logits(x.float(), mu))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch["x"])

    @torch.no_grad()
    def learned_graph(self, x: Tensor) -> Tensor:
        """Learned code graph [C, C]: encoder attention ``A_ij`` averaged over the records holding both ``i`` and
        ``j`` and symmetrised (0 where a pair never co-occurs)."""
        _, _, att = self.encode(x.float())
        both = (x[:, :, None] > 0.5) & (x[:, None, :] > 0.5)
        total = (att * both).sum(0)
        count = both.sum(0).clamp(min=1)
        avg = total / count
        return 0.5 * (avg + avg.T)

    @torch.no_grad()
    def code_representations(self, x: Tensor) -> Tensor:
        """Posterior mean of each code's node representation averaged over the records holding it [C, latent]."""
        mu, _, _ = self.encode(x.float())
        w = (x > 0.5).float()[..., None]
        return (mu * w).sum(0) / w.sum(0).clamp(min=1)

    @torch.no_grad()
    def similarity_graph(self, x: Tensor) -> Tensor:
        """Learned code graph [C, C] from the node representations: cosine similarity of
        :meth:`code_representations` (the graph the variational node posteriors encode)."""
        rep = F.normalize(self.code_representations(x), dim=1)
        return rep @ rep.T
