"""Oracles of phasic content-fusing few-shot adaptation (Hu et al.): on 3 seeds, against plain fine-tuning on
the same 10 target shots with the same steps, the adapted samples are closer to the target domain (a classifier
two-sample test: a k-NN classifier trained to tell real target digits from generated samples on one half, scored
on the other half; an independent logistic-regression source-vs-target domain classifier saturates for both and
is only checked for target-likeness) and more diverse: fewer copies of the shots (nearest-shot distance below a threshold set from real
target data), a larger mean nearest-shot distance and a larger mean pairwise distance."""

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))

from diffusion_fit import fit_full_batch
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.phasic_adapt import FewShotDigitsDataModule, PhasicAdapt, stylize
from lightning_vi.registry import FAMILIES

STYLE = "gray_background"
SEEDS = (0, 1, 2)
STEPS = 600
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setting():
    x = load_digits_tensors(8)["x"]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(123))
    src_train, rest = x[perm[:1200]], x[perm[1200:]]
    L.seed_everything(0)
    source = DDPM(input_shape=[1, 8, 8], hidden=128, depth=3, num_train_timesteps=200, data_scale=0.5,
                  data_shift=0.5, sample_steps=20, plugins=[{"class_path": "ema", "init_args": {"decay": 0.99}}])
    fit_full_batch(source, {"x": src_train}, 500, lr=3e-3)
    half = len(rest) // 2
    real_src, real_tgt = rest[:half], stylize(rest[half:], STYLE)
    clf = LogisticRegression(max_iter=500).fit(torch.cat([real_src, real_tgt]).flatten(1).numpy(),
                                               [0] * len(real_src) + [1] * len(real_tgt))
    return {"source": source, "clf": clf, "pool": rest, "real_target": stylize(src_train[:500], STYLE)}


def frechet(a, b):
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b`` (pixel space)."""
    ca, cb = torch.cov(a.T.double()), torch.cov(b.T.double())
    root = torch.linalg.eigvals(ca @ cb).real.clamp(min=0).sqrt().sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + torch.trace(ca) + torch.trace(cb) - 2 * root)


def c2st_accuracy(samples, real, seed, k=5):
    """Classifier two-sample test (Lopez-Paz & Oquab, 2017): held-out accuracy of a k-NN classifier trained to
    tell ``samples`` from as many real target images, 2-fold (train on one half of each, test on the other,
    averaged). 0.5 = indistinguishable from the target distribution, 1 = fully separable. The classifier sees
    only real target data and generated samples, never the shots."""
    g = torch.Generator().manual_seed(1000 + seed)
    real = real[torch.randperm(len(real), generator=g)[:len(samples)]]
    ps, pr, h = torch.randperm(len(samples), generator=g), torch.randperm(len(real), generator=g), len(samples) // 2
    accs = []
    for train, test in ((slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))):
        x_train = torch.cat([samples[ps[train]], real[pr[train]]]).numpy()
        y_train = [0] * len(ps[train]) + [1] * len(pr[train])
        x_test = torch.cat([samples[ps[test]], real[pr[test]]]).numpy()
        y_test = torch.tensor([0] * len(ps[test]) + [1] * len(pr[test]))
        pred = torch.as_tensor(KNeighborsClassifier(k).fit(x_train, y_train).predict(x_test))
        accs.append(float((pred == y_test).float().mean()))
    return sum(accs) / len(accs)


def adapt_and_measure(setting, seed, **kwargs):
    """Adapt the source on 10 shots of ``seed``; return (target probability, copy rate, mean NN distance to the
    shots, mean pairwise distance, Fréchet distance to real target data, mean NN distance to real target data,
    classifier two-sample test accuracy against real target data) of 200 samples."""
    pool = setting["pool"]
    shots = stylize(pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:10]], STYLE)
    real_nn = torch.cdist(setting["real_target"].flatten(1), shots.flatten(1)).min(1).values
    threshold = real_nn.quantile(0.1)  # 10% of real target images are this close to a shot
    L.seed_everything(seed)
    model = PhasicAdapt(source=setting["source"], source_batch=32, **kwargs)
    fit_full_batch(model, {"x": shots}, STEPS, lr=3e-3)
    s = model.sample(200, generator=torch.Generator().manual_seed(100 + seed)).clamp(0, 1).flatten(1)
    nn_dist = torch.cdist(s, shots.flatten(1)).min(1).values
    p_target = float(setting["clf"].predict_proba(s.numpy())[:, 1].mean())
    real = setting["real_target"].flatten(1)
    return (p_target, float((nn_dist < threshold).float().mean()), float(nn_dist.mean()), float(torch.pdist(s).mean()),
            frechet(s, real), float(torch.cdist(s, real).min(1).values.mean()), c2st_accuracy(s, real, seed))


@pytest.fixture(scope="module")
def results(setting):
    return {seed: {"finetune": adapt_and_measure(setting, seed, mode="finetune"),
                   "phasic": adapt_and_measure(setting, seed)} for seed in SEEDS}


@pytest.mark.parametrize("seed", SEEDS)
def test_closer_to_target_than_source_and_not_below_finetuning(results, setting, seed):
    """Source-vs-target domain classifier: saturated (~0.98 for both methods), so only target-likeness and
    'not clearly below fine-tuning' are checked here; the discriminating domain test is the two-sample test."""
    p_ad, p_ft = results[seed]["phasic"][0], results[seed]["finetune"][0]
    source = setting["source"].sample(200, generator=torch.Generator().manual_seed(7)).clamp(0, 1).flatten(1)
    p_src = float(setting["clf"].predict_proba(source.numpy())[:, 1].mean())
    assert p_src < 0.1 and p_ad > 0.9, (p_src, p_ad)
    assert p_ad >= p_ft - 0.03, (p_ad, p_ft)


@pytest.mark.parametrize("seed", SEEDS)
def test_two_sample_classifier_closer_to_target_than_finetuning(results, seed):
    """A classifier separates fine-tuned samples from real target digits (accuracy ~0.9) much better than the
    adapted ones (~0.6): the adapted distribution is closer to the target domain, by a margin of 0.1."""
    ad, ft = results[seed]["phasic"][6], results[seed]["finetune"][6]
    assert ad < ft - 0.1, ("two-sample classifier accuracy (0.5 = indistinguishable)", ad, ft)


def test_two_sample_classifier_calibrated(setting):
    """Held-out real target digits are indistinguishable from the real target set (accuracy near 0.5), source
    samples are fully separable (near 1)."""
    held_out = stylize(setting["pool"][:200], STYLE).flatten(1)
    source = setting["source"].sample(200, generator=torch.Generator().manual_seed(7)).clamp(0, 1).flatten(1)
    real = setting["real_target"].flatten(1)
    for seed in SEEDS:
        acc_real, acc_src = c2st_accuracy(held_out, real, seed), c2st_accuracy(source, real, seed)
        assert acc_real < 0.62 and acc_src > 0.95, (seed, acc_real, acc_src)


@pytest.mark.parametrize("seed", SEEDS)
def test_distribution_closer_to_target_and_samples_as_realistic(results, seed):
    """Fréchet distance to many real target digits below fine-tuning's; each sample's distance to its nearest
    real target digit (precision) at most 0.1 above fine-tuning's (the small-t detail phase)."""
    ad, ft = results[seed]["phasic"], results[seed]["finetune"]
    assert ad[4] < ft[4], ("Fréchet distance to real target data", ad[4], ft[4])
    assert ad[5] <= ft[5] + 0.1, ("nearest real target distance", ad[5], ft[5])


@pytest.mark.parametrize("seed", SEEDS)
def test_more_diverse_than_finetuning(results, seed):
    ad, ft = results[seed]["phasic"], results[seed]["finetune"]
    assert ad[2] > ft[2], ("mean distance to the nearest shot", ad[2], ft[2])
    assert ad[3] > ft[3], ("mean pairwise distance", ad[3], ft[3])
    assert ad[1] <= ft[1], ("copy rate", ad[1], ft[1])


def test_copy_rate_lower_over_seeds(results):
    ad = sum(results[s]["phasic"][1] for s in SEEDS)
    ft = sum(results[s]["finetune"][1] for s in SEEDS)
    assert ad < ft, (ad, ft)


def test_more_than_ten_shots_warns(setting):
    import warnings
    model = PhasicAdapt(source=setting["source"], n_source=8, source_batch=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compute_loss({"x": torch.rand(10, 1, 8, 8)}, "train")
    assert not [w for w in caught if "target shots" in str(w.message)], "10 shots must not warn"
    with pytest.warns(UserWarning, match="12 target shots") as record:
        loss, _ = model.compute_loss({"x": torch.rand(12, 1, 8, 8)}, "train")
    assert len([w for w in record if "target shots" in str(w.message)]) == 1
    assert torch.isfinite(loss), "a warned batch still trains"


def test_registered_and_bad_arguments(setting):
    assert FAMILIES.get("phasic_adapt") is PhasicAdapt
    for kw, word in [({"mode": "x"}, "mode"), ({"phases": "x"}, "phases"), ({"t_split": 1.5}, "t_split")]:
        with pytest.raises(ValueError, match=word):
            PhasicAdapt(source=setting["source"], **kw)
    with pytest.raises(ValueError, match="source"):
        PhasicAdapt()


def test_checkpoint_source_and_datamodule(setting, tmp_path):
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(setting["source"])
    trainer.save_checkpoint(tmp_path / "src.ckpt")
    model = PhasicAdapt(source=str(tmp_path / "src.ckpt"), n_source=8, source_batch=4)
    dm = FewShotDigitsDataModule(shots=10)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (10, 1, 8, 8) and batch["x"].min() >= 0.35 - 1e-6
    loss, terms = model.compute_loss(batch, "train")
    assert torch.isfinite(loss) and set(terms) >= {"detail", "ddc"}


def test_reload_own_checkpoint_without_source(setting, tmp_path):
    model = PhasicAdapt(source=setting["source"], n_source=8, source_batch=4)
    model.source_samples()
    trainer = L.Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "adapted.ckpt")
    back = PhasicAdapt.load_from_checkpoint(tmp_path / "adapted.ckpt")
    assert torch.equal(back.source_content, model.source_content)
    g = lambda: torch.Generator().manual_seed(0)
    assert torch.allclose(back.sample(4, generator=g()), model.sample(4, generator=g()))
