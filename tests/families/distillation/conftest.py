"""Fixtures shared by the distillation tests."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.data.digits import load_digits_tensors
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.metrics.class_agreement import fit_digits_classifier


@pytest.fixture(scope="session")
def digits_teacher_parts(tmp_path_factory) -> dict:
    """A tiny class-conditional digits DDPM teacher (MLP 128 x 2, ``p_uncond 0.2``, 300 full-batch steps on 1500
    8x8 digits, about 5 s of CPU) saved as a ``ddpm`` checkpoint, with an independent logistic-regression
    classifier fitted on the same real digits: ``{"ddpm", "ckpt", "train", "classify"}``."""
    d = load_digits_tensors(8)
    perm = torch.randperm(len(d["x"]), generator=torch.Generator().manual_seed(0))
    train = {"x": d["x"][perm[:1500]], "y": d["y"][perm[:1500]]}
    L.seed_everything(0)
    ddpm = DDPM(input_shape=[1, 8, 8], hidden=128, depth=2, num_classes=10, p_uncond=0.2, data_scale=0.5,
                data_shift=0.5, sample_steps=25)
    fit_objective(ddpm, train, 300, 3e-3)
    ckpt = tmp_path_factory.mktemp("digits_teacher") / "ddpm.ckpt"
    torch.save({"hyper_parameters": dict(ddpm.hparams), "lvi_class_path": "lightning_vi.families.diffusion.ddpm.DDPM",
                "state_dict": ddpm.state_dict()}, ckpt)
    return {"ddpm": ddpm, "ckpt": ckpt, "train": train, "classify": fit_digits_classifier(train["x"], train["y"])}
