"""Writes the fixtures of this folder with the code BEFORE the parts refactor: run it with the tree of main at
9092eb7 on PYTHONPATH (git archive 9092eb7 lightning_vi | tar -x -C /tmp/old; PYTHONPATH=/tmp/old python make_old.py .).
The quickstart-sized checkpoint goes to /tmp (1 MB); its outputs are in old_outputs.pt but it is not committed."""
import sys, torch, lightning as L
from lightning_vi.families.vae import VAE, CVAE, HVAE, VQVAE, CEVAE
from lightning_vi.data import DigitsDataModule
out_dir = sys.argv[1]
def save(model, path, fit=False, dm=None):
    tr = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    if fit:
        tr.fit(model, dm)
    else:
        tr.strategy.connect(model)
    tr.save_checkpoint(path, weights_only=fit is False)
L.seed_everything(0)
# quickstart-like conv VAE on 16x16 digits, trained 2 steps
q = VAE(input_shape=[1, 16, 16], latent_dim=8, architecture="conv", conv_channels=[32, 64], likelihood="bernoulli",
        beta=1.0, iwae_k=64, optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.002}})
save(q, "/tmp/vaecore_old.ckpt", fit=True, dm=DigitsDataModule(image_size=16, batch_size=128))
g = torch.Generator().manual_seed(0)
outs = {"quickstart": (torch.rand(4, 1, 16, 16, generator=g), None)}
q.eval(); outs["quickstart"] = (outs["quickstart"][0], q(outs["quickstart"][0]).detach())
tiny = {
    "vae_linear": VAE(input_shape=[6], latent_dim=2, architecture="linear", likelihood="gaussian", beta=0.5, k=1),
    "vae_mlp_iwae": VAE(input_shape=[1, 8, 8], latent_dim=2, hidden_dims=[8], likelihood="bernoulli", objective="iwae", k=3,
                        estimator="score", baseline="learned"),
    "cvae_linear": CVAE(input_shape=[6], latent_dim=2, architecture="linear", condition_dim=3, prior="learned",
                        gsnn_weight=0.2, likelihood="gaussian", beta=0.7),
    "cvae_conv": CVAE(input_shape=[1, 8, 8], latent_dim=2, architecture="conv", conv_channels=[4], hidden_dims=[8],
                      condition_dim=3, likelihood="bernoulli"),
    "hvae_linear": HVAE(input_shape=[6], latent_dims=[3, 2], architecture="linear", likelihood="gaussian", beta=[1.0, 1.5]),
    "hvae_conv": HVAE(input_shape=[1, 8, 8], latent_dims=[3, 2], architecture="conv", conv_channels=[4], hidden_dims=[8],
                      likelihood="bernoulli"),
    "vqvae": VQVAE(input_shape=[1, 8, 8], hidden_dims=[8], num_latents=2, embedding_dim=2, codebook_size=4, obs_std=0.3),
    "cevae": CEVAE(input_shape=[1, 8, 8], latent_dim=2, hidden_dims=[8], ce_weight=0.5, likelihood="gaussian"),
}
for name, m in tiny.items():
    save(m, f"{out_dir}/old_{name}.ckpt")
    m.eval()
    shape = m.input_shape
    x = torch.rand(3, *shape, generator=g)
    y = m(x, torch.tensor([0, 1, 2])) if name.startswith("cvae") else m(x)
    outs[name] = (x, y.detach())
torch.save(outs, f"{out_dir}/old_outputs.pt")
print({k: v[1].shape for k, v in outs.items()})

# old_hvae_linear_resume.ckpt: 3 Adam steps, optimizer state included (test of resuming a pre-refactor fit)
from lightning_vi.data import PPCADataModule

L.seed_everything(0)
m = HVAE(input_shape=[6], latent_dims=[2, 2], architecture="linear", likelihood="gaussian", lr=0.01)
tr = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=0, accelerator="cpu")
tr.fit(m, PPCADataModule(n=200, dim=6, scales=[2.0, 1.0], sigma=0.5, batch_size=100))
tr.save_checkpoint(f"{out_dir}/old_hvae_linear_resume.ckpt")
