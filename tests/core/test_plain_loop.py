"""fit_objective equals the hand-written Adam loop over the weighted objective, step for step."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.families.vae import VAE


def test_fit_objective_matches_a_hand_written_loop() -> None:
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    a = VAE(input_shape=[1, 8, 8], latent_dim=2, hidden_dims=[16])
    b = VAE(input_shape=[1, 8, 8], latent_dim=2, hidden_dims=[16])
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    fit_objective(a, {"x": x}, 5, 1e-2)
    torch.manual_seed(1)
    opt = torch.optim.Adam(b.parameters(), 1e-2)
    b.train()
    for _ in range(5):
        terms = b.objective({"x": x})
        loss = sum(w * terms[k] for k, w in b.term_weights.items() if k in terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not a.training
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), n
    seen = []
    fit_objective(a, lambda step: seen.append(step) or {"x": x}, 3)
    assert seen == [0, 1, 2]
    with pytest.raises(ValueError, match="steps=-1"):
        fit_objective(a, {"x": x}, -1)
