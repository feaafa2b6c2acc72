"""Source of notebooks/distillation_one_step.ipynb (regenerate: python notebooks/src/build.py distillation_one_step)."""

CELLS = [
    ("markdown", """
# One-step students: f-distill and SNOOPI
A one-step generator `G(z)` distilled from the exact 8-Gaussian-ring teacher by distribution matching
(`lightning_vi/families/distillation/one_step.py`, docs/distillation_one_step.md). At low noise levels
(`t_max=0.05`) the reverse-KL (DMD/VSD) student is mode-seeking; the JS weighting `h(r) = r / (1 + r)`
of a discriminator's density ratio keeps more modes. Tiny and CPU-only (short runs).
"""),
    ("code", """
import math, torch
torch.set_num_threads(1)
from lightning_vi.families.distillation.one_step import FDistill, SNOOPI
centres = 2.0 * torch.stack([torch.cos(2 * math.pi * torch.arange(8) / 8), torch.sin(2 * math.pi * torch.arange(8) / 8)], 1)
def covered(x):
    d = torch.cdist(x, centres).min(1)
    share = torch.bincount(d.indices[d.values < 0.5], minlength=8).float() / len(x)
    return int((share >= 0.05).sum())
kw = dict(hidden=128, fake_hidden=64, disc_hidden=64, depth=2, fake_depth=2, lr=1.5e-3, fake_lr=3e-3,
          fake_updates=2, t_max=0.05, max_log_ratio=2.0)
students = {}
for w in ["reverse_kl", "js"]:
    torch.manual_seed(0)
    students[w] = FDistill(teacher="ring", weighting=w, **kw)
    students[w].fit_steps(200, 128, seed=0)
    print(w, "modes covered:", covered(students[w].sample(2000, torch.Generator().manual_seed(1))))
"""),
    ("code", """
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(1, 3, figsize=(9, 3))
ax[0].scatter(*students["reverse_kl"].teacher.sample(2000).T, s=1); ax[0].set_title("teacher (exact)")
for a, w in zip(ax[1:], students):
    a.scatter(*students[w].sample(2000).T, s=1); a.set_title(w)
"""),
    ("markdown", """
SNOOPI: a class-conditional student (class k = mode k); the guidance scale of teacher and fake score is
drawn from `guidance_range` each step (`[s, s]` = a fixed scale).
"""),
    ("code", """
torch.manual_seed(0)
snoopi = SNOOPI(teacher="ring", guidance_range=[1.0, 4.0], hidden=128, fake_hidden=64, depth=2, fake_depth=2,
                lr=3e-3, fake_lr=3e-3, fake_updates=2, t_max=0.25)
hist = snoopi.fit_steps(150, 128, seed=0)
y = torch.arange(800) % 8
x = snoopi.sample(800, torch.Generator().manual_seed(2), y=y)
print("scales drawn in [%.2f, %.2f]" % (min(h["guidance_scale"] for h in hist), max(h["guidance_scale"] for h in hist)))
print("mean distance to the requested mode:", round(float((x - centres[y]).norm(dim=1).mean()), 3))
"""),
]
