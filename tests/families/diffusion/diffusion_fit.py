"""Full-batch plain-PyTorch training over a family's objective (oracle tests)."""

import torch


def fit_full_batch(model, batch, steps, lr=2e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr)
    model.train()
    for _ in range(steps):
        terms = model.objective(batch)
        loss = sum(terms[k] * w for k, w in model.term_weights.items() if k in terms)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(model, "update_ema"):
            model.update_ema()
    return model.eval()
