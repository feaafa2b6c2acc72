"""Writes notebooks/quickstart.ipynb (run: python notebooks/_make_quickstart.py)."""

from pathlib import Path

import nbformat as nbf

cells = [
    nbf.v4.new_markdown_cell("# lightning-vi quickstart\n\nTrain a VAE on scikit-learn's digits, read every "
                             "loss term by name, estimate log p(x) with the IWAE bound, and draw samples. "
                             "The same model trains from YAML with `lvi fit --config configs/quickstart.yaml`."),
    nbf.v4.new_code_cell("import lightning as L\nimport torch\n\nfrom lightning_vi.data import DigitsDataModule\n"
                         "from lightning_vi.families.vae import VAE\n\nL.seed_everything(0)\n"
                         "dm = DigitsDataModule(image_size=16, batch_size=128)\n"
                         "model = VAE(input_shape=[1, 16, 16], latent_dim=8, architecture='conv', likelihood='bernoulli', lr=2e-3)"),
    nbf.v4.new_code_cell("trainer = L.Trainer(max_epochs=4, accelerator='cpu', logger=False, enable_checkpointing=False,\n"
                         "                    enable_progress_bar=False, enable_model_summary=False)\n"
                         "trainer.fit(model, dm)\n"
                         "{k: round(float(v), 2) for k, v in trainer.callback_metrics.items()}"),
    nbf.v4.new_markdown_cell("Every term is logged under its own name (`train/recon`, `train/kl`, `val/elbo`, ...). "
                             "At test time the importance-weighted bound (Burda et al. 2016) tightens the ELBO:"),
    nbf.v4.new_code_cell("x = dm.splits['test']['x']\nwith torch.no_grad():\n"
                         "    elbo = model.objective({'x': x})['elbo'].item()\n"
                         "    bounds = {k: model.iwae(x, k).mean().item() for k in (1, 16, 128)}\n"
                         "print(f'ELBO {elbo:.2f}', {k: round(v, 2) for k, v in bounds.items()})\n"
                         "assert bounds[128] > bounds[1]"),
    nbf.v4.new_code_cell("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
                         "from lightning_vi.callbacks import make_grid\n\n"
                         "samples = model.sample(36, generator=torch.Generator().manual_seed(0))\n"
                         "plt.imshow(make_grid(samples, nrow=6)[0], cmap='gray'); plt.axis('off');"),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
nbf.write(nb, Path(__file__).with_name("quickstart.ipynb"))
