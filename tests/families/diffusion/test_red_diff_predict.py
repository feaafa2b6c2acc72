"""RED-Diff through `lvi predict` (configs/diffusion/red_diff_digits.yaml) with a trained DDPM prior:
restorations beat the degraded measurement in PSNR for every operator; bad input stops with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ROOT
from lightning_vi.callbacks import NpzPredictionWriter
from lightning_vi.cli import build_cli, main
from lightning_vi.metrics.restoration import psnr

CONFIG = str(ROOT / "configs" / "diffusion" / "red_diff_digits.yaml")
# measured (180 test digits): inpainting 10.40 -> 15.04 dB, super-resolution 13.10 -> 14.49, denoising 16.13 -> 17.75
MARGIN_DB = {"inpainting": 3.0, "super_resolution": 1.0, "denoising": 1.0}


@pytest.mark.parametrize("operator", ["inpainting", "super_resolution", "denoising"])
def test_red_diff_predict_restores(operator, digits_prior_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--model.init_args.sigma_y", "0.2"] if operator == "denoising" else []
    cli = build_cli(["predict", "--config", CONFIG, "--model.init_args.prior_checkpoint", digits_prior_checkpoint,
                     "--model.init_args.operator", operator, "--trainer.enable_progress_bar", "false", *extra])
    writer = next(c for c in cli.trainer.callbacks if isinstance(c, NpzPredictionWriter))
    assert writer.path == Path("outputs/red_diff/predictions.npz")
    out = np.load(tmp_path / writer.path)
    assert out["restored"].shape == out["clean"].shape == out["degraded"].shape == (180, 1, 8, 8)
    p_in, p_out = float(out["psnr_degraded"]), float(out["psnr_restored"])
    print(operator, "PSNR degraded", p_in, "restored", p_out)
    assert p_out == pytest.approx(psnr(torch.from_numpy(out["restored"]), torch.from_numpy(out["clean"])), abs=1e-4)
    assert p_out > p_in + MARGIN_DB[operator]


def _lvi_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--config", CONFIG, "--trainer.enable_progress_bar", "false", *args])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_red_diff_predict_bad_input(digits_prior_checkpoint, vae_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make = "make one with: lvi fit --config configs/diffusion/ddpm_digits8.yaml"
    err = _lvi_error(["--model.init_args.prior_checkpoint", "missing.ckpt"], capsys)
    assert "prior_checkpoint='missing.ckpt' does not exist" in err and make in err
    assert (f"prior_checkpoint={vae_checkpoint!r} was written by 'vae'; red_diff needs a 'ddpm' checkpoint; {make}"
            in _lvi_error(["--model.init_args.prior_checkpoint", vae_checkpoint], capsys))
    err = _lvi_error(["--model.init_args.prior_checkpoint", digits_prior_checkpoint, "--data.init_args.image_size", "16"], capsys)
    assert "batch['x'] has shape (180, 1, 16, 16)" in err and "trained on images [1, 8, 8]" in err
    assert "operator='deblur' is not allowed" in _lvi_error(
        ["--model.init_args.prior_checkpoint", digits_prior_checkpoint, "--model.init_args.operator", "deblur"], capsys)
