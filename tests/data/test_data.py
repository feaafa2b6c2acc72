"""Data modules: determinism, splits, batch layout and known factors (generation speed: benchmarks/data_generation.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_vi.data import (DigitsDataModule, NpzDataModule, SineSequenceDataModule, SpritesDataModule,
                               Toy2DDataModule, TorchvisionDataModule, render_sprites)


def test_digits_splits_are_deterministic_disjoint_and_complete():
    a, b = DigitsDataModule(seed=3), DigitsDataModule(seed=3)
    a.setup(), b.setup()
    assert torch.equal(a.splits["train"]["x"], b.splits["train"]["x"])
    sizes = {k: len(v["y"]) for k, v in a.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["val"] == 180 and sizes["test"] == 180
    batch = next(iter(a.train_dataloader()))
    assert batch["x"].shape == (128, 1, 8, 8) and batch["y"].dtype == torch.long
    assert 0 <= batch["x"].min() and batch["x"].max() <= 1
    c = DigitsDataModule(seed=4)
    c.setup()
    assert not torch.equal(a.splits["train"]["y"], c.splits["train"]["y"])


def test_odd_last_batch_is_kept():
    dm = DigitsDataModule(batch_size=100)
    sizes = [len(b["y"]) for b in dm.train_dataloader()]
    assert sum(sizes) == 1437 and sizes[-1] == 37


def test_sprites_carry_their_factors():
    dm = SpritesDataModule(n=600, image_size=32)
    dm.setup()
    tr = dm.splits["train"]
    f = tr["factors"]
    assert tr["x"].shape[1:] == (1, 32, 32) and f.shape[1] == 5
    assert torch.equal(tr["y"], f[:, 0].long())
    # centroid of the drawn pixels sits at the (x, y) factor: the image really depends on the factors
    img = tr["x"][:, 0]
    grid = (torch.arange(32) + 0.5) / 32
    mass = img.sum((1, 2))
    cx = (img.sum(1) * grid).sum(1) / mass
    cy = (img.sum(2) * grid).sum(1) / mass
    assert (cx - f[:, 3]).abs().mean() < 0.02 and (cy - f[:, 4]).abs().mean() < 0.02
    # larger scale -> more pixels, for a fixed shape and rotation
    base = torch.tensor([[1, 0.5, 0, 0.5, 0.5], [1, 1.0, 0, 0.5, 0.5]])  # ellipses
    small, big = render_sprites(base, 128).sum((1, 2, 3))
    assert big / small == pytest.approx(4.0, rel=0.1)


def test_sprites_64_generate():
    """10,000 sprites at 64x64 (the speed is measured by benchmarks/data_generation.py, not here)."""
    dm = SpritesDataModule(n=10_000, image_size=64)
    dm.setup()
    assert dm.example_shape == (1, 64, 64)
    assert sum(len(dm.splits[s]["x"]) for s in ("train", "val", "test")) == 10_000
    x = dm.splits["train"]["x"]
    assert x.dtype == torch.float32 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert bool((x.flatten(1).sum(1) > 0).all())  # every image draws a sprite


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "8gaussians", "checkerboard"])
def test_toys_are_2d_and_scaled(name):
    dm = Toy2DDataModule(name=name, n=2000)
    dm.setup()
    x = dm.splits["train"]["x"]
    assert x.shape == (1600, 2) and x.abs().max() < 6 and x.std() > 0.3


def test_eight_gaussians_sit_on_the_circle():
    dm = Toy2DDataModule(name="8gaussians", n=4000, noise=0.01)
    dm.setup()
    r = dm.splits["train"]["x"].norm(dim=1)
    assert (r - 2.0).abs().max() < 0.15


def test_checkerboard_fills_alternate_squares():
    dm = Toy2DDataModule(name="checkerboard", n=4000)
    dm.setup()
    x = dm.splits["train"]["x"]
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert (parity == parity[0]).all()


def test_sine_sequences_regular_and_irregular():
    reg = SineSequenceDataModule(n=50, length=40, n_components=1, noise=0.0)
    reg.setup()
    b = reg.splits["train"]
    t, x, f = b["t"][0], b["x"][0, :, 0], b["freqs"][0, 0]
    # a single sinusoid of the stated frequency: fit amplitude/phase by least squares, residual ~ 0
    basis = torch.stack([torch.sin(2 * math.pi * f * t), torch.cos(2 * math.pi * f * t)], 1)
    coef = torch.linalg.lstsq(basis, x.unsqueeze(1)).solution
    assert (basis @ coef).squeeze(1).sub(x).abs().max() < 1e-4
    irr = SineSequenceDataModule(n=50, length=40, irregular=True, keep=0.5)
    irr.setup()
    bi = irr.splits["train"]
    assert (bi["t"].diff(dim=1) >= 0).all() and 0.3 < bi["mask"].mean() < 0.7


def test_npz_loader_and_missing_file(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.random.rand(20, 3).astype("float32"), y=np.arange(20) % 2)
    dm = NpzDataModule(path=str(tmp_path / "d.npz"), batch_size=4)
    assert next(iter(dm.train_dataloader()))["x"].shape == (4, 3)
    with pytest.raises(FileNotFoundError, match=r"missing.npz' does not exist"):
        NpzDataModule(path=str(tmp_path / "missing.npz")).setup()
    with pytest.raises(KeyError, match=r"x_key='pixels'.*\['x', 'y'\]"):
        NpzDataModule(path=str(tmp_path / "d.npz"), x_key="pixels").setup()


def test_torchvision_loader_fails_clearly_without_files(tmp_path):
    with pytest.raises((ImportError, FileNotFoundError), match=r"torchvision|not found under root"):
        TorchvisionDataModule(name="MNIST", root=str(tmp_path)).setup()
    with pytest.raises(ValueError, match=r"name='SVHN'"):
        TorchvisionDataModule(name="SVHN")


def test_bad_split_fractions():
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction"):
        DigitsDataModule(val_fraction=0.6, test_fraction=0.5)
