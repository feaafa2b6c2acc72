"""Source of notebooks/ddmi.ipynb (regenerate: python notebooks/src/build.py ddmi)."""

CELLS = [
    ("markdown", """
# DDMI: latent diffusion of implicit neural representations (P41)

`d2c_vae` (the discrete-to-continuous VAE of Park et al. 2024) encodes a 16x16 sprite into a 4x4 latent grid and
decodes it to *hierarchical positional embeddings*: feature grids at 4x4, 8x8 and 16x16, bilinearly interpolated at
any query point p in [-1, 1]^2 and mapped by a coordinate MLP to the pixel value. The image is a function, so it
renders at any resolution. `ddmi` is the package's `latent_diffusion` with this VAE as its frozen producer.
(A short run here; the oracles with their numbers are in docs/ddmi.md.)
"""),
    ("code", """
import torch, torch.nn.functional as F
from lightning_vi.data.sprites import render_sprites, sample_factors
from lightning_vi.families.diffusion.ddmi import D2CVAE, psnr
torch.set_num_threads(1); torch.manual_seed(0)
f = sample_factors(2000, torch.Generator().manual_seed(0)); x = render_sprites(f, 16)
vae = D2CVAE(input_shape=[1, 16, 16], decoder_width=32)
opt = torch.optim.Adam(vae.parameters(), 2e-3); g = torch.Generator().manual_seed(0)
for step in range(150):
    t = vae.objective({'x': x[torch.randint(0, len(x), (32,), generator=g)]})
    loss = t['recon'] + vae.kl_weight * t['kl']
    opt.zero_grad(); loss.backward(); opt.step()
vae.eval()
ft = sample_factors(64, torch.Generator().manual_seed(1)); xt = render_sprites(ft, 16); hi = render_sprites(ft, 32)
with torch.no_grad():
    rec, rec2 = vae(xt), vae(xt, resolution=32)
up = F.interpolate(rec, scale_factor=2, mode='bilinear', align_corners=False)
print(f'PSNR at 16x16 {psnr(rec, xt).mean():.2f} dB; against the analytic 32x32 render: decoded at 32x32 '
      f'{psnr(rec2, hi).mean():.2f} dB, bilinear of the 16x16 reconstruction {psnr(up, hi).mean():.2f} dB')
"""),
    ("code", """
try:
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(3, 6, figsize=(9, 4.5))
    for j in range(6):
        for i, im in enumerate((xt[j, 0], rec2[j, 0], hi[j, 0])):
            ax[i, j].imshow(im, cmap='gray', vmin=0, vmax=1); ax[i, j].axis('off')
    ax[0, 0].set_title('input 16x16', loc='left'); ax[1, 0].set_title('decoded 32x32', loc='left')
    ax[2, 0].set_title('analytic 32x32', loc='left')
except ImportError:
    print('matplotlib not installed')
"""),
]
