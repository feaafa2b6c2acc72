"""VAE oracles: PPCA maximum likelihood, analytic vs Monte Carlo KL, IWAE ordering, checkpoint reload."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from helpers import quiet_trainer
from lightning_vi.core.distributions import diag_normal, gaussian_kl_per_dim, standard_normal_like
from lightning_vi.data import DigitsDataModule, PPCADataModule, ppca_max_loglik
from lightning_vi.families.vae import VAE


def test_linear_vae_elbo_matches_ppca_max_likelihood(tmp_path):
    """Lucas et al. (2019): at the optimum the linear VAE's ELBO equals the PPCA max log-likelihood."""
    L.seed_everything(0)
    dm = PPCADataModule(n=4000, dim=10, scales=[3.0, 2.0, 1.0], sigma=0.5, batch_size=4000,
                        val_fraction=0.0, test_fraction=0.0)
    dm.setup()
    x = dm.splits["train"]["x"]
    target = ppca_max_loglik(x, latent_dim=3)
    model = VAE(input_shape=[10], latent_dim=3, architecture="linear",
                optimizer=functools.partial(torch.optim.Adam, lr=0.03))
    with torch.no_grad():
        model.decoder[0][0].bias.copy_(x.mean(0))
    quiet_trainer(tmp_path, max_epochs=1500, limit_val_batches=0).fit(model, dm)
    with torch.no_grad():
        elbo = torch.stack([model.objective({"x": x})["elbo"] for _ in range(50)]).mean().item()
        iwae_100 = model.iwae(x, 100).mean().item()
    assert abs(elbo - target) / abs(target) < 0.01, (elbo, target)
    assert iwae_100 >= elbo - 1e-3
    assert abs(iwae_100 - target) / abs(target) < 0.01


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, log_var = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g) * 0.5
    analytic = gaussian_kl_per_dim(mu, log_var).sum(-1)
    q, p = diag_normal(mu, log_var), standard_normal_like(mu)
    z = q.sample((200_000,))
    samples = q.log_prob(z) - p.log_prob(z)
    mc, se = samples.mean(0), samples.std(0) / 200_000**0.5
    assert torch.all((mc - analytic).abs() < 4 * se + 1e-4), (mc, analytic, se)
    assert torch.allclose(analytic, torch.distributions.kl_divergence(q, p), atol=1e-5)


@pytest.fixture(scope="module")
def digits_vae(tmp_path_factory):
    L.seed_everything(1)
    dm = DigitsDataModule(batch_size=128)
    model = VAE(input_shape=[1, 8, 8], latent_dim=4, hidden_dims=[128], likelihood="bernoulli", lr=3e-3)
    quiet_trainer(tmp_path_factory.mktemp("vae"), max_epochs=4).fit(model, dm)
    return model, dm


def test_iwae_bound_rises_with_k_and_tops_the_elbo(digits_vae):
    model, dm = digits_vae
    x = dm.splits["test"]["x"]
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack([model.objective({"x": x})["elbo"] for _ in range(20)]).mean().item()
        bounds = [model.iwae(x, k).mean().item() for k in (1, 8, 64)]
    assert abs(bounds[0] - elbo) < 0.5  # K=1 is the ELBO (up to Monte Carlo noise)
    assert bounds[0] < bounds[1] < bounds[2], bounds
    assert bounds[2] > elbo + 0.1, (bounds, elbo)


def test_test_stage_logs_iwae(digits_vae, tmp_path):
    model, dm = digits_vae
    out = quiet_trainer(tmp_path).test(model, dm, verbose=False)[0]
    assert {"test/iwae", "test/elbo", "test/recon", "test/kl", "test/loss"} <= set(out)
    assert out["test/iwae"] > out["test/elbo"]


def test_checkpoint_reload_gives_identical_reconstructions(digits_vae, tmp_path):
    model, dm = digits_vae
    trainer = quiet_trainer(tmp_path)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "vae.ckpt")
    clone = VAE.load_from_checkpoint(tmp_path / "vae.ckpt")
    x = dm.splits["test"]["x"][:16]
    model.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))
        torch.manual_seed(3)
        a = model.sample(8, generator=torch.Generator().manual_seed(5))
        b = clone.sample(8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_sample_shapes_and_ranges(architecture):
    model = VAE(input_shape=[1, 16, 16], architecture=architecture, likelihood="bernoulli")
    s = model.sample(5)
    assert s.shape == (5, 1, 16, 16) and s.min() >= 0 and s.max() <= 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"architecture": "transformer"}, r"architecture='transformer'.*mlp"),
        ({"likelihood": "poisson"}, r"likelihood='poisson'.*gaussian"),
        ({"kl_weight": -1.0}, r"kl_weight=-1.0"),
        ({"iwae_k": 0}, r"iwae_k=0"),
        ({"architecture": "conv", "input_shape": [1, 10, 10]}, r"divisible"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAE(**kwargs)
