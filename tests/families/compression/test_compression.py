"""Oracles of the compression family (P44): the discretised priors against closed forms, the range-coded
bitstream against the quantised latents and the rate estimate, and the MV-GMM prior against the factorized
one at equal PSNR on held-out digits."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.compression import CompressionVAE, FactorizedPrior, MVGMPrior
from lightning_vi.families.compression.coder import BitstreamError

pytest.importorskip("constriction")

SEEDS = (0, 1, 2)
LATENT = 16  # one 16-dimensional latent vector per image


def _random_prior(covariance: str, m: int = 2, d: int = 3, k: int = 4, seed: int = 0) -> MVGMPrior:
    torch.manual_seed(seed)
    prior = MVGMPrior(m, d, k, covariance).double()
    with torch.no_grad():
        prior.logits.normal_()
        prior.raw_diag.uniform_(-0.5, 1.0)
        if covariance == "full":
            prior.raw_lower.normal_(0, 0.8)
    return prior


# -- the discretised priors ---------------------------------------------------------------------
def test_diagonal_mvgm_mass_is_mixture_of_products_of_cdf_differences():
    prior = _random_prior("diag")
    y = torch.randint(-4, 5, (7, 2, 3)).double()
    w = torch.softmax(prior.logits.detach(), -1)  # [M, K]
    mu, sd = prior.codebooks.detach(), torch.nn.functional.softplus(prior.raw_diag.detach()) + 0.05
    n = Normal(mu, sd)  # [M, K, d]
    yy = y.unsqueeze(2)
    expected = (w * (n.cdf(yy + 0.5) - n.cdf(yy - 0.5)).prod(-1)).sum(-1).log()
    assert torch.allclose(prior.log_prob(y), expected, atol=1e-10, rtol=0)


def test_full_covariance_mass_sums_to_one_on_the_lattice():
    prior = _random_prior("full", m=1, d=2, k=3)
    grid = torch.tensor(list(itertools.product(range(-30, 31), repeat=2))).double().view(-1, 1, 2)
    total = prior.log_prob(grid).exp().sum().detach()
    assert abs(float(total) - 1.0) < 1e-8


def test_full_covariance_mass_approaches_the_gaussian_density_for_wide_components():
    """Bins much narrower than the component: P(y) ~ N(y; mu, L L^T) * 1 (unit bin volume), which checks the
    chain-rule conditionals (the Cholesky off-diagonals) against torch's MultivariateNormal."""
    torch.manual_seed(0)
    prior = MVGMPrior(1, 3, 1, "full").double()
    a = torch.tensor([[25.0, 0.0, 0.0], [18.0, 14.0, 0.0], [-10.0, 12.0, 9.0]]).double()
    with torch.no_grad():
        prior.raw_diag.copy_(torch.log(torch.expm1(a.diagonal() - 0.05)).view(1, 1, 3))
        prior.raw_lower.copy_(a.tril(-1).view(1, 1, 3, 3))
        prior.codebooks.copy_(torch.tensor([3.0, -2.0, 1.0]).view(1, 1, 3))
    y = torch.tensor([[3.0, -2.0, 1.0], [20.0, 10.0, -5.0], [-15.0, -20.0, 4.0]]).double().view(3, 1, 3)
    ref = MultivariateNormal(torch.tensor([3.0, -2.0, 1.0]).double(), scale_tril=a).log_prob(y.squeeze(1))
    assert torch.allclose(prior.log_prob(y).squeeze(1), ref, atol=2e-3)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_coder_conditionals_chain_to_the_estimated_mass(covariance):
    """prod_i P(y_i | y_<i) from the coder's tables equals P(y) of the rate estimate (chain rule)."""
    prior = _random_prior(covariance)
    y = torch.randint(-3, 4, (5, 2, 3)).double()
    support = torch.arange(-30, 31).double()
    log_chain = torch.zeros(5, 2).double()
    for i in range(3):
        pmf = prior.conditional_pmf(y[..., :i], support)
        assert torch.allclose(pmf.sum(-1), torch.ones(5, 2).double(), atol=1e-9)
        log_chain += pmf.gather(-1, (y[..., i] + 30).long().unsqueeze(-1)).squeeze(-1).log()
    assert torch.allclose(log_chain, prior.log_prob(y), atol=1e-9)


# -- quantisation -------------------------------------------------------------------------------
def test_training_uses_uniform_noise_and_evaluation_rounds():
    torch.manual_seed(0)
    model = CompressionVAE(prior="mvgm", num_groups=1, group_dim=LATENT, latent_gain=8.0)
    x = torch.rand(256, 1, 8, 8)
    with torch.no_grad():
        y = model.analysis(x)
        model.train()
        r1, r2 = model.objective({"x": x})["y"] - y, model.objective({"x": x})["y"] - y
        model.eval()
        e1, e2 = model.objective({"x": x})["y"], model.objective({"x": x})["y"]
    assert r1.abs().max() <= 0.5 and not torch.equal(r1, r2)
    assert abs(float(r1.var()) - 1 / 12) < 0.01 and abs(float(r1.mean())) < 0.01
    y_train = r1 + y
    assert (y_train - torch.round(y_train)).abs().mean() > 0.2  # not integers: noise, not rounding (mean 1/4)
    assert torch.equal(e1, e2) and torch.equal(e1, torch.round(y)) and torch.equal(e1, torch.round(e1))


# -- trained models on held-out digits -----------------------------------------------------------
def _digits():
    x = load_digits_tensors()["x"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[360:]], x[perm[:360]]  # train, held-out (360 images = 23,040 pixels)


def _fit(model: CompressionVAE, train: torch.Tensor, steps: int, seed: int) -> CompressionVAE:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        out = model.objective({"x": train[torch.randint(0, len(train), (128,), generator=g)]})
        loss = out["bpp"] + model.lmbda * out["mse"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _refit_prior(prior, latents: torch.Tensor, steps: int, seed: int):
    """Fit a prior alone (maximum likelihood of the noisy latents) with the transforms frozen."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(steps):
        y = latents[torch.randint(0, len(latents), (256,), generator=g)].reshape(256, *prior.group_shape)
        loss = -prior.log_prob(y + torch.rand(y.shape, generator=g) - 0.5).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return prior


@pytest.fixture(scope="module")
def trained():
    """Per seed: a factorized model trained end to end (its own best transforms), and the MV-GMM model with
    the same transforms and an MV-GMM prior fitted to those latents: equal reconstructions, so equal PSNR."""
    train, held_out = _digits()
    out = {}
    for seed in SEEDS:
        torch.manual_seed(seed)
        fact = _fit(CompressionVAE(prior="factorized", num_groups=LATENT, group_dim=1, num_components=4,
                                   lmbda=1000.0, latent_gain=8.0), train, 300, seed)
        mvgm = CompressionVAE(prior="mvgm", num_groups=1, group_dim=LATENT, num_components=32, lmbda=1000.0,
                              latent_gain=8.0)
        mvgm.encoder, mvgm.decoder = fact.encoder, fact.decoder
        with torch.no_grad():
            latents = fact.analysis(train)
        _refit_prior(mvgm.prior, latents, 200, seed)
        out[seed] = (fact, mvgm.eval())
    return out, held_out


def test_bitstream_decodes_to_the_quantised_latents_and_matches_the_estimate(trained):
    models, x = trained
    pixels = x.shape[0] * 64
    for model in models[0]:
        data = model.compress(x)
        y_hat, x_hat = model.decompress(data)
        assert torch.equal(y_hat, model.quantized_latents(x))
        assert torch.allclose(x_hat, model(x), atol=1e-6)
        bpp_file, bpp_est = 8 * len(data) / pixels, model.estimated_bits(x) / pixels
        assert abs(bpp_file / bpp_est - 1) < 0.02, (model.prior_kind, bpp_file, bpp_est)
        assert bpp_file > bpp_est  # the header and the coder's flush cost a little, never less than the model


def test_mvgm_prior_needs_fewer_bits_than_factorized_at_equal_psnr(trained):
    models, x = trained
    for seed, (fact, mvgm) in models.items():
        assert torch.equal(fact(x), mvgm(x))  # same transforms: same reconstructions, same PSNR
        b_fact, b_mvgm = fact.estimated_bits(x), mvgm.estimated_bits(x)
        assert b_mvgm < 0.9 * b_fact, (seed, b_mvgm / b_fact)
    data_f, data_m = models[0][0].compress(x), models[0][1].compress(x)
    assert len(data_m) < 0.9 * len(data_f)  # and in the files


def test_bitstream_of_another_prior_is_refused(trained):
    models, x = trained
    fact, mvgm = models[0]
    with pytest.raises(BitstreamError, match="prior='factorized'"):
        mvgm.decompress(fact.compress(x[:4]))
    with pytest.raises(BitstreamError, match="magic"):
        mvgm.decompress(b"JUNK" + bytes(20))


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lmbda", [0.0, -1.0])
def test_nonpositive_lambda_is_refused(lmbda):
    with pytest.raises(ValueError, match=r"lmbda=.* is out of range; allowed: \(0.0, inf\)"):
        CompressionVAE(lmbda=lmbda)


def test_wrong_image_shape_is_refused():
    model = CompressionVAE(input_shape=[1, 8, 8])
    with pytest.raises(ValueError, match=r"images has shape \(2, 1, 16, 16\); expected \(\*, 1, 8, 8\)"):
        model.compress(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="input_shape"):
        CompressionVAE(input_shape=[64])


def test_unknown_prior_is_refused():
    with pytest.raises(ValueError, match=r"prior='gmm' is not allowed; choose one of \['mvgm', 'factorized'\]"):
        CompressionVAE(prior="gmm")


def test_coding_without_constriction_names_the_install_command(monkeypatch):
    import sys

    model = CompressionVAE()
    monkeypatch.setitem(sys.modules, "constriction", None)  # as if not installed
    with pytest.raises(ImportError, match=r"needs constriction: pip install 'lightning-vi\[compression\]'"):
        model.compress(torch.rand(2, 1, 8, 8))


# -- Lightning and the command line --------------------------------------------------------------
def test_fit_test_and_command_line_round_trip(tmp_path):
    import lightning as L
    import numpy as np

    from lightning_vi.data.digits import DigitsDataModule
    from lightning_vi.families.compression.__main__ import main

    L.seed_everything(0)
    model = CompressionVAE(num_groups=2, group_dim=8, num_components=8, latent_gain=8.0)
    dm = DigitsDataModule(batch_size=128)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    assert math.isfinite(float(trainer.callback_metrics["test/bpp_file"]))
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    info = main(["compress", "--ckpt", str(ckpt), "--digits", "test", "--out", str(tmp_path / "d.lvic")])
    assert info["bytes"] == (tmp_path / "d.lvic").stat().st_size
    main(["decompress", "--ckpt", str(ckpt), "--in", str(tmp_path / "d.lvic"), "--out", str(tmp_path / "r.npy")])
    dm.setup()
    x = dm.splits["test"]["x"]
    assert np.allclose(np.load(tmp_path / "r.npy"), model.eval()(x).detach().numpy(), atol=1e-6)
