"""Source of notebooks/quickstart.ipynb (regenerate: python notebooks/src/build.py quickstart)."""

CELLS = [
    ("markdown", """
# lightning-vi quickstart

Train a VAE on scikit-learn's digits, read every loss term by name, estimate log p(x) with the IWAE bound, and draw samples. The same model trains from YAML with `lvi fit --config configs/quickstart.yaml`.
"""),
    ("code", """
import lightning as L
import torch

from lightning_vi.data import DigitsDataModule
from lightning_vi.families.vae import VAE

torch.set_num_threads(1)
L.seed_everything(0)
dm = DigitsDataModule(image_size=16, batch_size=128)
model = VAE(input_shape=[1, 16, 16], latent_dim=8, architecture='conv', likelihood='bernoulli', lr=2e-3)
"""),
    ("code", """
trainer = L.Trainer(max_epochs=4, accelerator='cpu', logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model, dm)
{k: round(float(v), 2) for k, v in trainer.callback_metrics.items()}
"""),
    ("markdown", """
Every term is logged under its own name (`train/recon`, `train/kl`, `val/elbo`, ...). At test time the importance-weighted bound (Burda et al. 2016) tightens the ELBO:
"""),
    ("code", """
x = dm.splits['test']['x']
with torch.no_grad():
    elbo = model.objective({'x': x})['elbo'].item()
    bounds = {k: model.iwae(x, k).mean().item() for k in (1, 16, 128)}
print(f'ELBO {elbo:.2f}', {k: round(v, 2) for k, v in bounds.items()})
assert bounds[128] > bounds[1]
"""),
    ("code", """
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from lightning_vi.callbacks import make_grid

samples = model.sample(36, generator=torch.Generator().manual_seed(0))
plt.imshow(make_grid(samples, nrow=6)[0], cmap='gray'); plt.axis('off');
"""),
]
