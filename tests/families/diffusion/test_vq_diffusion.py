"""VQ-Diffusion (P42) oracles: the mask-and-replace transition against the paper's closed form (Gu et al.
2022, Eq. 7-8), the posterior against Bayes' rule by enumeration, class-conditional digits recognised by an
independent classifier, classifier-free guidance, a self-contained checkpoint and bad input."""

from __future__ import annotations

import itertools

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import quiet_trainer
from lightning_vi.data.base import TensorDictDataset
from lightning_vi.families.diffusion.mask_replace import MaskReplaceSchedule, q_sample
from lightning_vi.families.diffusion.vq_diffusion import VQDiffusion, vlb_terms
from lightning_vi.families.vae.vqvae import VQVAE
from lightning_vi.metrics.class_agreement import class_agreement, fit_digits_classifier


# -- an independent construction of the paper's schedule and matrices (row convention) ----------
def paper_bars(T: int, a1=0.99999, aT=0.000009, g1=0.000009, gT=0.9):
    """alpha_bar_t, gamma_bar_t for t = 0..T, linear in t between the paper's end points (Sec. 4.1)."""
    abar = [1.0] + [a1 + (aT - a1) * (t - 1) / (T - 1) for t in range(1, T + 1)]
    gbar = [0.0] + [g1 + (gT - g1) * (t - 1) / (T - 1) for t in range(1, T + 1)]
    return abar, gbar


def mask_replace_matrix(a: float, g: float, K: int) -> np.ndarray:
    """[K+1, K+1] with M[i,i] = a + b, M[i,j] = b, M[i,MASK] = g, b = (1 - a - g) / K, MASK absorbing."""
    b = (1 - a - g) / K
    m = np.zeros((K + 1, K + 1))
    for i in range(K):
        for j in range(K):
            m[i, j] = a + b if i == j else b
        m[i, K] = g
    m[K, K] = 1.0
    return m


def paper_steps(T: int, K: int) -> list[np.ndarray]:
    """Q_1..Q_T from alpha_t = abar_t / abar_{t-1}, gamma_t = 1 - (1 - gbar_t) / (1 - gbar_{t-1})."""
    abar, gbar = paper_bars(T)
    return [mask_replace_matrix(abar[t] / abar[t - 1], 1 - (1 - gbar[t]) / (1 - gbar[t - 1]), K)
            for t in range(1, T + 1)]


@pytest.mark.parametrize("K,T", [(3, 10), (5, 100)])
def test_product_of_steps_equals_closed_form_cumulative(K, T):
    sched = MaskReplaceSchedule(K, T)
    abar, gbar = paper_bars(T)
    assert np.allclose(sched.alpha_bar.numpy(), abar, atol=1e-15, rtol=0)
    assert np.allclose(sched.gamma_bar.numpy(), gbar, atol=1e-15, rtol=0)
    prod, steps = np.eye(K + 1), paper_steps(T, K)
    for t in range(1, T + 1):
        step = sched.step_matrix(t).numpy()
        assert np.abs(step - steps[t - 1]).max() < 1e-12, t
        prod = prod @ step
        closed = mask_replace_matrix(abar[t], gbar[t], K)  # Eq. 8, written here
        if t in (1, 2, T // 2, T - 1, T):
            assert np.abs(prod - closed).max() < 1e-10, t
            assert np.abs(sched.cumulative_matrix(t).numpy() - closed).max() < 1e-10, t
            onehots = torch.eye(K + 1, dtype=torch.float64)[:K]  # vectorised q(x_t | x0) for each code x0
            marg = sched.marginal(onehots, torch.full((K,), t))
            assert np.abs(marg.numpy() - closed[:K]).max() < 1e-10, t


def test_rows_sum_to_one_mask_absorbing_and_mask_probability_at_T():
    K, T = 4, 100
    sched = MaskReplaceSchedule(K, T)
    for t in (1, 37, T):
        for m in (sched.step_matrix(t), sched.cumulative_matrix(t)):
            assert (m >= 0).all()
            assert torch.allclose(m.sum(1), torch.ones(K + 1, dtype=torch.float64), atol=1e-12)
        assert torch.equal(sched.step_matrix(t)[K], torch.eye(K + 1, dtype=torch.float64)[K])  # MASK absorbs
    x0 = torch.eye(K + 1, dtype=torch.float64)[:K]
    assert torch.allclose(sched.marginal(x0, torch.full((K,), T))[:, K], torch.full((K,), 0.9, dtype=torch.float64))
    # sampled: P(MASK at T) = gamma_bar_T = 0.9 (binomial std ~0.0015 over 40000 tokens)
    codes = torch.randint(0, K, (400, 100), generator=torch.Generator().manual_seed(0))
    x_T = q_sample(sched, codes, torch.full((400,), T), torch.Generator().manual_seed(1))
    assert abs((x_T == K).double().mean().item() - 0.9) < 0.01
    # from MASK only MASK is reachable, for any stride s -> t: q(x_t = code | x_s = MASK) = 0, q(MASK | MASK) = 1
    t, s_ = torch.tensor([5, 50, 100, 100]), torch.tensor([1, 10, 99, 0])
    to_code = sched.column(torch.tensor([0, 1, 2, 3]), t, s_)
    to_mask = sched.column(torch.full((4,), K), t, s_)
    assert torch.equal(to_code[:, K], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(to_mask[:, K], torch.ones(4, dtype=torch.float64))


def enumerated_posterior(K: int, T: int, t: int, x_t: int, p0: np.ndarray) -> np.ndarray:
    """sum_x0 p0(x0) q(x_{t-1} | x_t, x0) with q(x_{t-1} | x0) summed over every path x_1..x_{t-2}
    (Bayes' rule: q(x_{t-1} | x_t, x0) = q(x_t | x_{t-1}) q(x_{t-1} | x0) / sum_j q(x_t | j) q(j | x0))."""
    Q = paper_steps(T, K)
    out = np.zeros(K + 1)
    for x0 in range(K + 1):
        if p0[x0] == 0:
            continue
        prev = np.zeros(K + 1)  # q(x_{t-1} = j | x0)
        for path in itertools.product(range(K + 1), repeat=t - 1):
            states = (x0, *path)
            prev[states[-1]] += np.prod([Q[s][states[s], states[s + 1]] for s in range(t - 1)])
        joint = np.array([Q[t - 1][j, x_t] * prev[j] for j in range(K + 1)])
        out += p0[x0] * joint / joint.sum()
    return out


@pytest.mark.parametrize("t", [1, 2, 4, 5])
def test_posterior_matches_bayes_rule_by_enumeration(t):
    K, T = 3, 6
    sched = MaskReplaceSchedule(K, T)
    rng = np.random.default_rng(t)
    soft = np.append(rng.dirichlet(np.ones(K)), 0.0)
    for x_t in range(K + 1):
        for p0 in [*np.eye(K + 1)[:K], soft]:
            got = sched.posterior(torch.tensor(p0)[None], torch.tensor([x_t]), torch.tensor([t]))[0].numpy()
            assert abs(got.sum() - 1) < 1e-12
            want = enumerated_posterior(K, T, t, x_t, p0)
            assert np.abs(got - want).max() < 1e-10, (t, x_t, p0)


def test_strided_posterior_matches_enumeration():
    """q(x_s | x_t, x0) for s < t - 1 (fast inference): Bayes with q(x_t | x_s) = Q_{s+1} ... Q_t."""
    K, T, s, t = 3, 6, 2, 5
    sched, Q = MaskReplaceSchedule(K, T), paper_steps(T, K)
    q_s = np.linalg.multi_dot(Q[:s])  # q(x_s | x0)
    q_ts = np.linalg.multi_dot(Q[s:t])  # q(x_t | x_s)
    for x_t in range(K + 1):
        for x0 in range(K):
            joint = q_ts[:, x_t] * q_s[x0]
            got = sched.posterior(torch.eye(K + 1, dtype=torch.float64)[[x0]], torch.tensor([x_t]),
                                  torch.tensor([t]), torch.tensor([s]))[0].numpy()
            assert np.abs(got - joint / joint.sum()).max() < 1e-10


# -- digits -------------------------------------------------------------------------------------
SEEDS = (0, 1, 2)
SCALES = (0.0, 1.0, 2.0)
K_CODES = 32


def _save(model, path):
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "lvi_class_path": f"{type(model).__module__}.{type(model).__qualname__}",
                "pytorch-lightning_version": L.__version__}, path)
    return str(path)


@pytest.fixture(scope="module")
def vqvae_checkpoint(digits, tmp_path_factory):
    """A VQ-VAE on 8x8 digits: a 2x2 grid of tokens (num_latents 4), 32 codes, trained full batch."""
    from diffusion_fit import fit_full_batch

    L.seed_everything(0)
    vq = VQVAE(input_shape=[1, 8, 8], hidden_dims=[128], num_latents=4, embedding_dim=8, codebook_size=K_CODES,
               decay=0.9, obs_std=0.3)
    fit_full_batch(vq, digits[0], 300, lr=3e-3)
    return _save(vq, tmp_path_factory.mktemp("vqvae") / "vqvae.ckpt")


def _train(vqvae_checkpoint, train, seed, steps=300):
    L.seed_everything(seed)
    model = VQDiffusion(vqvae_checkpoint=vqvae_checkpoint, codebook_size=K_CODES, num_classes=10, p_uncond=0.2,
                        aux_weight=1.0, d_model=32, depth=2, heads=4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 2e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train["x"]), (256,), generator=g)
        terms = model.objective({"x": train["x"][idx], "y": train["y"][idx]})
        loss = sum(w * terms[k] for k, w in model.term_weights.items())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def agreement(digits, vqvae_checkpoint):
    """{seed: {guidance scale: fraction of 500 samples (50 per class, 20 strided steps) that a logistic
    regression trained on real digits assigns to the requested class}}."""
    train, test = digits
    classify = fit_digits_classifier(train["x"], train["y"])
    assert class_agreement(classify, test["x"], test["y"]) > 0.9
    y = torch.arange(500) % 10
    out = {}
    for seed in SEEDS:
        model = _train(vqvae_checkpoint, train, seed)
        out[seed] = {s: class_agreement(classify, model.sample(500, torch.Generator().manual_seed(seed), y, s, steps=20), y)
                     for s in SCALES}
    return out


@pytest.mark.parametrize("seed", SEEDS)
def test_class_conditional_samples_are_recognised(agreement, seed):
    """Measured (seeds 0, 1, 2), agreement at scale 1: 0.654, 0.638, 0.636; at scale 2: 0.834, 0.872, 0.834
    (chance 0.1)."""
    assert agreement[seed][1.0] > 0.4, agreement[seed]
    assert agreement[seed][2.0] > 0.5, agreement[seed]


@pytest.mark.parametrize("seed", SEEDS)
def test_guidance_raises_agreement(agreement, seed):
    """Scale 0 (unconditional) is at chance; guidance at scale 2 beats the plain conditional model.
    Measured (seeds 0, 1, 2), scale 0: 0.098, 0.084, 0.094; gain of scale 2 over scale 1: 0.18, 0.23, 0.20."""
    a = agreement[seed]
    assert a[0.0] < 0.2, a
    assert a[2.0] > a[1.0] + 0.05, a
    assert a[2.0] > a[0.0] + 0.4, a


def test_checkpoint_is_self_contained_and_producer_frozen(vqvae_checkpoint, digits, tmp_path):
    import shutil

    own = shutil.copy(vqvae_checkpoint, tmp_path / "vq.ckpt")
    L.seed_everything(0)
    model = VQDiffusion(vqvae_checkpoint=str(own), codebook_size=K_CODES, d_model=16, depth=1, heads=2)
    before = {k: v.clone() for k, v in model.vqvae.state_dict().items()}
    data = {"x": digits[0]["x"][:64], "y": digits[0]["y"][:64]}
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(model, DataLoader(TensorDictDataset(data), batch_size=32, collate_fn=lambda b: b))
    assert not model.vqvae.training and not any(p.requires_grad for p in model.vqvae.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.vqvae.state_dict().items())  # EMA codebook untouched
    trainer.save_checkpoint(tmp_path / "vqd.ckpt")
    (tmp_path / "vq.ckpt").unlink()
    loaded = VQDiffusion.load_from_checkpoint(tmp_path / "vqd.ckpt")
    assert loaded.hparams.vqvae_config["family"] == "vqvae"
    y = torch.arange(8) % 10
    a = model.sample(8, torch.Generator().manual_seed(3), y, 2.0, steps=5)
    b = loaded.sample(8, torch.Generator().manual_seed(3), y, 2.0, steps=5)
    assert a.shape == (8, 1, 8, 8) and torch.equal(a, b)


def test_bad_input_names_the_values(vqvae_checkpoint):
    with pytest.raises(ValueError, match=rf"codebook_size=16 does not match vqvae_checkpoint='{vqvae_checkpoint}', "
                                         rf"whose vqvae has codebook_size {K_CODES}"):
        VQDiffusion(vqvae_checkpoint=vqvae_checkpoint, codebook_size=16)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"aux_weight={bad!r} is out of range; allowed: \(0.0, inf\)"):
            VQDiffusion(vqvae_checkpoint=vqvae_checkpoint, codebook_size=K_CODES, aux_weight=bad)
    with pytest.raises(FileNotFoundError, match="lvi fit --config configs/vae/vqvae.yaml"):
        VQDiffusion(vqvae_checkpoint="missing.ckpt", codebook_size=64)




def test_vlb_terms_match_enumerated_kl():
    """L_{t-1} = KL(q(x_{t-1} | x_t, x0) || sum_x0' p0(x0') q(x_{t-1} | x_t, x0')) with both posteriors from the
    enumeration above; at t = 1 it is -log p0(x0); L_T against the closed form q(x_T | x0) and p(x_T)."""
    K, T = 3, 6
    sched = MaskReplaceSchedule(K, T)
    rng = np.random.default_rng(0)
    p0 = rng.dirichlet(np.ones(K))
    abar, gbar = paper_bars(T)
    for t in (1, 3, 6):
        for x_t in range(K + 1):
            for x0 in range(K):
                kl, kl_T = vlb_terms(sched, torch.tensor([[x0]]), torch.tensor([[x_t]]), torch.tensor([t]),
                                     torch.tensor(np.log(p0))[None, None])
                q = enumerated_posterior(K, T, t, x_t, np.eye(K + 1)[x0])
                p = enumerated_posterior(K, T, t, x_t, np.append(p0, 0.0))
                want = sum(q[j] * np.log(q[j] / p[j]) for j in range(K + 1) if q[j] > 0)
                assert abs(kl.item() - want) < 1e-9, (t, x_t, x0)
                if t == 1:
                    assert abs(kl.item() + np.log(p0[x0])) < 1e-9
                qT = mask_replace_matrix(abar[T], gbar[T], K)[x0]
                pT = np.append(np.full(K, (1 - gbar[T]) / K), gbar[T])
                assert abs(kl_T.item() - float((qT * np.log(qT / pT)).sum())) < 1e-12


def test_unconditional_model_trains_and_samples(vqvae_checkpoint, digits):
    L.seed_everything(0)
    model = VQDiffusion(vqvae_checkpoint=vqvae_checkpoint, codebook_size=K_CODES, num_classes=0, d_model=16, depth=1,
                        heads=2, sample_steps=4)
    terms = model.objective({"x": digits[0]["x"][:32], "y": digits[0]["y"][:32]})
    assert all(torch.isfinite(terms[k]) for k in ("vlb", "x0_nll"))
    x = model.sample(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()
    assert model.timesteps(4) == [100, 75, 50, 25, 0]
