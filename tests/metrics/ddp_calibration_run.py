"""Test split of a fixed classifier, run by ``python ddp_calibration_run.py DEVICES OUT.json``.

A script (not a pytest test) because multi-process ``strategy="ddp"`` re-launches the running script
for rank 1 and must not share a pytest process with other Lightning runs (NOTES.md). Rank 0 writes the
epoch-level ``test/*`` metrics to OUT.json. ``build()`` is imported by the test for the single-process
run and for its numpy reference, so every process sees the same weights and data.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

from helpers import DictDataset

#: 202 examples: divisible by 2 processes, so DistributedSampler gives each rank 101 distinct examples and
#: pads none (an odd size would repeat one example on one rank and change the metrics); batch 37 makes
#: the batches unequal (37, 37, 27 per rank; 37 x 5 + 17 in one process).
N, BATCH, FEATURES, CLASSES = 202, 37, 8, 5


def build(seed: int = 0, n: int = N, head_scale: float = 6.0):
    """A fixed untrained MLP classifier (head scaled up, so confidences spread over the ECE bins) and data
    whose label is the model's prediction with probability ``1.6 conf - 0.3`` (clamped to [0, 1]) and
    another class otherwise: the model is over-confident below conf = 0.5 and under-confident above, so the
    ECE depends on the bins (not only on mean confidence - accuracy)."""
    from lightning_vi.families.classifier import Classifier

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g) * 2.0
    torch.manual_seed(seed)
    model = Classifier(input_shape=[FEATURES], num_classes=CLASSES, backbone="mlp", hidden_dims=[32], feature_dim=16)
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
        conf, pred = torch.softmax(model.eval()(x), -1).max(-1)
    model.train()
    hit = torch.rand(n, generator=g) < (1.6 * conf - 0.3).clamp(0, 1)
    other = (pred + torch.randint(1, CLASSES, (n,), generator=g)) % CLASSES
    y = torch.where(hit, pred, other)
    return model, DictDataset(x, y)


def main(devices: int, out: str) -> None:
    torch.set_num_threads(1)
    model, data = build()
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, DataLoader(data, batch_size=BATCH, shuffle=False), verbose=False)
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        with open(out, "w") as f:
            json.dump({"world_size": trainer.world_size, "metrics": metrics}, f)
    # Tear gloo down before the interpreter exits: left to exit, its threads can abort the process
    # ("terminate called without an active exception", exit -6) on a loaded machine.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
