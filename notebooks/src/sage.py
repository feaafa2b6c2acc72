"""Source of notebooks/sage.ipynb (regenerate: python notebooks/src/build.py sage)."""

CELLS = [
    ("markdown", """
# SAGE: adversarial search for failure modes of a class-conditional diffusion model (P48)

Liu et al. 2023 search the latent noise and the prompt embedding of a text-guided diffusion model for
inputs whose samples a classifier (the surrogate) judges wrong. Here: the class-conditional `ddpm` on 8x8
digits, 10 deterministic DDIM steps (the differentiable path), an MLP surrogate and an independent
logistic-regression judge. See docs/sage.md for the 3-seed numbers.
"""),
    ("code", """
import torch, lightning as L
from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion import sage as S
torch.set_num_threads(1); L.seed_everything(0)
d = load_digits_tensors(8)
model = DDPM(input_shape=[1, 8, 8], hidden=128, depth=3, num_classes=10, p_uncond=0.2,
             data_scale=0.5, data_shift=0.5)
model = fit_objective(model, d, 400, lr=3e-3)           # small prior, full batch
surrogate = S.train_digits_classifier(d['x'], d['y'], seed=0, steps=200)
second = S.train_digits_classifier(d['x'], d['y'], hidden=0, seed=100, steps=200, lr=0.05)
"""),
    ("markdown", """
Latent search (gradient through the sampler, shell regulariser), its gradient-free (1+1)-ES variant, and
random latents, at 20 sampler calls per searched latent. Transfer = fraction of the surrogate's failures
the second classifier also calls wrong; chance = its error on random samples.
"""),
    ("code", """
y = torch.arange(30) % 10
rand = S.random_latents(model, surrogate, torch.arange(600) % 10, generator=torch.Generator().manual_seed(1))
chance = float((S.labels_of(second, rand.x0) != rand.y).float().mean())
grad = S.latent_search(model, surrogate, y, iters=20, generator=torch.Generator().manual_seed(2))
free = S.gradient_free_search(model, surrogate, y, iters=20, generator=torch.Generator().manual_seed(3))
for name, r in (('random', rand), ('gradient', grad), ('gradient-free', free)):
    print(name, S.failure_report(r, second, chance=chance))
"""),
    ("markdown", "An adversarial token appended to the class-1 embedding steers generation to 7:"),
    ("code", """
delta = S.embedding_search(model, surrogate, 1, 7, n=32, iters=40)
g = lambda: torch.Generator().manual_seed(5)
print('labelled 7 by the second classifier: without delta', S.steer_rate(model, second, 1, 7, None, generator=g()),
      'with delta', S.steer_rate(model, second, 1, 7, delta, generator=g()))
"""),
    ("code", """
try:
    import matplotlib.pyplot as plt
    idx = grad.failed.nonzero().flatten()[:8]
    with torch.no_grad():
        before = S.ddim_decode(model, torch.randn((30, 1, 8, 8), generator=torch.Generator().manual_seed(2)), y)
    fig, ax = plt.subplots(2, max(len(idx), 1), figsize=(1.2 * max(len(idx), 1), 2.6), squeeze=False)
    for j, i in enumerate(idx.tolist()):
        ax[0, j].imshow(before[i, 0].clamp(0, 1), cmap='gray'); ax[0, j].set_title(f'y={int(y[i])}')
        ax[1, j].imshow(grad.x0[i, 0].clamp(0, 1), cmap='gray'); ax[1, j].set_title(f'-> {int(grad.pred[i])}')
    for a in ax.flat: a.axis('off')
except ImportError:
    print('matplotlib not installed')
"""),
]
