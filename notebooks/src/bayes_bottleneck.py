"""Source of notebooks/bayes_bottleneck.ipynb (regenerate: python notebooks/src/build.py bayes_bottleneck)."""

CELLS = [
    ("markdown", """
# Bayesian and bottleneck families
A mean-field BNN with calibration metrics and OOD detection, SSVI at fixed density, a VIB rate check, the CS-divergence estimator, continual learning with binary_vcl and few-shot episodes with niw_fewshot. Tiny runs on 8x8 digits and procedural glyphs.
"""),
    ("code", """
import torch, lightning as L
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.bayes import BNN
from lightning_vi.families.bayes.ssvi import SSVI
from lightning_vi.metrics.calibration import classification_metrics, ood_auroc, predictive_entropy
torch.set_num_threads(1)  # tiny models: more threads only add overhead (and oversubscribe a shared CPU)
dm = DigitsDataModule(); dm.setup()
tr, te = dm.splits['train'], dm.splits['test']
keep, kt = tr['y'] < 5, te['y'] < 5          # train on digits 0-4, digits 5-9 are OOD
train = {'x': tr['x'][keep], 'y': tr['y'][keep]}

def fit(m, batch, steps=40, lr=1e-2):
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for _ in range(steps):
        out = m.objective(batch)
        loss = sum(w * out[k] for k, w in m.term_weights.items() if w)
        opt.zero_grad(); loss.backward(); opt.step()
        if hasattr(m, 'step_done'): m.step_done()
    return m
"""),
    ("code", """
L.seed_everything(0)
bnn = fit(BNN(num_classes=5, hidden_dims=[64], dataset_size=len(train['x'])), train)
p_in, p_out = bnn.predict_proba(te['x'][kt]), bnn.predict_proba(te['x'][~kt])
print({k: round(float(v), 3) for k, v in classification_metrics(p_in, te['y'][kt]).items()})
print('OOD AUROC (entropy):', float(ood_auroc(predictive_entropy(p_in), predictive_entropy(p_out))))
"""),
    ("code", """
from lightning_vi.callbacks.reliability import reliability_figure
fig = reliability_figure(p_in, te['y'][kt], title='BNN')
"""),
    ("code", """
L.seed_everything(0)
ssvi = fit(SSVI(num_classes=5, hidden_dims=[64], dataset_size=len(train['x']), density=0.2), train)
print('density', float(ssvi.density()), classification_metrics(ssvi.predict_proba(te['x'][kt]), te['y'][kt]))
"""),
    ("code", """
from lightning_vi.families.bottleneck import VIB
for beta in (1e-4, 1e-1):
    L.seed_everything(0)
    m = fit(VIB(kl_weight=beta, hidden_dims=[32], latent_dim=8), tr, steps=30)
    print('kl_weight', beta, 'rate', float(m.objective(tr)['rate']))
"""),
    ("code", """
from lightning_vi.families.bottleneck.cs_divergence import cs_divergence, gaussian_cs_divergence
mu1, mu2, c = torch.zeros(2), torch.tensor([1.0, 0.5]), torch.eye(2)
x = torch.randn(1000, 2); y = torch.randn(1000, 2) + mu2
print('kernel estimate', float(cs_divergence(x, y, 0.3)), 'closed form', float(gaussian_cs_divergence(mu1, c, mu2, c)))
"""),
    ("markdown", """
Continual learning (P08): three permuted-digit tasks; the posterior fields of task t become the prior of task t+1. `TaskSequence` switches tasks and logs per-task accuracy.
"""),
    ("code", """
import tempfile
from lightning_vi.callbacks import TaskSequence
from lightning_vi.data import PermutedDigitsDataModule
from lightning_vi.families.bayes import BinaryVCL
L.seed_everything(0)
seq = TaskSequence(epochs_per_task=6)
trainer = L.Trainer(max_epochs=18, callbacks=[seq], reload_dataloaders_every_n_epochs=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tempfile.mkdtemp())
trainer.fit(BinaryVCL(hidden_dims=[128]), PermutedDigitsDataModule(num_tasks=3, batch_size=128))
print('accuracy per task after the last task:', [round(a, 3) for a in seq.history[-1]['acc']])
"""),
    ("markdown", """
Few-shot (P27): NIW global prior, closed-form class posteriors from the support set; accuracy on held-out 5-way 1-shot glyph episodes (classes never seen in training).
"""),
    ("code", """
from lightning_vi.data import EpisodeDataModule
from lightning_vi.families.bayes.niw_fewshot import NIWFewShot
L.seed_everything(0)
dm = EpisodeDataModule(dataset='glyphs', n_way=5, k_shot=1, n_query=15, episodes_per_epoch=200 * 8, batch_size=8,
                       num_test_episodes=100, seed=0)
niw = NIWFewShot(input_shape=[1, 10, 10], hidden_dims=[256], feature_dim=64, lr=3e-3)
L.Trainer(max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False, default_root_dir=tempfile.mkdtemp()).fit(niw, dm)
test = dm.datasets['test'].__getitems__(list(range(100)))
print('held-out 5-way 1-shot accuracy:', float((niw.eval()(test).argmax(-1) == test['y']).float().mean()), '(chance 0.2)')
"""),
]
