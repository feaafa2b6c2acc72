"""Contrastive variational information bottleneck (CVIB; Chang et al., "Reducing Spurious
Correlations for Aspect-Based Sentiment Analysis with Variational Information Bottleneck and
Contrastive Learning", Sec. 3).

Two networks: the *original* MLP encoder and a *self-pruned* one whose input and hidden units are
multiplied by VIB masks ``z_l ~ N(mu_l, sigma_l^2)`` (Dai et al. 2018, "Compressing
Neural Networks using the Variational Information Bottleneck", Eq. 9-10), with the compression term
``sum_units log(1 + mu^2 / sigma^2)``. By default the two networks have separate weights (same
initialisation) and heads, as in the two optimised networks of the paper; ``shared_weights=True`` makes the
pruned network a masked view of the original one. The representations of an example in the two networks
form a positive pair and other examples in the batch are negatives (InfoNCE on cosine similarity with
temperature ``tau``, Sec. 3.3); each network is pulled towards the other's *detached* representation, so
``contrastive = nce(h_pruned, sg(h_orig)) + nce(sg(h_pruned), h_orig)``. Loss::

    ce_pruned + ce_original + kl_weight * compression / num_units + gamma * contrastive

Prediction uses the pruned network with mask means, units with ``log(mu^2/sigma^2) < prune_threshold``
set to zero (the self-pruned network).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.metrics_mixin import PredictiveMetricsMixin
from lightning_vi.core.module import VIModule
from lightning_vi.registry import FAMILIES


class VIBMask(nn.Module):
    """Multiplicative Gaussian unit mask ``z ~ N(mu, sigma^2)`` with the VIBNet compression KL."""

    def __init__(self, dim: int, init_log_sigma2: float = -9.0) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.ones(dim))
        self.log_sigma2 = nn.Parameter(torch.full((dim,), init_log_sigma2))

    def log_alpha(self) -> Tensor:
        """``log(mu^2 / sigma^2)``: a unit's signal-to-noise ratio; small means prunable."""
        return torch.log(self.mu.pow(2) + 1e-8) - self.log_sigma2

    def kl(self) -> Tensor:
        return torch.log1p(self.log_alpha().exp()).sum()

    def forward(self, h: Tensor, sample: bool, threshold: float) -> Tensor:
        if sample:
            z = self.mu + torch.randn_like(h) * (0.5 * self.log_sigma2).exp()
        else:
            z = self.mu * (self.log_alpha() > threshold).to(h)
        return h * z


@FAMILIES.register("cvib")
class CVIB(PredictiveMetricsMixin, VIModule):
    """CVIB classifier: self-pruned VIB network + contrastive loss against the original network.

    Args:
        input_shape: shape of one example.
        num_classes: number of labels.
        hidden_dims: widths of the MLP encoder (its last width is the representation).
        kl_weight: weight of the per-unit compression KL (>= 0; the paper's beta, divided by the number of units).
        gamma: weight of the contrastive loss (>= 0).
        tau: InfoNCE temperature (> 0).
        prune_threshold: ``log alpha`` below which a unit is pruned.
        prune_input: also mask (and so prune) input features, not only hidden units.
        shared_weights: the pruned network reuses the original network's layers and head (False: copies).
        beta: deprecated name of ``kl_weight``.
        **kwargs: the shared ``VIModule`` arguments (``plugins``, ``optimizer``, ``lr_scheduler``, ``lr``,
            ``check_finite``).
    """

    def __init__(
        self,
        input_shape: list[int] = (1, 8, 8),
        num_classes: int = 10,
        hidden_dims: list[int] = (128, 64),
        kl_weight: float = 1e-2,
        gamma: float = 0.5,
        tau: float = 0.5,
        prune_threshold: float = 0.0,
        prune_input: bool = True,
        shared_weights: bool = False,
        beta: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        kl_weight = self.rename_argument("beta", beta, "kl_weight", kl_weight, 1e-2)
        check_range("kl_weight", kl_weight, 0.0)
        check_range("gamma", gamma, 0.0)
        check_range("tau", tau, 0.0, low_open=True)
        self.save_hyperparameters()
        self.input_shape = tuple(int(s) for s in input_shape)
        dims = [math.prod(self.input_shape), *hidden_dims]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.prune_input = prune_input
        mask_dims = dims if prune_input else dims[1:]
        self.masks = nn.ModuleList(VIBMask(d) for d in mask_dims)  # (input units), then each hidden layer
        self.head = nn.Linear(dims[-1], num_classes)
        self.shared_weights = shared_weights
        # the original network: the same modules, or an identically initialised copy
        self.orig_layers = self.layers if shared_weights else copy.deepcopy(self.layers)
        self.orig_head = self.head if shared_weights else copy.deepcopy(self.head)
        self.kl_weight, self.gamma, self.tau, self.prune_threshold = kl_weight, gamma, tau, prune_threshold
        self.num_units = sum(mask_dims)
        self.term_weights = {"ce": 1.0, "ce_original": 1.0, "compression": kl_weight / self.num_units,
                             "contrastive": gamma}
        self.build_metrics()

    def represent(self, x: Tensor, pruned: bool, sample: bool = True) -> Tensor:
        h = x.flatten(1)
        off = 0 if self.prune_input else 1
        for i, layer in enumerate(self.layers if pruned else self.orig_layers):
            if pruned and i - off >= 0:
                h = self.masks[i - off](h, sample, self.prune_threshold)
            h = F.relu(layer(h))
        if pruned:
            h = self.masks[-1](h, sample, self.prune_threshold)
        return h

    def compression(self) -> Tensor:
        return torch.stack([m.kl() for m in self.masks]).sum()

    def density(self) -> Tensor:
        """Fraction of units kept by the self-pruned network."""
        kept = sum(int((m.log_alpha() > self.prune_threshold).sum()) for m in self.masks)
        return torch.tensor(kept / self.num_units, device=self.masks[0].log_alpha().device)

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        return self.head(self.represent(x, pruned=True, sample=False)).softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        return self.predict_proba(x)

    def nce(self, h_pruned: Tensor, h_orig: Tensor) -> Tensor:
        """InfoNCE: pruned_i anchors, original_i its positive, original_j (j != i) negatives."""
        logits = F.normalize(h_pruned, dim=-1) @ F.normalize(h_orig, dim=-1).T / self.tau
        return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))

    def contrastive(self, h_orig: Tensor, h_pruned: Tensor) -> Tensor:
        """Each network's InfoNCE against the other's detached representation (summed)."""
        return self.nce(h_pruned, h_orig.detach()) + self.nce(h_pruned.detach(), h_orig)

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x, y = batch["x"], batch["y"]
        h_o = self.represent(x, pruned=False)
        h_p = self.represent(x, pruned=True, sample=self.training)
        logits_p = self.head(h_p)
        return {
            "ce": F.cross_entropy(logits_p, y),
            "ce_original": F.cross_entropy(self.orig_head(h_o), y),
            "compression": self.compression(),
            "contrastive": self.contrastive(h_o, h_p),
            "acc": (logits_p.argmax(-1) == y).float().mean(),
            "density": self.density(),
            "z": h_p, "logits": logits_p,
        }
