"""Full-batch plain-PyTorch training over a family's objective (oracle tests)."""

from lightning_vi.core.plain_loop import fit_objective


def fit_full_batch(model, batch, steps, lr=2e-3):
    return fit_objective(model, batch, steps, lr)
