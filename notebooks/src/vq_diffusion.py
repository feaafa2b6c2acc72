"""Source of notebooks/vq_diffusion.ipynb (regenerate: python notebooks/src/build.py vq_diffusion)."""

CELLS = [
    ("markdown", """
# VQ-Diffusion (P42)
Mask-and-replace discrete diffusion (Gu et al. 2022) over the codes of a small VQ-VAE on 8x8 digits:
the transition, its closed form, a class-conditional model with classifier-free guidance, and samples
decoded through the VQ-VAE (tiny, CPU, about half a minute). Details: `docs/vq_diffusion.md`.
"""),
    ("code", """
import tempfile, torch, lightning as L
torch.set_num_threads(1)
from lightning_vi.families.diffusion.mask_replace import MaskReplaceSchedule
sched = MaskReplaceSchedule(num_codes=4, num_timesteps=100)
prod = torch.eye(5, dtype=torch.float64)
for t in range(1, 101):
    prod = prod @ sched.step_matrix(t)
print("max |Q_1...Q_T - Qbar_T| =", float((prod - sched.cumulative_matrix(100)).abs().max()))
print("P(MASK at T) =", float(sched.cumulative_matrix(100)[0, 4]), " alpha_bar_T =", float(sched.alpha_bar[100]))
"""),
    ("markdown", """
A VQ-VAE with 4 tokens (a 2x2 grid) and 32 codes, then VQ-Diffusion over its codes. The VQ-VAE's checkpoint
is read once; the VQ-VAE becomes a frozen submodule of the diffusion model.
"""),
    ("code", """
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.vae.vqvae import VQVAE
from lightning_vi.families.diffusion.vq_diffusion import VQDiffusion
from lightning_vi.metrics.class_agreement import class_agreement, fit_digits_classifier
d = load_digits_tensors(8)
x, y = d["x"][:1500], d["y"][:1500]
L.seed_everything(0)
vq = VQVAE(input_shape=[1, 8, 8], hidden_dims=[128], num_latents=4, embedding_dim=8, codebook_size=32, decay=0.9, obs_std=0.3)
opt = torch.optim.Adam(vq.parameters(), 3e-3)
for _ in range(300):
    t = vq.objective({"x": x}); loss = sum(t[k] * w for k, w in vq.term_weights.items())
    opt.zero_grad(); loss.backward(); opt.step()
path = tempfile.mkdtemp() + "/vqvae.ckpt"
torch.save({"state_dict": vq.state_dict(), "hyper_parameters": dict(vq.hparams),
            "lvi_class_path": "lightning_vi.families.vae.vqvae.VQVAE", "pytorch-lightning_version": L.__version__}, path)
model = VQDiffusion(vqvae_checkpoint=path, codebook_size=32, num_classes=10, p_uncond=0.2, d_model=32, depth=2, heads=4)
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 2e-3)
g = torch.Generator().manual_seed(0)
for step in range(300):
    idx = torch.randint(0, 1500, (256,), generator=g)
    t = model.objective({"x": x[idx], "y": y[idx]}); loss = sum(t[k] * w for k, w in model.term_weights.items())
    opt.zero_grad(); loss.backward(); opt.step()
print({k: round(float(v), 3) for k, v in t.items()})
"""),
    ("code", """
classify = fit_digits_classifier(x, y)
labels = torch.arange(500) % 10
for s in (0.0, 1.0, 2.0):
    imgs = model.eval().sample(500, torch.Generator().manual_seed(0), labels, guidance_scale=s, steps=20)
    print(f"guidance scale {s}: class agreement {class_agreement(classify, imgs, labels):.3f} (chance 0.1)")
"""),
    ("code", """
import matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
imgs = model.sample(40, torch.Generator().manual_seed(1), torch.arange(40) % 10, guidance_scale=2.0, steps=20)
fig, ax = plt.subplots(4, 10, figsize=(8, 3.4))
for a, im in zip(ax.flat, imgs):
    a.imshow(im[0], cmap="gray"); a.axis("off")
"""),
]
