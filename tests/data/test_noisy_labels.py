"""NoisyLabelDataModule: train-only, seeded corruption with the requested transition structure."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.data import DigitsDataModule
from lightning_vi.data.noisy_labels import NoisyLabelDataModule


def train_labels(dm: NoisyLabelDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    ys, cs = [], []
    for b in dm.train_dataloader():
        ys.append(b["y"]), cs.append(b["y_clean"])
    return torch.cat(ys), torch.cat(cs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symmetric_rate_and_uniform_off_diagonal(seed) -> None:
    dm = NoisyLabelDataModule(DigitsDataModule(seed=seed), "symmetric", 0.4, seed=seed)
    dm.setup("fit")
    y, clean = train_labels(dm)
    n = len(clean)
    flipped = y != clean
    # Binomial(n, 0.4): 4 standard deviations around 0.4.
    assert abs(flipped.float().mean() - 0.4) < 4 * (0.4 * 0.6 / n) ** 0.5
    assert dm.actual_rate == pytest.approx(float(flipped.float().mean()))
    # corrupted labels are spread over the 9 other classes: offset (y - clean) mod 10 uniform on 1..9
    offsets = torch.bincount((y[flipped] - clean[flipped]) % 10, minlength=10).float()
    assert offsets[0] == 0
    expected = flipped.sum() / 9
    chi2 = float(((offsets[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 26.1, chi2  # chi^2_8 at p = 0.001


def test_pairflip_goes_to_next_class() -> None:
    dm = NoisyLabelDataModule(DigitsDataModule(), "pairflip", 0.3, seed=0)
    dm.setup("fit")
    y, clean = train_labels(dm)
    flipped = y != clean
    assert torch.equal(y[flipped], (clean[flipped] + 1) % 10)
    assert abs(flipped.float().mean() - 0.3) < 4 * (0.3 * 0.7 / len(y)) ** 0.5


def test_instance_noise_depends_on_input_and_keeps_rate() -> None:
    dm = NoisyLabelDataModule(DigitsDataModule(), "instance", 0.3, seed=0)
    dm.setup("fit")
    y, clean = train_labels(dm)
    assert abs(dm.actual_rate - 0.3) < 0.05
    assert set(y.tolist()) <= set(range(10))


def test_deterministic_from_seed_and_train_only() -> None:
    torch.manual_seed(123)
    a = NoisyLabelDataModule(DigitsDataModule(), "symmetric", 0.4, seed=5)
    a.setup("fit")
    torch.manual_seed(999)  # the global RNG does not matter
    b = NoisyLabelDataModule(DigitsDataModule(), "symmetric", 0.4, seed=5)
    b.setup("fit")
    c = NoisyLabelDataModule(DigitsDataModule(), "symmetric", 0.4, seed=6)
    c.setup("fit")
    assert torch.equal(a.train_set.noisy, b.train_set.noisy)
    assert not torch.equal(a.train_set.noisy, c.train_set.noisy)
    base = DigitsDataModule()
    base.setup("fit")
    for split, loader in (("val", a.val_dataloader()), ("test", a.test_dataloader())):
        y = torch.cat([batch["y"] for batch in loader])
        assert torch.equal(y, base.splits[split]["y"]), split
    assert torch.equal(a.train_set.clean, base.splits["train"]["y"])


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_bad_rate(rate) -> None:
    with pytest.raises(ValueError, match="rate"):
        NoisyLabelDataModule(DigitsDataModule(), "symmetric", rate)


def test_bad_noise() -> None:
    with pytest.raises(ValueError, match="noise.*symmetric"):
        NoisyLabelDataModule(DigitsDataModule(), "uniform", 0.2)


@pytest.mark.parametrize("noise", ["symmetric", "pairflip"])
def test_transition_matrix_on_many_labels(noise) -> None:
    """Empirical T on 200k labels against T_ii = 1 - r, T_ij = r / (C - 1) (symmetric) or T_i,i+1 = r (pairflip)."""
    from lightning_vi.data.noisy_labels import corrupt_labels

    c, r, n = 10, 0.4, 200_000
    clean = torch.arange(n) % c
    noisy = corrupt_labels(clean, c, noise, r, torch.Generator().manual_seed(0))
    t = torch.zeros(c, c).index_put_((clean, noisy), torch.ones(n), accumulate=True) / (n / c)
    expected = torch.full((c, c), r / (c - 1)) if noise == "symmetric" else torch.zeros(c, c)
    if noise == "pairflip":
        expected[torch.arange(c), (torch.arange(c) + 1) % c] = r
    expected.fill_diagonal_(1 - r)
    assert (t - expected).abs().max() < 4 * (0.25 / (n / c)) ** 0.5  # 4 sd of a proportion from n/C draws


def _cat(loader, key: str) -> torch.Tensor:
    return torch.cat([b[key] for b in loader])


@pytest.mark.parametrize("seed", [0, 1])
def test_noisy_val_split_is_carved_from_the_noisy_train_split(seed) -> None:
    """noisy_val_fraction: a seeded part of the corrupted train split, noisy labels only; test stays clean."""
    full = NoisyLabelDataModule(DigitsDataModule(seed=seed), "symmetric", 0.4, seed=seed)
    full.setup("fit")
    dm = NoisyLabelDataModule(DigitsDataModule(seed=seed), "symmetric", 0.4, seed=seed, noisy_val_fraction=0.2)
    dm.setup("fit")
    base = DigitsDataModule(seed=seed)
    base.setup("fit")
    n = len(base.splits["train"]["y"])
    # Identify each example by its pixels: the val and train parts partition the base train split.
    key = lambda x: [tuple(r.tolist()) for r in x.flatten(1)]  # noqa: E731
    row = {k: i for i, k in enumerate(key(base.splits["train"]["x"]))}
    val_x, val_y = _cat(dm.val_dataloader(), "x"), _cat(dm.val_dataloader(), "y")
    tr_x = torch.cat([b["x"] for b in dm.train_dataloader()])
    vi, ti = [row[k] for k in key(val_x)], [row[k] for k in key(tr_x)]
    assert len(vi) == round(0.2 * n) and len(ti) == n - len(vi)
    assert sorted(vi + ti) == list(range(n))
    # The labels are the same corruption as without a validation split (noisy, not clean) ...
    noisy, clean = full.train_set.noisy, base.splits["train"]["y"]
    assert torch.equal(val_y, noisy[vi])
    assert abs(float((val_y != clean[vi]).float().mean()) - 0.4) < 0.1
    assert all("y_clean" not in b for b in dm.val_dataloader())
    assert dm.actual_rate == pytest.approx(float((noisy[ti] != clean[ti]).float().mean()))
    # ... and the clean test split is the base's.
    assert torch.equal(_cat(dm.test_dataloader(), "y"), base.splits["test"]["y"])
    # Deterministic from the seed.
    again = NoisyLabelDataModule(DigitsDataModule(seed=seed), "symmetric", 0.4, seed=seed, noisy_val_fraction=0.2)
    torch.manual_seed(1234)
    again.setup("fit")
    assert torch.equal(_cat(again.val_dataloader(), "x"), val_x)
    assert torch.equal(_cat(again.val_dataloader(), "y"), val_y)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, True, "0.1"])
def test_bad_noisy_val_fraction(fraction) -> None:
    with pytest.raises(ValueError, match=r"noisy_val_fraction=.*allowed: \(0, 1\)"):
        NoisyLabelDataModule(DigitsDataModule(), "symmetric", 0.4, noisy_val_fraction=fraction)


def test_noisy_val_fraction_too_small_for_the_split() -> None:
    dm = NoisyLabelDataModule(DigitsDataModule(), "symmetric", 0.4, noisy_val_fraction=1e-5)
    with pytest.raises(ValueError, match="noisy_val_fraction=1e-05 leaves 0 of the"):
        dm.setup("fit")
