"""Source of notebooks/compression.ipynb (regenerate: python notebooks/src/build.py compression)."""

CELLS = [
    ("markdown", """
# Learned compression with a multivariate Gaussian mixture prior (P44)

`compression_vae`: analysis transform, uniform-noise quantisation in training and rounding at test, synthesis
transform, loss `bpp + lambda * MSE`. The latent of an image is `M` vectors of `d` channels; the
`mvgm` prior is a multivariate Gaussian mixture over those vectors (codewords as means, learned Cholesky
covariances), the `factorized` prior a univariate mixture per scalar. `compress` writes a real range-coded
bitstream (constriction). See docs/compression.md.
"""),
    ("code", """
import torch
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.compression import CompressionVAE
torch.set_num_threads(1)
torch.manual_seed(0)
x = load_digits_tensors()['x']
perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
train, test = x[perm[360:]], x[perm[:360]]

def fit(model, steps):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        out = model.objective({'x': train[torch.randint(0, len(train), (128,))]})
        loss = out['bpp'] + model.lmbda * out['mse']
        opt.zero_grad(); loss.backward(); opt.step()
    return model.eval()

fact = fit(CompressionVAE(prior='factorized', num_groups=16, group_dim=1, num_components=4, lmbda=1000.0,
                          latent_gain=8.0), 200)
"""),
    ("markdown", """
Same transforms, MV-GMM prior fitted to their latents: equal reconstructions (equal PSNR), different rate.
"""),
    ("code", """
mvgm = CompressionVAE(prior='mvgm', num_groups=1, group_dim=16, num_components=32, lmbda=1000.0, latent_gain=8.0)
mvgm.encoder, mvgm.decoder = fact.encoder, fact.decoder
with torch.no_grad():
    lat = fact.analysis(train)
opt = torch.optim.Adam(mvgm.prior.parameters(), lr=1e-2)
for _ in range(150):
    y = lat[torch.randint(0, len(lat), (256,))]
    loss = -mvgm.prior.log_prob(y + torch.rand_like(y) - 0.5).sum(-1).mean()
    opt.zero_grad(); loss.backward(); opt.step()
mvgm.eval()
pixels = test.shape[0] * 64
with torch.no_grad():
    psnr = float(-10 * torch.log10(((fact(test) - test) ** 2).mean()))
for name, model in [('factorized', fact), ('mvgm', mvgm)]:
    data = model.compress(test)                       # one bitstream for the 360 held-out digits
    y_hat, x_hat = model.decompress(data)
    assert torch.equal(y_hat, model.quantized_latents(test))
    print(f'{name:10s} PSNR {psnr:.2f} dB  file {8 * len(data) / pixels:.3f} bpp  '
          f'estimate {model.estimated_bits(test) / pixels:.3f} bpp  ({len(data)} bytes)')
"""),
]
