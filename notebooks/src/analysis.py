"""Source of notebooks/analysis.ipynb (regenerate: python notebooks/src/build.py analysis)."""

CELLS = [
    ("markdown", """
# Analysis tools: neural collapse

`lightning_vi.metrics` has NC1-NC4 (Papyan et al. 2020; P39, P47) as `torchmetrics.Metric`s computed from
per-class sums, so they are exact across batches and processes; the `NeuralCollapse` callback logs them on any
classifier family that exposes penultimate features and head weights (the `HasPenultimate` capability).
"""),
    ("code", """
import functools, math, lightning as L, torch, matplotlib.pyplot as plt
from lightning_vi.callbacks import NeuralCollapse
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.classifier import Classifier
from lightning_vi.metrics.neural_collapse import NC1, simplex_etf_gram
torch.set_num_threads(1)
"""),
    ("markdown", """
A closed form first: a unit-norm simplex ETF of C class means with isotropic noise sigma has
NC1 = tr(Sigma_W Sigma_B^+)/C = sigma^2 (C-1)^2 / C (0.0225 for C = 4, sigma = 0.1).
"""),
    ("code", """
g = torch.Generator().manual_seed(0)
C, d, n, sigma = 4, 8, 20000, 0.1
gram = simplex_etf_gram(C)                               # (C/(C-1)) (I - 11^T/C)
evals, evecs = torch.linalg.eigh(gram)
means = (evecs[:, 1:] * evals[1:].sqrt()) @ torch.linalg.qr(torch.randn(d, C - 1, generator=g, dtype=torch.float64))[0].T
means = means / means.norm(dim=1, keepdim=True)          # unit-norm ETF in R^d
y = torch.randint(0, C, (n,), generator=g)
h = means[y] + sigma * torch.randn(n, d, generator=g, dtype=torch.float64)
nc1 = NC1(C, d); nc1.update(h, y)
print(f'NC1 = {float(nc1.compute()):.5f}, closed form {sigma**2 * (C - 1)**2 / C:.5f}')
"""),
    ("markdown", """
Training a classifier on digits drives the training features towards collapse: NC1 (within- over
between-class variability) falls, and the nearest-class-centre rule (NC4) agrees with the network.
"""),
    ("code", """
L.seed_everything(0)
model = Classifier(input_shape=[1, 8, 8], num_classes=10, backbone='mlp', hidden_dims=[128], feature_dim=32,
                   optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=5e-4))
nc = NeuralCollapse(split='train')
L.Trainer(max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False, callbacks=[nc]).fit(model, DigitsDataModule(batch_size=128))
epochs = [r['epoch'] for r in nc.history]
print({k: round(nc.history[-1][k], 3) for k in ('nc1', 'nc2', 'nc3', 'nc4')})
plt.figure(figsize=(4, 3)); plt.plot(epochs, [r['nc1'] for r in nc.history], 'o-'); plt.yscale('log')
plt.xlabel('epoch'); plt.ylabel('NC1 (train)');
"""),
]
