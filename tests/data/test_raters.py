"""Multi-rater thin-structure data: deterministic, class-imbalanced, rater-specific widths and misses."""

import torch

from lightning_vi.data.raters import RaterDataModule, make_rater_data


def test_deterministic_imbalanced_and_rater_styles() -> None:
    a = make_rater_data(64, 24, torch.Generator().manual_seed(3))
    b = make_rater_data(64, 24, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["x"].shape == (64, 1, 24, 24) and a["masks"].shape == (64, 4, 24, 24) and a["gt"].shape == (64, 24, 24)
    assert 0.01 < a["gt"].mean() < 0.1  # thin structures: a few percent foreground
    area = a["masks"].mean((0, 2, 3))
    assert (area.diff() > 0).all()  # thin-to-thick raters (erosion -> dilation)
    assert a["masks"].var(1).sum() > 0  # raters disagree
    none = make_rater_data(64, 24, torch.Generator().manual_seed(3), shift=0.0, miss_prob=0.0,
                           rater_widths=(0.75, 0.75))
    assert (none["masks"].var(1) < 0.05).float().mean() > 0.97  # only the +-0.1 width jitter remains


def test_misses_drop_segments() -> None:
    kw = dict(shift=0.0, rater_widths=(0.75, 0.75))
    full = make_rater_data(64, 24, torch.Generator().manual_seed(1), miss_prob=0.0, **kw)["masks"].sum()
    missed = make_rater_data(64, 24, torch.Generator().manual_seed(1), miss_prob=0.5, **kw)["masks"].sum()
    assert missed < 0.8 * full


def test_datamodule_batches() -> None:
    dm = RaterDataModule(num_images=40, size=16, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (8, 1, 16, 16) and batch["masks"].shape == (8, 4, 16, 16)
