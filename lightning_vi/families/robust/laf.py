"""Label-Agnostic Forgetting (LAF; Shen et al. 2024, "Label-Agnostic Forgetting: A Supervision-Free Unlearning in
Deep Models"): remove a forget set's knowledge from a classifier ``head(extractor(x))`` without using labels.

Steps (paper Sec. 3):
  1. representation VAEs: fit a remain-VAE and a forget-VAE on the frozen original embeddings ``f0(x)``;
  2. extractor unlearning: update ``f`` to minimise the ELBO difference on forget data,
     ``-ELBO_r(f(x_f)) + ELBO_f(f(x_f))`` (forget embeddings move to where the remain-VAE, not the forget-VAE, puts
     mass; the forget term is clipped at ``forget_cap`` nats/dim so it cannot diverge), plus ``-ELBO_r(f(x_r))`` to keep
     remain embeddings in the remain-VAE's support;
  3. representation alignment: InfoNCE between ``f(x_r)`` and ``f0(x_r)`` (positives: the same example, negatives: the
     rest of the batch and the current forget embeddings), restoring remain knowledge for the frozen head; steps 2 and
     3 alternate each epoch and the forget term stays on during alignment (without it alignment restores the class);
  4. optional semi-supervised mode: a few labelled remain examples add cross-entropy on the head during alignment.

``membership_inference_auc`` is the loss-threshold attack (Yeom et al. 2018): AUC of ``-CE`` separating training
members from held-out non-members (0.5 = indistinguishable).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RepresentationVAE", "label_agnostic_forget", "membership_inference_auc"]


class RepresentationVAE(nn.Module):
    """Small Gaussian VAE on embedding vectors; ``nelbo(z)`` is the per-example negative ELBO per dimension
    (unit-variance Gaussian decoder, constants dropped)."""

    def __init__(self, dim: int, latent: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def nelbo(self, z: Tensor) -> Tensor:
        mu, logvar = self.enc(z).chunk(2, -1)
        h = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = 0.5 * (self.dec(h) - z).pow(2).sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        return (rec + kl) / z.shape[-1]


def _as_tensor(data, name: str) -> Tensor:
    if isinstance(data, Tensor):
        x = data
    else:  # a DataLoader / iterable of tensors, (x, y) tuples or {"x": ...} dicts; labels are ignored
        parts = []
        for b in data:
            parts.append(b["x"] if isinstance(b, dict) else b[0] if isinstance(b, (tuple, list)) else b)
        x = torch.cat(parts) if parts else torch.empty(0)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 examples); give at least one example")
    return x


@torch.no_grad()
def _embed(f: nn.Module, x: Tensor, bs: int = 512) -> Tensor:
    return torch.cat([f(x[i:i + bs]) for i in range(0, len(x), bs)])


def _fit_vae(z: Tensor, epochs: int, gen: torch.Generator, lr: float = 1e-3, bs: int = 128) -> RepresentationVAE:
    vae = RepresentationVAE(z.shape[-1])
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=gen).split(bs):
            opt.zero_grad()
            vae.nelbo(z[idx]).mean().backward()
            opt.step()
    vae.requires_grad_(False).eval()
    return vae


def _info_nce(a: Tensor, b: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """InfoNCE of ``a[i]`` against positive ``b[i]``; negatives: the other ``b`` and all of ``neg``."""
    a, b, neg = F.normalize(a, dim=-1), F.normalize(b, dim=-1), F.normalize(neg, dim=-1)
    logits = a @ torch.cat([b, neg]).T / temperature
    return F.cross_entropy(logits, torch.arange(len(a)))


def label_agnostic_forget(model: nn.Module, forget, remain, epochs: int = 25, vae_epochs: int = 50,
                          lr: float = 1e-3, forget_cap: float = 1.0,
                          temperature: float = 0.1, batch_size: int = 128,
                          semi_supervised_labels: tuple[Tensor, Tensor] | None = None, semi_weight: float = 1.0,
                          seed: int = 0, extractor: str = "extractor", head: str = "head") -> nn.Module:
    """Unlearn ``forget`` from ``model`` (with submodules ``model.<extractor>`` and ``model.<head>``) using unlabelled
    ``forget`` and ``remain`` data (tensors or loaders); returns an unlearned deep copy (the head stays frozen).

    ``semi_supervised_labels = (x_l, y_l)``: a few labelled remain examples for CE on the head during alignment.
    Raises ``ValueError`` for an empty forget/remain set or a forget set equal to the whole data (remain empty).
    """
    xf = _as_tensor(forget, "forget set")
    xr = remain if isinstance(remain, Tensor) else torch.empty(0) if remain is None else _as_tensor(remain, "remain set")
    if xr.shape[0] == 0:
        raise ValueError("remain set is empty (0 examples): the forget set equals all the data; LAF needs remaining "
                         "examples")
    if epochs < 0:
        raise ValueError(f"epochs={epochs!r} is out of range; allowed: [0, inf)")
    for attr in (extractor, head):
        if not isinstance(getattr(model, attr, None), nn.Module):
            raise ValueError(f"model has no submodule {attr!r}; give the extractor/head attribute names")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    new = copy.deepcopy(model).train()
    f0 = copy.deepcopy(getattr(model, extractor)).eval().requires_grad_(False)
    f, h = getattr(new, extractor), getattr(new, head)
    h.requires_grad_(False)
    zf0, zr0 = _embed(f0, xf), _embed(f0, xr)
    vae_r, vae_f = _fit_vae(zr0, vae_epochs, gen), _fit_vae(zf0, vae_epochs * max(1, len(zr0) // len(zf0)), gen)
    opt = torch.optim.Adam(f.parameters(), lr=lr)
    n_batches = max(1, -(-len(xf) // batch_size))
    for _ in range(epochs):  # Algorithm 1: alternate extractor unlearning and representation alignment per epoch
        pf = torch.randperm(len(xf), generator=gen).split(batch_size)
        pr = torch.randint(len(xr), (n_batches, batch_size), generator=gen)
        for i_f, i_r in zip(pf, pr):  # step 2: ELBO difference on forget; remain kept in the remain-VAE's support
            zf, zr = f(xf[i_f]), f(xr[i_r])
            loss = (vae_r.nelbo(zf).mean() - vae_f.nelbo(zf).clamp(max=forget_cap).mean()
                    + vae_r.nelbo(zr).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        for i_r in torch.randperm(len(xr), generator=gen).split(batch_size):  # step 3 (+4): alignment
            i_f = torch.randint(len(xf), (min(len(xf), batch_size),), generator=gen)
            zf = f(xf[i_f])  # the forget term stays on so alignment does not restore the forget class
            loss = (_info_nce(f(xr[i_r]), zr0[i_r], zf, temperature)
                    + vae_r.nelbo(zf).mean() - vae_f.nelbo(zf).clamp(max=forget_cap).mean())
            if semi_supervised_labels is not None:
                xl, yl = semi_supervised_labels
                loss = loss + semi_weight * F.cross_entropy(h(f(xl)), yl)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return new.eval()


@torch.no_grad()
def membership_inference_auc(model: nn.Module, x_members: Tensor, y_members: Tensor, x_nonmembers: Tensor,
                             y_nonmembers: Tensor) -> float:
    """Loss-threshold membership inference: ROC AUC of the score ``-CE(model(x), y)`` with members labelled 1."""
    from sklearn.metrics import roc_auc_score

    if len(x_members) == 0 or len(x_nonmembers) == 0:
        raise ValueError(f"need members and non-members; got {len(x_members)} and {len(x_nonmembers)}")
    model.eval()
    s = torch.cat([-F.cross_entropy(model(x_members), y_members, reduction="none"),
                   -F.cross_entropy(model(x_nonmembers), y_nonmembers, reduction="none")])
    t = torch.cat([torch.ones(len(x_members)), torch.zeros(len(x_nonmembers))])
    return float(roc_auc_score(t.numpy(), s.numpy()))
