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
    ("markdown", """
## One object, continuous cameras (ESD's text-to-3D setting)

`camera_score_distillation`: one MLP object `g_theta(c)` rendered at camera angles `c ~ U[0, 2 pi)`, the fake
score conditioned on the camera. SDS sends every view to one mode (the Janus problem); ESD (`lambda = 0.5`)
spreads the views over the ring. View-conditioned VSD (`lambda = 1`) scatters rather than collapsing per view
(docs/distillation.md has the 3-seed table).
"""),
    ("code", """
from lightning_vi.families.distillation.camera import CameraScoreDistillation, fit_camera
cams = {}
for name, kw in {'SDS': dict(method='sds'), 'ESD lambda=0.5': dict(method='esd', esd_lambda=0.5)}.items():
    torch.manual_seed(0)
    m = fit_camera(CameraScoreDistillation(teacher_args=ring, t_max=0.3, **kw), 600)
    cams[name] = m.sample().detach()
    s = mode_stats(cams[name], teacher)
    print(f"{name:15s} modes covered {int(s['modes_covered'])}/8  on-mode {float(s['on_mode']):.2f}")
fig, axes = plt.subplots(1, 2, figsize=(7, 3.6), sharex=True, sharey=True)
for ax, (name, pts) in zip(axes, cams.items()):
    ax.scatter(ref[:, 0], ref[:, 1], s=3, c='lightgray')
    ax.scatter(pts[:, 0], pts[:, 1], s=6, c=torch.linspace(0, 1, len(pts)), cmap='hsv')
    ax.set_title(name + ' (colour = camera angle)'); ax.set_aspect('equal')
plt.tight_layout()
"""),
]
