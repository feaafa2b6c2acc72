"""Tiny families used by the plugin oracle tests (any VIModule with the named layer works)."""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor, nn

from lightning_vi.core.module import VIModule
from lightning_vi.plugins.base import Plugin


class LinearAE(VIModule):
    """Linear autoencoder ``x -> decoder(encoder(x))`` with squared error (Rippel et al.'s setting)."""

    def __init__(self, dim: int = 8, code: int = 4, plugins: list[Union[Plugin, str, dict]] | None = None,
                 lr: float = 1e-2) -> None:
        super().__init__(plugins=plugins, lr=lr)
        self.save_hyperparameters()
        self.encoder = nn.Linear(dim, code, bias=False)
        self.decoder = nn.Linear(code, dim, bias=False)
        self.term_weights = {"mse": 1.0}

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        x = batch["x"]
        return {"mse": (self.decoder(self.encoder(x)) - x).pow(2).sum(-1).mean()}


class LinearRegressor(VIModule):
    """``y = W x`` with squared error (Maestro's linear-map setting)."""

    def __init__(self, d_in: int = 6, d_out: int = 5, plugins: list[Union[Plugin, str, dict]] | None = None,
                 lr: float = 1e-2) -> None:
        super().__init__(plugins=plugins, lr=lr)
        self.save_hyperparameters()
        self.map = nn.Linear(d_in, d_out, bias=False)
        self.term_weights = {"mse": 1.0}

    def objective(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return {"mse": (self.map(batch["x"]) - batch["y"]).pow(2).sum(-1).mean()}


def fit_full_batch(module: VIModule, batch: dict[str, Tensor], steps: int, lr: float) -> float:
    """Plain Adam loop over ``module.compute_loss`` (plugins' transforms/terms included)."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = module.compute_loss(batch, "train")
        loss.backward()
        opt.step()
    return loss.item()


import pytest  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny models run fastest single-threaded on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
