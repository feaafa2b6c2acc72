"""Recurrent VAE over token sequences, as the task-manifold model of CLUTR (Azad et al. 2023, ICLR),
after Bowman et al. (2016, "Generating Sentences from a Continuous Space").

GRU encoder over token embeddings -> ``q(z | x) = N(mu, diag sigma^2)``; GRU decoder initialised from ``z``
(and fed ``z`` at every step) predicts token ``x_i`` from ``x_{<i}`` (teacher forcing). Loss: token cross
entropy (masked) ``+ kl_weight KL(q || N(0, I))`` (CLUTR Sec. 3.1). ``interpolate`` decodes points on the
segment between two posterior means greedily (the latent task manifold).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.distributions import gaussian_kl_per_dim
from lightning_vi.core.module import VIModule
from lightning_vi.families.sequence._common import sequence_batch
from lightning_vi.registry import FAMILIES


@FAMILIES.register("rvae")
class RecurrentVAE(VIModule):
    """Recurrent VAE for token sequences ``x`` [B, L] (long ids in ``[0, vocab_size)``).

    Args:
        vocab_size: number of tokens.
        latent_dim: size of ``z``.
        embed_dim: token embedding width.
        hidden: GRU width.
        kl_weight: weight of ``KL(q(z|x) || N(0, I))``.
        word_dropout: probability of replacing a decoder input token by the start token (Bowman et al. 2016),
            which forces the decoder to use ``z``.
        beta: deprecated name of ``kl_weight``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        vocab_size: int = 16,
        latent_dim: int = 16,
        embed_dim: int = 32,
        hidden: int = 64,
        kl_weight: float = 0.1,
        word_dropout: float = 0.0,
        beta: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, 0.1)
        check_range("vocab_size", vocab_size, 2)
        check_range("latent_dim", latent_dim, 1)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("word_dropout", word_dropout, 0.0, 1.0)
        self.save_hyperparameters()
        self.vocab_size, self.latent_dim = vocab_size, latent_dim
        self.bos = vocab_size  # start token id
        self.embed = nn.Embedding(vocab_size + 1, embed_dim)
        self.encoder = nn.GRU(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.enc_head = nn.Linear(2 * hidden, 2 * latent_dim)
        self.z_to_h = nn.Linear(latent_dim, hidden)
        self.decoder = nn.GRU(embed_dim + latent_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)
        self.term_weights = {"recon": 1.0, "kl": kl_weight}

    def _tokens(self, batch: Any) -> tuple[Tensor, Tensor]:
        x, _, mask = sequence_batch(batch)
        if x.dtype not in (torch.long, torch.int, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"rvae needs integer token ids in batch['x']; got dtype {x.dtype}")
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={self.vocab_size}); got range [{lo}, {hi}]")
        return x.long(), mask

    def encode(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mask = torch.ones_like(x, dtype=torch.float32) if mask is None else mask
        h = self.encoder(self.embed(x))[0]
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        mu, log_var = self.enc_head(pooled).chunk(2, -1)
        return mu, log_var.clamp(-12, 8)

    def decode_logits(self, z: Tensor, x: Tensor) -> Tensor:
        """Teacher-forced logits [B, L, V] for targets ``x``."""
        inp = torch.cat([torch.full_like(x[:, :1], self.bos), x[:, :-1]], 1)
        if self.training and self.hparams.word_dropout > 0:
            drop = torch.rand(inp.shape, device=inp.device) < self.hparams.word_dropout
            inp = torch.where(drop, torch.full_like(inp, self.bos), inp)
        emb = torch.cat([self.embed(inp), z[:, None].expand(-1, x.shape[1], -1)], -1)
        h0 = torch.tanh(self.z_to_h(z))[None]
        return self.out(self.decoder(emb, h0)[0])

    @torch.no_grad()
    def generate(self, z: Tensor, length: int) -> Tensor:
        """Greedy decoding of ``length`` tokens from ``z`` [B, d] -> [B, length]."""
        h = torch.tanh(self.z_to_h(z))[None]
        tok = torch.full((z.shape[0], 1), self.bos, dtype=torch.long, device=z.device)
        out = []
        for _ in range(length):  # autoregressive over positions, batched
            o, h = self.decoder(torch.cat([self.embed(tok), z[:, None]], -1), h)
            tok = self.out(o).argmax(-1)
            out.append(tok)
        return torch.cat(out, 1)

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, mask = self._tokens(batch)
        mu, log_var = self.encode(x, mask)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        logits = self.decode_logits(z, x)
        nll = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
        recon = (nll * mask).sum(1).mean()
        kl = gaussian_kl_per_dim(mu, log_var).sum(-1).mean()
        acc = ((logits.argmax(-1) == x).float() * mask).sum() / mask.sum().clamp_min(1)
        return {"recon": recon, "kl": kl, "elbo": -(recon + kl), "acc": acc, "z": z}

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Greedy reconstruction from the posterior mean."""
        return self.generate(self.encode(x)[0], x.shape[1])

    @torch.no_grad()
    def interpolate(self, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
        """Decode ``steps`` points on the segment between the posterior means of ``x_a`` and ``x_b`` [B, L]:
        returns [steps, B, L]."""
        za, zb = self.encode(x_a)[0], self.encode(x_b)[0]
        alpha = torch.linspace(0, 1, steps, device=za.device)[:, None, None]
        z = (1 - alpha) * za + alpha * zb
        return self.generate(z.flatten(0, 1), x_a.shape[1]).view(steps, *x_a.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    @torch.no_grad()
    def sample(self, n: int, length: int = 5, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.generate(z, length)
