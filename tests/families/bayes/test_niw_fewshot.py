"""NIW few-shot (P27): closed forms vs direct computations, episode sampler, held-out oracle, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import MultivariateNormal, Wishart

from lightning_vi.data.episodes import EpisodeDataModule, EpisodeSampler
from lightning_vi.families.bayes.niw_fewshot import NIWFewShot, expected_gaussian_kl, local_posterior, niw_kl
from lightning_vi.registry import FAMILIES


def _spd(d: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return scale * (a @ a.T / d + torch.eye(d, dtype=torch.float64))


def _niw_sample(m, l, lam, nu, n, g):
    """(mu, Sigma) ~ NIW: Sigma^-1 ~ Wishart(nu, precision_matrix=Lambda), mu | Sigma ~ N(m, Sigma / l)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    prec = Wishart(torch.tensor(nu, dtype=torch.float64), precision_matrix=lam).sample((n,))
    sigma = torch.linalg.inv(prec)
    mu = MultivariateNormal(m, covariance_matrix=sigma / l).sample()
    return mu, sigma, prec


def test_local_posterior_matches_gaussian_conditioning() -> None:
    """The one-time iterate equals p(theta | z_1..z_K) computed by conditioning the joint Gaussian of
    (theta, z_1..z_K) with theta ~ N(m0, Lambda/nu), z_k = theta + N(0, S)."""
    g = torch.Generator().manual_seed(0)
    d, k, nu = 3, 4, 7.0
    m0, lam = torch.randn(d, generator=g, dtype=torch.float64), _spd(d, g)
    s = torch.rand(d, generator=g, dtype=torch.float64) + 0.3
    z = torch.randn(k, d, generator=g, dtype=torch.float64)
    m, chol = local_posterior(z.sum(0, keepdim=True), torch.tensor([float(k)], dtype=torch.float64), m0,
                              nu * torch.linalg.inv(lam), s)
    p = lam / nu  # prior covariance of theta
    c_tz = p.repeat(1, k)  # Cov(theta, [z_1..z_K])
    c_zz = p.repeat(k, k) + torch.block_diag(*[torch.diag(s)] * k)
    gain = c_tz @ torch.linalg.inv(c_zz)
    mean = m0 + gain @ (z - m0).flatten()
    cov = p - gain @ c_tz.T
    torch.testing.assert_close(m[0], mean)
    torch.testing.assert_close(torch.cholesky_inverse(chol[0]), cov)


@pytest.mark.filterwarnings("ignore:Singular sample")
def test_niw_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(1)
    d = 2
    p1 = (torch.randn(d, generator=g, dtype=torch.float64), 2.0, _spd(d, g), 6.0)
    p0 = (torch.zeros(d, dtype=torch.float64), 1.0, _spd(d, g, 2.0), 4.0)
    mu, sigma, prec = _niw_sample(*p1, 200_000, g)

    def logq(m, l, lam, nu):  # log density up to the Jacobian of Sigma -> Sigma^-1 (cancels in the ratio)
        w = Wishart(torch.tensor(nu, dtype=torch.float64), precision_matrix=lam).log_prob(prec)
        return w + MultivariateNormal(m, covariance_matrix=sigma / l).log_prob(mu)

    mc = (logq(*p1) - logq(*p0)).mean()
    exact = niw_kl(p1[0], torch.tensor(p1[1]), p1[2], torch.tensor(p1[3]),
                   p0[0], torch.tensor(p0[1]), p0[2], torch.tensor(p0[3]))
    assert exact > 0
    assert abs(float(exact) - float(mc)) < 0.02 * float(exact) + 0.01, (float(exact), float(mc))


@pytest.mark.filterwarnings("ignore:Singular sample")
def test_expected_local_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(2)
    d = 3
    m0, l0, lam, nu = torch.randn(d, generator=g, dtype=torch.float64), 1.5, _spd(d, g), 8.0
    m, v = torch.randn(d, generator=g, dtype=torch.float64), _spd(d, g, 0.3)
    mu, sigma, _ = _niw_sample(m0, l0, lam, nu, 200_000, g)
    q = MultivariateNormal(m, covariance_matrix=v)
    mc = torch.distributions.kl_divergence(q, MultivariateNormal(mu, covariance_matrix=sigma)).mean()
    exact = expected_gaussian_kl(m, v, m0, torch.tensor(l0), lam, torch.tensor(nu))
    assert abs(float(exact) - float(mc)) < 0.02 * float(exact), (float(exact), float(mc))


def test_episode_sampler_draws_valid_episodes() -> None:
    y = torch.arange(10).repeat_interleave(torch.arange(20, 30))  # unequal class sizes
    sampler = EpisodeSampler(y, [1, 3, 5, 7, 9], n_way=3, k_shot=2, n_query=4)
    idx = sampler.sample(500, torch.Generator().manual_seed(0))
    assert idx["support"].shape == (500, 3, 2) and idx["query"].shape == (500, 3, 4)
    both = torch.cat([idx["support"], idx["query"]], -1)  # [E, N, K+Q]
    assert torch.equal(y[both], idx["classes"].unsqueeze(-1).expand_as(both))  # right class per slot
    flat = both.flatten(1).sort(-1).values
    assert bool((flat[:, 1:] != flat[:, :-1]).all())  # no example twice within an episode
    assert set(idx["classes"].unique().tolist()) == {1, 3, 5, 7, 9}
    assert bool((idx["classes"].sort(-1).values.diff(dim=-1) > 0).all())  # distinct classes


def test_bad_input() -> None:
    y = torch.arange(5).repeat(10)
    with pytest.raises(ValueError, match=r"n_way=6 is out of range; allowed: \[1, 5\]"):
        EpisodeSampler(y, range(5), n_way=6, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match=r"k_shot=0 is out of range"):
        EpisodeSampler(y, range(5), n_way=5, k_shot=0, n_query=1)
    with pytest.raises(ValueError, match=r"n_query=0 is out of range"):
        EpisodeSampler(y, range(5), n_way=5, k_shot=1, n_query=0)
    with pytest.raises(ValueError, match=r"k_shot \+ n_query = 12 exceeds the 10 examples"):
        EpisodeSampler(y, range(5), n_way=5, k_shot=2, n_query=10)
    with pytest.raises(ValueError, match=r"n_way=6 is out of range; allowed: \[1, 5\]"):
        EpisodeDataModule(n_way=6)
    with pytest.raises(ValueError, match=r"disjoint; both contain \[4\]"):
        EpisodeDataModule(train_classes=[0, 1, 2, 3, 4], test_classes=[4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match=r"dataset='omniglot' is not allowed; choose one of \['digits', 'glyphs'\]"):
        EpisodeDataModule(dataset="omniglot")
    with pytest.raises(ValueError, match=r"prior_scale=0\.0 is out of range"):
        NIWFewShot(prior_scale=0.0)
    with pytest.raises(ValueError, match=r"batch\['x'\] has shape"):
        NIWFewShot(input_shape=[1, 8, 8]).objective({
            "x": torch.zeros(2, 3, 64), "y": torch.zeros(2, 3, dtype=torch.long),
            "support_x": torch.zeros(2, 5, 1, 8, 8), "support_y": torch.arange(5).repeat(2, 1),
            "classes": torch.zeros(2, 5)})
    assert FAMILIES.get("niw_fewshot") is NIWFewShot


def _finetuned_head_accuracy(backbone: torch.nn.Module, episodes: dict, steps: int = 100, lr: float = 0.01):
    """Per-episode query accuracy of a fresh N-way linear head fitted (CE, Adam) to each support set on
    frozen features; all episodes at once (one head per episode, independent losses)."""
    e, n = episodes["classes"].shape
    with torch.no_grad():
        fs = backbone(episodes["support_x"].flatten(0, 1)).view(e, -1, backbone_dim(backbone))
        fq = backbone(episodes["x"].flatten(0, 1)).view(e, -1, fs.shape[-1])
    w = torch.zeros(e, n, fs.shape[-1], requires_grad=True)
    b = torch.zeros(e, n, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        logits = fs @ w.transpose(1, 2) + b[:, None]
        loss = F.cross_entropy(logits.flatten(0, 1), episodes["support_y"].flatten(), reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((fq @ w.transpose(1, 2) + b[:, None]).argmax(-1) == episodes["y"]).float().mean(-1)


def backbone_dim(backbone: torch.nn.Module) -> int:
    return backbone.net[-1].out_features


def test_beats_finetuned_head_on_held_out_5way_1shot(tmp_path) -> None:
    """Oracle (P27): on 200 held-out 5-way 1-shot episodes (glyph classes 64..99, never seen in training),
    NIW-Meta beats a same-backbone network trained with plain CE on the 64 meta-train classes whose new
    linear head is fine-tuned on each support set. Same backbone, optimizer, learning rate and number of
    gradient steps for both. Measured (seed 0): NIW 0.741, fine-tune 0.701, paired difference
    0.040 +- 0.007 (standard error over episodes); seeds 1 and 2 (other glyph sets): +0.023, +0.052."""
    import lightning as L
    from helpers import quiet_trainer

    from lightning_vi.nn.backbones import build_backbone

    steps, batch = 1000, 8
    L.seed_everything(0)
    dm = EpisodeDataModule(dataset="glyphs", n_way=5, k_shot=1, n_query=15, episodes_per_epoch=steps * batch,
                           batch_size=batch, num_test_episodes=200, seed=0)
    model = NIWFewShot(input_shape=[1, 10, 10], hidden_dims=[256], feature_dim=64, lr=3e-3)
    quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0).fit(model, dm)
    test = dm.datasets["test"].__getitems__(list(range(200)))
    assert set(test["classes"].unique().tolist()) <= set(range(64, 100))
    niw = (model.eval()(test).argmax(-1) == test["y"]).float().mean(-1)

    # Baseline: plain CE on all meta-train images (labels 0..63), same backbone and budget.
    torch.manual_seed(0)
    data, train = dm.data, torch.isin(dm.data["y"], torch.tensor(dm.train_classes))
    x, y = data["x"][train], data["y"][train]
    backbone = build_backbone("mlp", (1, 10, 10), 64, [256])
    head = torch.nn.Linear(64, 64)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        loss = F.cross_entropy(head(backbone(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    ft = _finetuned_head_accuracy(backbone.eval(), test)

    diff = niw - ft
    se = float(diff.std() / math.sqrt(len(diff)))
    print(f"NIW {float(niw.mean()):.3f}, fine-tuned head {float(ft.mean()):.3f}, "
          f"difference {float(diff.mean()):.3f} +- {se:.3f}")
    assert float(ft.mean()) > 0.5  # the baseline is a real one (chance is 0.2)
    assert float(diff.mean()) > 0.02 and float(diff.mean()) > 2.5 * se


def test_episode_data_module_splits_classes() -> None:
    dm = EpisodeDataModule(n_way=5, k_shot=2, n_query=3, episodes_per_epoch=64, batch_size=16, train_rotations=4)
    train = next(iter(dm.train_dataloader()))
    assert train["support_x"].shape == (16, 10, 1, 8, 8) and train["x"].shape == (16, 15, 1, 8, 8)
    assert torch.equal(train["support_y"][0], torch.arange(5).repeat_interleave(2))
    digits, rotation = train["classes"] % 10, train["classes"] // 10
    assert bool((digits < 5).all()) and set(rotation.unique().tolist()) <= {0, 1, 2, 3} and int(rotation.max()) > 0
    test = next(iter(dm.test_dataloader()))
    assert bool((test["classes"] >= 5).all() and (test["classes"] <= 9).all())
    again = EpisodeDataModule(n_way=5, k_shot=2, n_query=3, train_rotations=4)
    assert torch.equal(next(iter(again.test_dataloader()))["x"], test["x"])  # fixed held-out episodes
    glyphs = EpisodeDataModule(dataset="glyphs")
    glyphs.setup()
    assert glyphs.example_shape == (1, 10, 10) and glyphs.test_classes == list(range(64, 100))


def test_lightning_fit_test_and_reload(tmp_path) -> None:
    import lightning as L
    from helpers import quiet_trainer

    L.seed_everything(0)
    dm = EpisodeDataModule(dataset="glyphs", episodes_per_epoch=32, num_val_episodes=8, num_test_episodes=16,
                           batch_size=8)
    model = NIWFewShot(hidden_dims=[32], feature_dim=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, dm)
    res = trainer.test(model, dm, verbose=False)[0]
    assert {"test/acc", "test/pred_nll", "test/local_kl", "test/global_kl"} <= set(res)
    path = tmp_path / "niw.ckpt"
    trainer.save_checkpoint(path)
    loaded = NIWFewShot.load_from_checkpoint(path).eval()
    batch = dm.datasets["test"].__getitems__(list(range(4)))
    torch.testing.assert_close(loaded(batch), model.eval()(batch))
