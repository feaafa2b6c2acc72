"""P01 reproduction: collapsed latent dims of linear CVAE / VAE vs the linear analysis; HVAE second level
with learnable vs fixed encoder variance.

    PYTHONPATH=. python experiments/p01_collapse.py > experiments/results/p01_collapse.md
"""

from __future__ import annotations

import lightning as L
import torch

from lightning_vi.families.vae.cvae import CVAE, linear_cvae_collapse_prediction
from lightning_vi.families.vae.hvae import HVAE
from lightning_vi.families.vae.vae import VAE

N, D, SIGMA = 2000, 8, 0.5


def data():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(D, D, generator=g)).Q
    c, z = torch.randn(N, 3, generator=g), torch.randn(N, 3, generator=g)
    x = (z * torch.tensor([2.0, 1.0, 0.2])) @ q[:, :3].T + (1.5 * c[:, :2]) @ q[:, 3:5].T
    return x + SIGMA * torch.randn(N, D, generator=g), c


def fit(model, batch, steps=400):
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        loss, _ = model.compute_loss(batch, "train")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model.objective(batch)


def main() -> None:
    torch.set_num_threads(1)
    x, c = data()
    print("## Linear CVAE / VAE: collapsed dims (KL < 0.02 nats) vs prediction (eigenvalues <= beta sigma^2)\n")
    print("| model | beta | predicted | measured | KL per dim |\n|---|---|---|---|---|")
    for beta in (0.5, 2.0, 6.0):
        L.seed_everything(0)
        m = CVAE(input_shape=[D], latent_dim=4, condition="vector", condition_dim=3, condition_key="c",
                 architecture="linear", likelihood="gaussian", obs_std=SIGMA, beta=beta)
        kl = fit(m, {"x": x, "c": c})["kl_per_dim"]
        print(f"| linear CVAE | {beta} | {linear_cvae_collapse_prediction(x, c, 4, beta, SIGMA)} | "
              f"{int((kl < 0.02).sum())} | {[round(v, 3) for v in kl.tolist()]} |")
        L.seed_everything(0)
        m = VAE(input_shape=[D], latent_dim=4, architecture="linear", obs_std=SIGMA, beta=beta)
        kl = fit(m, {"x": x})["kl_per_dim"]
        print(f"| linear VAE | {beta} | {linear_cvae_collapse_prediction(x, None, 4, beta, SIGMA)} | "
              f"{int((kl < 0.02).sum())} | {[round(v, 3) for v in kl.tolist()]} |")
    print("\n## Linear HVAE (latent dims [4, 2], beta [1, 1.5]): variance of E[z2|x] per dim\n")
    print("| encoder variance | Var E[z2] |\n|---|---|")
    for ev in ("learnable", "fixed"):
        L.seed_everything(0)
        m = HVAE(input_shape=[D], latent_dims=[4, 2], architecture="linear", encoder_variance=ev,
                 encoder_std=0.3, obs_std=SIGMA, beta=[1.0, 1.5])
        fit(m, {"x": x})
        with torch.no_grad():
            print(f"| {ev} | {[round(v, 3) for v in m.encode(x)[0][:, 4:].var(0).tolist()]} |")


if __name__ == "__main__":
    main()
