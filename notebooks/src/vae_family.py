"""Source of notebooks/vae_family.ipynb (regenerate: python notebooks/src/build.py vae_family)."""

CELLS = [
    ("markdown", """
# The VAE family in lightning-vi
Composable objectives on a conjugate model, a conditional VAE, and posterior-collapse diagnostics (see docs/vae.md).
"""),
    ("code", """
import math, torch, lightning as L
from torch.distributions import Normal
from lightning_vi.core.objectives import VariationalObjective, iwae_bound
torch.set_num_threads(1); L.seed_everything(0)
# Conjugate model z ~ N(0,1), x|z ~ N(z, 0.5): IWAE with the prior as guide rises towards log p(x)
x = torch.full((2000,), 1.5)
log_px = Normal(0.0, math.sqrt(1.5)).log_prob(x)[0]
q = Normal(torch.zeros_like(x), torch.ones_like(x))
for k in (1, 4, 16, 64):
    z = q.sample((k,))
    lw = Normal(z, math.sqrt(0.5)).log_prob(x) + Normal(0., 1.).log_prob(z) - q.log_prob(z)
    print(f"K={k:3d}  IWAE={float(iwae_bound(lw).mean()):.4f}  log p(x)={float(log_px):.4f}")
"""),
    ("markdown", """
## A conditional VAE on digits, sampled for requested labels
"""),
    ("code", """
from lightning_vi.data import DigitsDataModule
from lightning_vi.families.vae import CVAE
from lightning_vi.callbacks.diagnostics import LatentDiagnostics
dm = DigitsDataModule(batch_size=256)
model = CVAE(input_shape=[1, 8, 8], latent_dim=4, condition_dim=10, hidden_dims=[128], prior="learned",
             gsnn_weight=0.2, objective="iwae", num_samples=4, lr=3e-3)
diag = LatentDiagnostics(images=False)
trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, callbacks=[diag])
trainer.fit(model, dm)
print({k: round(float(v), 3) for k, v in trainer.callback_metrics.items() if k.startswith("diag/")})
"""),
    ("code", """
import matplotlib.pyplot as plt
from lightning_vi.callbacks import make_grid
s = model.sample(30, condition=torch.arange(30) % 10)
plt.imshow(make_grid(s, nrow=10)[0], cmap="gray"); plt.axis("off"); plt.title("one column per label 0-9");
"""),
]
