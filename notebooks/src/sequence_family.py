"""Source of notebooks/sequence_family.ipynb (regenerate: python notebooks/src/build.py sequence_family)."""

CELLS = [
    ("markdown", """
# Sequence family
MA-fBM weights (fbm_sde), a few PV-RNN/rvae/video_vae steps, chunked video decoding.
"""),
    ("code", """
import torch, lightning as L
torch.set_num_threads(1)
from lightning_vi.families.sequence import FBMSDE, PVRNN, KoopmanVAE, RecurrentVAE, VideoVAE
from lightning_vi.families.sequence.fbm_sde import ou_rates, optimal_weights, approximation_error
L.seed_everything(0)
g = ou_rates(5, 0.1, 100.0)
for h in (0.2, 0.3, 0.5, 0.7, 0.8):
    print(f"H={h}: relative L2 error {approximation_error(h, g):.2e}, weights {optimal_weights(h, g).numpy().round(3)}")
"""),
    ("code", """
from lightning_vi.data.fbm import fbm_paths
d = fbm_paths(8, 32, 0.3, torch.Generator().manual_seed(0))
m = FBMSDE(hurst=0.3, dt=1/32, gamma_max=30.0)
paths = m.sample_paths(4, d['t'][0])
print('prior sample paths', tuple(paths.shape), 'ELBO', float(m.objective(d)['elbo']))
"""),
    ("code", """
from lightning_vi.data.sequences import sine_mixtures
d = sine_mixtures(16, 20, torch.Generator().manual_seed(0), n_components=1, freqs=[1.0], duration=2.0)
d['index'] = torch.arange(16)
pv = PVRNN(n_sequences=16, max_length=20, d_sizes=[16, 8], z_sizes=[2, 1], w=0.01, w1=0.01)
opt = torch.optim.Adam(pv.parameters(), lr=0.02)
for _ in range(40):
    out = pv.objective(d); loss = out['recon'] + 0.01 * (out['kl'] + out['kl_first'])
    opt.zero_grad(); loss.backward(); opt.step()
pred = pv.eval().error_regression(d['x'][:2, :10], horizon=10, steps=10)
print('pvrnn train mse', float(out['mse']), 'forecast', tuple(pred.shape))
kv = KoopmanVAE(latent_dim=2, hidden=8)
print('kvae eigenvalues (untrained)', kv.eigenvalues(d))
"""),
    ("code", """
from lightning_vi.data.tokens import sorted_subset_tokens
from lightning_vi.data.videos import moving_sprites
tok = sorted_subset_tokens(4, 5, 16, torch.Generator().manual_seed(0))['x']
rv = RecurrentVAE(vocab_size=16).eval()
print('interpolation shape', tuple(rv.interpolate(tok[:2], tok[2:], steps=4).shape))
vid = moving_sprites(2, 8, 16, torch.Generator().manual_seed(0))['x']
vv = VideoVAE().eval()
z = vv.encode(vid)[0]
print('compression', vv.compression, 'chunked == full:', torch.allclose(vv.decode(z), vv.decode(z, chunk=1), atol=1e-6))
"""),
]
