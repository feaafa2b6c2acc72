"""Source of notebooks/diffusion_family.ipynb (regenerate: python notebooks/src/build.py diffusion_family)."""

CELLS = [
    ("markdown", """
# Diffusion family
Schedules, DDIM vs DDPM sampling and flow matching on a 2D toy (tiny, CPU).
"""),
    ("code", """
import torch, lightning as L
torch.set_num_threads(1)
from lightning_vi.families.diffusion import DDPM, FlowMatching, NoiseSchedule
from lightning_vi.data.toys import sample_toy
from lightning_vi.metrics.sample_distances import sinkhorn_distance
for name in ["linear", "scaled_linear", "squaredcos_cap_v2"]:
    s = NoiseSchedule(1000, name, 0.00085 if name == "scaled_linear" else 1e-4, 0.012 if name == "scaled_linear" else 0.02)
    print(name, "abar[T/2] =", round(float(s.alphas_cumprod[500]), 4), "abar[T-1] =", float(s.alphas_cumprod[-1]))
"""),
    ("markdown", """
Both models train in a plain PyTorch loop without an EMA copy of the network (with a Trainer, add one with `plugins=[{"ema": {"decay": 0.999}}]`, see `lightning_vi/plugins/ema.py`).
"""),
    ("code", """
L.seed_everything(0)
data = sample_toy("moons", 512, torch.Generator().manual_seed(0))
def fit(m, steps=300):
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    for _ in range(steps):
        t = m.objective({"x": data}); loss = sum(t[k] * w for k, w in m.term_weights.items() if k in t)
        opt.zero_grad(); loss.backward(); opt.step()
    return m.eval()
ddpm, fm = fit(DDPM(hidden=64)), fit(FlowMatching(hidden=64))
for label, s in [("DDIM-50", ddpm.sample(512, sampler="ddim", steps=50)), ("FM Euler-50", fm.sample(512, steps=50)),
                 ("noise", torch.randn(512, 2))]:
    print(label, "Sinkhorn to data:", round(float(sinkhorn_distance(s, data)), 3))
"""),
    ("code", """
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(1, 2, figsize=(6, 3))
ax[0].scatter(*data.T, s=2); ax[0].set_title("data")
ax[1].scatter(*fm.sample(512).T, s=2); ax[1].set_title("flow matching")
"""),
]
