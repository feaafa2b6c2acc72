"""SAGE (Liu et al. 2023, P48) oracles on the 8x8-digits class-conditional DDPM (10 DDIM steps).

Independent judges: the surrogate is an MLP classifier, the transfer judge a multinomial logistic
regression trained separately on real digits; chance = the judge's error on random samples. Each oracle
is checked on 3 seeds (search latents, ES noise and embedding-search latents)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vi.families.diffusion import sage as S
from lightning_vi.families.diffusion.ddpm import DDPM

SEEDS = (0, 1, 2)
N, ITERS, STEPS = 50, 20, 10


@pytest.fixture(scope="module")
def judges(digits):
    train, _ = digits
    surrogate = S.train_digits_classifier(train["x"], train["y"], seed=0, steps=300)
    second = S.train_digits_classifier(train["x"], train["y"], hidden=0, seed=100, steps=300, lr=0.05)
    return surrogate, second, S.PCADensity(train["x"])


def dev(z):
    """Mean |‖z‖/sqrt(d) - 1|: distance from the N(0, I) shell."""
    return float((z.flatten(1).norm(dim=1) / math.sqrt(z[0].numel()) - 1).abs().mean())


@pytest.fixture(scope="module")
def runs(digits_prior, judges):
    surrogate, second, density = judges
    out = {}
    y = torch.arange(N) % 10
    for seed in SEEDS:
        g = lambda k: torch.Generator().manual_seed(seed * 100 + k)  # noqa: E731
        rand = S.random_latents(digits_prior, surrogate, torch.arange(N * ITERS) % 10, STEPS, generator=g(1))
        chance = float((S.labels_of(second, rand.x0) != rand.y).float().mean())
        start = torch.randn((N, 1, 8, 8), generator=g(2))
        grad = S.latent_search(digits_prior, surrogate, y, x_T=start, iters=ITERS, lr=0.1, reg=0.1, steps=STEPS)
        free = S.gradient_free_search(digits_prior, surrogate, y, iters=ITERS, reg=0.1, steps=STEPS, generator=g(3))
        delta = S.embedding_search(digits_prior, surrogate, 1, 7, n=32, iters=60, steps=STEPS, generator=g(4))
        out[seed] = {
            "random": S.failure_report(rand, second, density, chance),
            "grad": S.failure_report(grad, second, density, chance),
            "free": S.failure_report(free, second, density, chance),
            "dev_start": dev(start), "dev_grad": dev(grad.x_T),
            "steer": S.steer_rate(digits_prior, second, 1, 7, delta, n=200, steps=STEPS, generator=g(5)),
            "steer_base": S.steer_rate(digits_prior, second, 1, 7, None, n=200, steps=STEPS, generator=g(5)),
        }
    print("SAGE runs", out)
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_searched_failure_rate_far_above_random(runs, seed):
    r = runs[seed]
    # equal budget: ITERS sampler calls per searched latent vs ITERS random latents per searched one
    assert r["random"]["failure_rate"] <= 0.25
    assert r["grad"]["failure_rate"] >= 0.55
    assert r["grad"]["failure_rate"] >= r["random"]["failure_rate"] + 0.35
    assert r["free"]["failure_rate"] >= r["random"]["failure_rate"] + 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_failures_transfer_to_second_classifier(runs, seed):
    r = runs[seed]
    chance = r["grad"]["chance"]
    assert 0.0 < chance < 0.3
    assert r["grad"]["transfer"] >= chance + 0.4
    assert r["free"]["transfer"] >= chance + 0.4
    # the judge is independent: it does not simply repeat the surrogate on the prior's own failures
    assert r["random"]["n_failures"] >= 100 and r["random"]["transfer"] <= 0.95


@pytest.mark.parametrize("seed", SEEDS)
def test_adversarial_embedding_steers_to_target(runs, seed):
    r = runs[seed]  # class 1 + delta -> labelled 7 by the independent classifier
    assert r["steer_base"] <= 0.1
    assert r["steer"] >= 0.9


@pytest.mark.parametrize("seed", SEEDS)
def test_regulariser_keeps_latents_on_gaussian_shell(runs, seed):
    r = runs[seed]
    assert r["dev_grad"] <= r["dev_start"] - 0.01


@pytest.mark.parametrize("seed", SEEDS)
def test_failures_as_in_distribution_as_random_failures(runs, seed):
    r = runs[seed]  # human proxy: PCA reconstruction check against real digits
    assert r["grad"]["in_distribution"] >= r["random"]["in_distribution"] - 0.15


def test_gradient_reaches_initial_noise_through_sampler(digits_prior):
    """Directional derivative of the DDIM sample in x_T against a central finite difference."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn((4, 1, 8, 8), generator=g)
    v = torch.randn((4, 1, 8, 8), generator=g)
    y = torch.arange(4)
    f = lambda x, **kw: S.ddim_decode(digits_prior, x, y, STEPS, **kw).pow(2).sum()  # noqa: E731
    zz = z.clone().requires_grad_(True)
    (gz,) = torch.autograd.grad(f(zz), zz)
    with torch.no_grad():
        h = 1e-2
        fd = (f(z + h * v) - f(z - h * v)) / (2 * h)
    ad = (gz * v).sum()
    print("directional derivative", float(ad), "finite difference", float(fd))
    assert abs(float(fd)) > 1e-2
    assert abs(float(ad - fd)) <= 0.02 * abs(float(fd))
    zc = z.clone().requires_grad_(True)  # checkpointed path: same gradient
    (gc,) = torch.autograd.grad(f(zc, checkpoint=True), zc)
    assert torch.allclose(gc, gz, atol=1e-5)


def test_bad_inputs(digits, digits_prior):
    train, _ = digits
    nine = S.train_digits_classifier(train["x"][:50], train["y"][:50] % 9, num_classes=9, steps=1)
    with pytest.raises(ValueError, match=r"9 classes.*num_classes=10"):
        S.latent_search(digits_prior, nine, torch.arange(3), iters=1)
    with pytest.raises(ValueError, match=r"9 classes.*num_classes=10"):
        S.embedding_search(digits_prior, nine, 1, 7, iters=1)
    sk9 = S.SklearnClassifier(train["x"][:60], train["y"][:60] % 9)
    with pytest.raises(ValueError, match=r"9 classes.*num_classes=10"):
        S.check_pair(digits_prior, sk9)
    uncond = DDPM(input_shape=[1, 8, 8], num_classes=0, hidden=16, depth=1)
    ten = S.train_digits_classifier(train["x"][:50], train["y"][:50], steps=1)
    with pytest.raises(ValueError, match=r"num_classes=0.*class-conditional"):
        S.gradient_free_search(uncond, ten, torch.arange(3), iters=1)
    with pytest.raises(ValueError, match=r"target=12.*\[0, 9\]"):
        S.embedding_search(digits_prior, ten, 1, 12, iters=1)


def test_command_writes_results(digits_prior_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint='nope.ckpt' does not exist.*ddpm_digits8.yaml"):
        S.main(["--config", "configs/diffusion/sage.yml", "--out", str(tmp_path), "--set", "checkpoint=nope.ckpt"])
    res = S.main(["--config", "configs/diffusion/sage.yml", "--out", str(tmp_path),
                  "--set", f"checkpoint={digits_prior_checkpoint}", "n=10", "iters=3", "classifier_steps=20",
                  "embedding_iters=2"])
    assert (tmp_path / "results.json").is_file()
    assert set(res) == {"random", "gradient", "gradient_free", "embedding"}
    assert 0.0 <= res["gradient"]["failure_rate"] <= 1.0


def test_appended_token_only_on_conditioned_rows(digits_prior):
    """Under classifier-free guidance the token goes into the conditional pass only: the embedding of
    null-token rows is unchanged, the others move by exactly delta."""
    emb = digits_prior.network(True).emb
    t = torch.full((4,), 500)
    y = torch.tensor([1, 10, 3, 10])  # 10 = null token
    delta = torch.randn(emb.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = emb(t, y)
        with S.added_embedding(digits_prior.network(True), delta, digits_prior.num_classes):
            moved = emb(t, y)
        after = emb(t, y)  # hook removed
    assert torch.allclose(moved[[0, 2]] - base[[0, 2]], delta.expand(2, -1), atol=1e-5)
    assert torch.equal(moved[[1, 3]], base[[1, 3]])
    assert torch.equal(after, base)
