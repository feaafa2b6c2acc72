"""Sparse subspace variational inference (SSVI; Li, Zhang, Li & Wang 2024, "Training Bayesian Neural
Networks with Sparse Subspace Variational Inference", Alg. 1).

The mean-field posterior lives on a sparse subspace: each Bayesian layer keeps exactly
``round(density * numel)`` active weights (a 0/1 mask; inactive weights are exactly zero and carry no KL),
from random initialisation to the end of training. Every ``update_every`` optimisation steps the basis
is updated by *removal and addition* (Sec. 4.2): the ``swap_fraction`` of active weights with the lowest
score are removed (``removal="snr"``: ``|mu| / sigma``, the weight-distribution criterion of Eq. 8;
``"mu"``: ``|mu|``) and the same number of inactive weights are added (uniformly at random, with
``mu = 0`` and the initial ``sigma``), so the density never changes. Objective and the other arguments as in ``bnn``;
``density`` is logged at every step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.families.bayes.bnn import BNN
from lightning_vi.families.bayes.layers import _inv_softplus, bayes_layers
from lightning_vi.registry import FAMILIES


@FAMILIES.register("ssvi")
class SSVI(BNN):
    """Sparse BNN kept at ``density`` throughout training.

    Args:
        density: fraction of weights in the subspace, in (0, 1].
        update_every: optimisation steps between basis updates.
        swap_fraction: fraction of active weights replaced per update, in [0, 1).
        removal: score of the removed weights, ``"snr"`` (``|mu| / sigma``) or ``"mu"`` (``|mu|``).
        **kwargs: the arguments of ``bnn`` (:class:`BNN`: ``input_shape``, ``num_classes``, ``architecture``,
            ``hidden_dims``, ``channels``, ``prior_std``, ``init_std``, ``num_samples``, ``num_eval_samples``,
            ``kl_weight``, ``dataset_size``) and the shared ``VIModule`` arguments (``plugins``, ``optimizer``,
            ``lr_scheduler``, ``lr``, ``check_finite``).
    """

    def __init__(
        self,
        density: float = 0.2,
        update_every: int = 20,
        swap_fraction: float = 0.1,
        removal: str = "snr",
        **kwargs: Any,
    ) -> None:
        check_range("density", density, 0.0, 1.0, low_open=True)
        check_range("update_every", update_every, 1)
        check_range("swap_fraction", swap_fraction, 0.0, 1.0, high_open=True)
        check_choice("removal", removal, ("snr", "mu"))
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.density_target, self.update_every, self.swap_fraction, self.removal = density, update_every, \
            swap_fraction, removal
        self._init_rho = _inv_softplus(self.init_std)
        self.register_buffer("_steps", torch.zeros((), dtype=torch.long))
        for layer in bayes_layers(self.net):
            n = layer.weight_mu.numel()
            k = max(1, int(round(density * n)))
            mask = torch.zeros(n)
            mask[torch.randperm(n)[:k]] = 1
            layer.set_mask(mask.view_as(layer.weight_mu))

    def density(self) -> Tensor:
        """Fraction of active weights over all Bayesian layers (biases excluded)."""
        layers = bayes_layers(self.net)
        return torch.tensor(sum(l.num_active() for l in layers) / sum(l.weight_mu.numel() for l in layers),
                            device=layers[0].weight_mu.device)

    @torch.no_grad()
    def update_subspace(self) -> int:
        """One removal-and-addition step (Alg. 1, lines 5-8); returns how many weights were swapped."""
        swapped = 0
        for layer in bayes_layers(self.net):
            mask = layer.weight_mask.flatten()
            active = mask.nonzero().squeeze(1)
            inactive = (mask == 0).nonzero().squeeze(1)
            n = min(int(math.floor(self.swap_fraction * len(active))), len(inactive))
            if n == 0:
                continue
            mu, std = layer.weight_mu.flatten(), layer.weight_std.flatten()
            score = mu.abs() / std if self.removal == "snr" else mu.abs()
            remove = active[score[active].argsort()[:n]]
            add = inactive[torch.randperm(len(inactive), device=mask.device)[:n]]
            new = mask.clone()
            new[remove], new[add] = 0, 1
            layer.weight_mu.view(-1)[add] = 0.0
            layer.weight_rho.view(-1)[add] = self._init_rho
            layer.set_mask(new.view_as(layer.weight_mu))
            swapped += n
        return swapped

    def step_done(self) -> None:
        """Count an optimisation step and update the basis every ``update_every`` steps (plain loops call this)."""
        self._steps += 1
        if int(self._steps) % self.update_every == 0:
            self.update_subspace()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.step_done()
        super().on_train_batch_end(outputs, batch, batch_idx)

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {**super().objective(batch), "density": self.density()}
