"""P09 reproduction: a VAE with a latent wider than the sprites' 5 factors has passive variables, which
correlate strongly with other dims in mean representations and hardly in sampled ones.

    PYTHONPATH=. python experiments/p09_passive.py > experiments/results/p09_passive.md
"""

from __future__ import annotations

import lightning as L
import torch

from lightning_vi.data.sprites import render_sprites, sample_factors
from lightning_vi.families.vae import VAE
from lightning_vi.metrics.latent import LatentStatistics, passive_correlation, passive_pair_correlation


def main() -> None:
    torch.set_num_threads(1)
    x = render_sprites(sample_factors(500, torch.Generator().manual_seed(0)), 32)
    held_out = render_sprites(sample_factors(4000, torch.Generator().manual_seed(1)), 32)
    print("| beta | latent | active units | passive | max-|corr| of passive dims: mean reps | sampled reps "
          "| mean |corr| of passive pairs: mean reps | sampled reps |")
    print("|---|---|---|---|---|---|---|---|")
    for beta in (1.0, 4.0, 16.0):
        L.seed_everything(0)
        m = VAE(input_shape=[1, 32, 32], latent_dim=10, hidden_dims=[128], likelihood="bernoulli", beta=beta)
        opt = torch.optim.Adam(m.parameters(), lr=5e-3)
        for _ in range(600):
            loss, _ = m.compute_loss({"x": x}, "train")
            opt.zero_grad()
            loss.backward()
            opt.step()
        m.eval()
        with torch.no_grad():
            mu, lv = m.encode(held_out)
        metric = LatentStatistics(10)
        metric.update(mu, lv)
        s = metric.compute()
        pm, ps = passive_correlation(s)
        qm, qs = passive_pair_correlation(s)
        print(f"| {beta} | 10 | {int(s['active_units'])} | {10 - int(s['active_units'])} | {pm:.3f} | {ps:.3f} "
              f"| {qm:.3f} | {qs:.3f} |")


if __name__ == "__main__":
    main()
