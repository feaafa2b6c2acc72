"""Source of notebooks/distillation.ipynb (regenerate: python notebooks/src/build.py distillation)."""

CELLS = [
    ("markdown", """
# Score distillation into particles: SDS, VSD, ESD

Free particles distilled from the exact noised score of the 8-Gaussian ring (`GaussianMixtureTeacher.ring`).
SDS (DreamFusion) uses the injected noise as the particles' own score and collapses; VSD (ProlificDreamer)
learns the particles' score `eps_phi` by denoising score matching and matches the ring; ESD (Wang et al. 2024)
mixes a view-conditional and an unconditional fake score with `lambda` (`lambda = 1`: view-conditioned VSD).
See docs/distillation.md.
"""),
    ("code", """
import torch, matplotlib.pyplot as plt
from lightning_vi.families.distillation import GaussianMixtureTeacher, ScoreDistillation, fit_particles, mode_stats
torch.set_num_threads(1)
ring = {'n_modes': 8, 'radius': 2.0, 'std': 0.2}
teacher = GaussianMixtureTeacher.ring(**ring)
x = torch.randn(5, 2)
t = torch.full((5,), 200)
print('exact eps of the noised ring at t=200:', teacher.eps(x, t)[:2])
"""),
    ("code", """
runs = {}
for name, kw in {'SDS': dict(method='sds'), 'VSD': dict(method='vsd'),
                 'ESD lambda=0': dict(method='esd', esd_lambda=0.0),
                 'ESD lambda=1': dict(method='esd', esd_lambda=1.0)}.items():
    torch.manual_seed(0)
    m = fit_particles(ScoreDistillation(teacher_args=ring, n_particles=128, phi_warmup=200, **kw), 1000)
    runs[name] = m.sample()
    s = mode_stats(runs[name], teacher)
    print(f"{name:13s} modes covered {int(s['modes_covered'])}/8  std/data {float(s['std_ratio']):.2f}  on-mode {float(s['on_mode']):.2f}")
"""),
    ("code", """
ref = teacher.sample(512, torch.Generator().manual_seed(0))
fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharex=True, sharey=True)
for ax, (name, pts) in zip(axes, runs.items()):
    ax.scatter(ref[:, 0], ref[:, 1], s=3, c='lightgray', label='data')
    ax.scatter(pts[:, 0], pts[:, 1], s=6, c='C3', label='particles')
    ax.set_title(name); ax.set_aspect('equal')
axes[0].legend(loc='lower left', fontsize=7)
plt.tight_layout()
"""),
]
