"""Source of notebooks/origin_id.ipynb (regenerate: python notebooks/src/build.py origin_id)."""

CELLS = [
    ("markdown", """
# ID^2 origin identification (P46)

Wang et al., *Generalizable Origin Identification for Text-Guided Image-to-Image Diffusion Models*: given an
image made by an image-to-image model, retrieve its origin. The VAE embedding of a translation and that of its
origin differ by roughly a linear map `W`; one `W` fit on pairs from model A transfers to model B.

Here (tiny, about half a minute on a CPU): a small VAE on 8x8 digits, two SDEdit "models" (DDPMs of width 64 and
96 trained from different seeds on the faded-digit domain), `W` in closed form (ridge least squares) on model-A
pairs, and retrieval mAP of raw cosine similarity vs the linearly mapped queries, on A and on B.
"""),
    ("code", """
import torch
from lightning_vi.families.vision.origin_id import (apply_map, cosine_scores, fit_linear_map, make_pairs,
                                                    mean_average_precision)
torch.set_num_threads(1)
# VAE + two DDPMs, 600 Adam steps each (the benchmark uses 2000); SDEdit at strength 0.3, 5 DDIM steps
p = make_pairs(seed=0, train_steps=600)
zo, za, zb = p['zo'], p['za'], p['zb']
print('origins', tuple(p['x'].shape), 'latents', tuple(zo.shape))
"""),
    ("markdown", """
Fit `W` on the first 1000 model-A pairs (closed form `W = (Z_t^T Z_t + n lam I)^{-1} Z_t^T Z_o`) and rank all
held-out origins for each held-out translation by cosine similarity. One relevant origin per query, so mAP is
the mean reciprocal rank (chance about 0.008).
"""),
    ("code", """
tr, te = slice(0, 1000), slice(1000, None)
W = fit_linear_map(za[tr], zo[tr], 'lstsq', ridge=1e-4)
relevant = torch.eye(zo[te].shape[0], dtype=torch.bool)
def mAP(q):
    return mean_average_precision(cosine_scores(q, zo[te]), relevant)
res = {'model A': (mAP(za[te]), mAP(apply_map(za[te], W))),
       'model B': (mAP(zb[te]), mAP(apply_map(zb[te], W)))}
for k, (raw, lin) in res.items():
    print(f'{k}: cosine on raw embeddings mAP {raw:.3f}   with linear map W mAP {lin:.3f}')
print(f"cross-model drop A -> B with W fit on A: {res['model A'][1] - res['model B'][1]:.3f}")
"""),
]
