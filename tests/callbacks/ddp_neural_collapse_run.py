"""Validation of a fixed classifier with the NeuralCollapse callback, run by
``python ddp_neural_collapse_run.py DEVICES OUT.json``.

A script (not a pytest test) because multi-process ``strategy="ddp"`` re-launches the running script for
rank 1 (NOTES.md). Rank 0 writes the callback's values to OUT.json. ``build()`` is imported by the test for
the single-process run, so both see the same weights and data.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from helpers import DictDataset

#: 202 examples (even: DistributedSampler pads none); batch 37 makes the batches unequal.
N, BATCH, FEATURES, CLASSES = 202, 37, 8, 5


def build(seed: int = 0):
    """A fixed untrained MLP classifier and Gaussian-blob data (5 classes)."""
    from lightning_vi.families.classifier import Classifier

    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % CLASSES
    x = 2.0 * torch.randn(CLASSES, FEATURES, generator=g)[y] + torch.randn(N, FEATURES, generator=g)
    torch.manual_seed(seed)
    model = Classifier(input_shape=[FEATURES], num_classes=CLASSES, backbone="mlp", hidden_dims=[32], feature_dim=16)
    return model, DictDataset(x, y)


def main(devices: int, out: str) -> None:
    from lightning_vi.callbacks import NeuralCollapse

    torch.set_num_threads(1)
    model, data = build()
    cb = NeuralCollapse()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[cb])
    trainer.validate(model, DataLoader(data, batch_size=BATCH, shuffle=False), verbose=False)
    if trainer.is_global_zero:
        logged = {k: float(v) for k, v in trainer.callback_metrics.items() if "/nc" in k}
        with open(out, "w") as f:
            json.dump({"world_size": trainer.world_size, "history": cb.history, "logged": logged}, f)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
