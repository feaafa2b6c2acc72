"""Source of notebooks/plugins.ipynb (regenerate: python notebooks/src/build.py plugins)."""

CELLS = [
    ("markdown", """
# Regularizer plugins on one model

A classifier (MLP backbone) on scikit-learn's digits with several plugins switched on by name: CutMix, multi-sample dropout, nested dropout on the feature layer and adaptive gradient clipping. They run in a documented, deterministic order (see `lightning_vi/plugins/base.py`).
"""),
    ("code", """
import lightning as L, torch, matplotlib.pyplot as plt
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.classifier import Classifier
from lightning_vi.callbacks import make_grid
from lightning_vi.registry import PLUGINS
torch.set_num_threads(1)
print(PLUGINS.listing())
"""),
    ("code", """
L.seed_everything(0)
plugins = [{'gradient_clipping': {'algorithm': 'agc', 'threshold': 0.05, 'exclude': ['head']}},
           {'cutmix': {'alpha': 1.0, 'prob': 0.5}},
           {'multisample_dropout': {'k': 4, 'p': 0.3}},
           {'nested_dropout': {'distribution': 'geometric', 'rho': 0.05}}]
model = Classifier(input_shape=[1, 8, 8], backbone='mlp', hidden_dims=[128], feature_dim=32, lr=1e-2, plugins=plugins)
print('order:', [p.name for p in model.plugins])
print(type(model.head).__name__, 'wraps', type(model.head.head).__name__)
"""),
    ("markdown", """
What CutMix does to a batch: a box from a partner image is pasted, and the label weight is the exact pasted area.
"""),
    ("code", """
dm = DigitsDataModule(batch_size=64); dm.setup()
batch = {k: v[:16] for k, v in dm.splits['train'].items()}
torch.manual_seed(1)
demo = PLUGINS.get('cutmix')(alpha=1.0)  # prob=1: always applied
demo.attach(model)
cut = demo.transform_batch(batch, model)
plt.figure(figsize=(6, 3)); plt.imshow(make_grid(cut['x'], nrow=8)[0], cmap='gray'); plt.axis('off')
print('label weight of the own class:', cut['y_soft'].max(1).values[:8].round(decimals=2).tolist())
"""),
    ("markdown", """
Train for a few epochs with Lightning; accuracy, NLL and the expected calibration error are logged.
"""),
    ("code", """
trainer = L.Trainer(max_epochs=6, accelerator='cpu', logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model, dm)
print({k: round(float(v), 3) for k, v in trainer.callback_metrics.items() if k.startswith('val/')})
"""),
    ("markdown", """
Nested dropout orders the features: accuracy as a function of how many feature units are kept. `select_truncation` picks the best truncation on validation data and stores it in the model.
"""),
    ("code", """
scores = model.plugin('nested_dropout').select_truncation(model, [dm.splits['val']], [1, 2, 4, 8, 16, 32], metric='acc')
print({k: round(v, 3) for k, v in scores.items()}, '-> eval_k =', int(model.nested_dropout_eval_k))
plt.figure(figsize=(4, 3)); plt.plot(list(scores), list(scores.values()), 'o-'); plt.xscale('log', base=2)
plt.xlabel('feature units kept'); plt.ylabel('val accuracy');
"""),
    ("markdown", """
Dropout's Dream Land on a second model: one frozen dropout mask per rollout, and MC-dropout spread.
"""),
    ("code", """
L.seed_everything(0)
dreamer = Classifier(input_shape=[1, 8, 8], backbone='mlp', dropout=0.3, plugins=['dream_dropout']).eval()
L.Trainer(max_epochs=2, accelerator='cpu', logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False).fit(dreamer, dm)
x = dm.splits['val']['x'][:4]
plug = dreamer.plugin('dream_dropout')
with plug.dream():
    same = torch.equal(dreamer(x), dreamer(x))
mean, std = plug.mc_predict(lambda: dreamer(x).softmax(-1), n=20)
print('identical within a dream:', same)
print('MC-dropout predicted class:', mean.argmax(-1).tolist(), 'spread of its probability:', std.max(-1).values.round(decimals=3).tolist())
"""),
]
