"""Source of notebooks/vision.ipynb (regenerate: python notebooks/src/build.py vision)."""

CELLS = [
    ("markdown", """
# Vision family: outlier rejection for 3D registration (P14), PULASki segmentation (P22), ScoreDVI (P13)

`outlier_rejection` (Jiang et al. 2023) classifies putative correspondences as inliers with a non-local network
whose query/key/value features are latent (prior, label-conditioned posterior, ELBO), then finds the rigid motion
by a voting search over seed hypotheses and a weighted Kabsch solve. The data are synthetic: a random rotation
and translation, noisy inliers and wrong matches, with the ground truth kept.
"""),
    ("code", """
import torch
from lightning_vi.data.correspondences import make_correspondences
from lightning_vi.families.vision import VariationalOutlierRejection, ransac, registration_metrics
torch.manual_seed(0); torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
model = VariationalOutlierRejection(hidden_dim=32, num_layers=2)
opt = torch.optim.Adam(model.parameters(), 3e-3)
for step in range(150):                      # a short run; the tests train 600 steps
    out = model.objective(make_correspondences(8, 128, (0.5, 0.95), g))
    loss = sum(w * out[k] for k, w in model.term_weights.items() if k in out)
    opt.zero_grad(); loss.backward(); opt.step()
model.eval()
"""),
    ("markdown", """
At 70% outliers the pipeline recovers the motion to a fraction of a degree; RANSAC given about the same
wall time (~120 hypotheses here) fails more often as the outlier ratio grows.
"""),
    ("code", """
for ratio in (0.7, 0.9):
    b = make_correspondences(32, 128, ratio, torch.Generator().manual_seed(1))
    ours = registration_metrics(model.register(b['p'], b['q']), b)
    r, t, m = ransac(b['p'], b['q'], 120, 0.05, torch.Generator().manual_seed(0))
    theirs = registration_metrics({'R': r, 't': t, 'inliers': m}, b)
    print(f"outliers {ratio:.0%}: ours RE {ours['rotation_error']:.2f} deg, TE {ours['translation_error']:.3f}, "
          f"recall {ours['recall_registration']:.2f} | RANSAC-120 recall {theirs['recall_registration']:.2f}")
"""),
    ("markdown", """
## PULASki: a Probabilistic U-Net trained against several raters (P22)

Thin procedural curves annotated by 4 raters with their own widths, shifts and misses. The `sinkhorn` loss
compares the distribution of predicted segmentations with the raters' masks by entropic optimal transport; the
generalised energy distance (GED, lower is better) scores prior samples against all raters.
"""),
    ("code", """
from lightning_vi.data.raters import make_rater_data
from lightning_vi.families.vision import ProbUNet, generalized_energy_distance
g = torch.Generator().manual_seed(0)
data, test = make_rater_data(256, 16, g), make_rater_data(32, 16, torch.Generator().manual_seed(1))
for loss in ('ce', 'sinkhorn'):
    torch.manual_seed(0)
    unet = ProbUNet(channels=(8, 16), latent_dim=4, loss=loss, distance_weight=50.0)
    opt = torch.optim.Adam(unet.parameters(), 3e-3)
    for step in range(60):                   # the tests train 300 steps on 3 seeds
        idx = torch.randint(256, (16,), generator=g)
        out = unet.objective({'x': data['x'][idx], 'masks': data['masks'][idx]})
        l = sum(w * out[k] for k, w in unet.term_weights.items() if k in out and w)
        opt.zero_grad(); l.backward(); opt.step()
    unet.eval()
    with torch.no_grad():
        ged = generalized_energy_distance(unet.sample(test['x'], 8), test['masks']).mean()
    print(f'{loss}: GED {float(ged):.3f}')
"""),
    ("markdown", """
## ScoreDVI: single-image denoising by deep VI with a score prior (P13)

Digits with spatially varying, mixed Gaussian noise; the score prior is Tweedie's formula on a closed-form
Gaussian MMSE denoiser fitted on other digits; the noise is a non-i.i.d. mixture. The same fit with a white-noise
model is the ablation (`python -m lightning_vi.families.vision.score_dvi --out DIR` runs the whole benchmark).
"""),
    ("code", """
from lightning_vi.families.vision.score_dvi import GaussianMMSEDenoiser, digits_benchmark, psnr, score_dvi
b = digits_benchmark(n=8, image_size=16, seed=0)
den = GaussianMMSEDenoiser(b['train'], [0.02, 0.05, 0.1, 0.2])
for noise_model in ('mixture', 'white'):
    out = score_dvi(b['noisy'], den, steps=100, noise_model=noise_model)   # the tests run 300 steps on 20 images
    print(f"{noise_model}: noisy {float(psnr(b['noisy'], b['clean']).mean()):.1f} dB -> "
          f"{float(psnr(out['x'], b['clean']).mean()):.1f} dB")
"""),
]
