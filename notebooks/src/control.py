"""Source of notebooks/control.ipynb (regenerate: python notebooks/src/build.py control)."""

CELLS = [
    ("markdown", """
# A reconstruction-free world model under distractors: RePo (P23)

`repo` is an RSSM (GRU state h, Gaussian state z) with no observation decoder: it predicts rewards under the
constraint KL(q(z|h,o) || p(z|h)) <= eps, with a dual variable beta raised by gradient ascent on KL - eps
(docs/control.md). The baseline `objective="reconstruction"` is the same network plus a decoder (Dreamer's
ELBO). Data: a point mass under random actions, rendered as 16x16 images with a large distractor blob whose
colour and motion are independent of the agent.
"""),
    ("code", """
import torch
from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.data.pointmass import pointmass_trajectories
from lightning_vi.families.control import RePo, align_encoder
torch.set_num_threads(1)
gen = lambda s: torch.Generator().manual_seed(s)
tr = pointmass_trajectories(512, generator=gen(0), distractor_colour_jitter=0.5)
changed = pointmass_trajectories(256, generator=gen(2000), distractor_colour=(0.3, 0.3, 1.0), distractor_motion='bounce')
shifted = pointmass_trajectories(256, generator=gen(3000), distractor_colour_jitter=0.5, background_shift=0.3)
print('frames', tuple(tr['x'].shape), 'reward variance', round(float(changed['reward'].var()), 3))
"""),
    ("code", """
def batches(step, g=gen(0)):
    idx = torch.randint(0, 512, (32,), generator=g)
    return {k: v[idx] for k, v in tr.items()}
models = {}
for objective in ('repo', 'reconstruction'):
    torch.manual_seed(0)
    models[objective] = fit_objective(RePo(objective=objective, kl_target=1.0), batches, 300, lr=3e-3)
    print(f"{objective:15s} reward MSE with a changed distractor {models[objective].reward_mse(changed):.4f}")
repo = models['repo']
with torch.no_grad():
    kl = float(repo.train().compute_loss(tr, 'train')[1]['kl']); repo.eval()
print(f"RePo KL {kl:.3f} nats/step (target 1.0), beta {float(repo.beta.detach()):.4f}")
"""),
    ("code", """
def shifted_obs(step, g=gen(7)):
    idx = torch.randint(0, 256, (32,), generator=g)
    return {k: shifted[k][idx] for k in ('x', 'action')}  # reward-free
aligned = align_encoder(repo, tr, shifted_obs, steps=100, lr=3e-3, kl_weight=0.1, bank_size=1024)
print(f"shifted background: reward MSE {repo.reward_mse(shifted):.4f} before, {aligned.reward_mse(shifted):.4f} after alignment")
"""),
    ("markdown", """
Numbers over seeds 0-2 and the mutations that break each oracle: docs/control.md
(tests/families/control/test_repo.py).
"""),
]
