"""Write the outputs of ``lvi predict`` to one ``.npz`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from lightning_vi.metrics.restoration import psnr


class NpzPredictionWriter(BasePredictionWriter):
    """At the end of prediction, concatenate every tensor entry of the per-batch prediction dicts
    over batches and save them to ``output_dir/filename`` (``-rank<r>`` added under DDP).

    If the dicts hold ``target_key`` (e.g. ``clean``), the file also holds ``psnr_<key>`` (dB, via
    torchmetrics, values clamped to ``[0, data_range]``) for every other entry of the target's shape,
    which is printed and sent to the loggers as ``predict/psnr_<key>``.
    """

    def __init__(self, output_dir: str = "predictions", filename: str = "predictions.npz",
                 target_key: str | None = "clean", data_range: float = 1.0) -> None:
        super().__init__(write_interval="epoch")
        if not filename.endswith(".npz"):
            raise ValueError(f"filename={filename!r} must end with '.npz'")
        if data_range <= 0:
            raise ValueError(f"data_range={data_range!r} is out of range; allowed: (0, inf)")
        self.output_dir, self.filename, self.target_key, self.data_range = Path(output_dir), filename, target_key, data_range
        self.path: Path | None = None

    @staticmethod
    def _batches(predictions: Sequence[Any]) -> list[dict[str, torch.Tensor]]:
        flat = [b for p in predictions for b in (p if isinstance(p, list) else [p])]  # several dataloaders
        bad = [type(b).__name__ for b in flat if not isinstance(b, dict)]
        if bad:
            raise TypeError(f"NpzPredictionWriter needs predict_step to return dicts of tensors; got {bad[0]}")
        return flat

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        batches = self._batches(predictions)
        if not batches:
            return
        arrays = {k: torch.cat([b[k].detach().cpu() for b in batches]) for k, v in batches[0].items()
                  if isinstance(v, torch.Tensor)}
        scores: dict[str, float] = {}
        target = arrays.get(self.target_key) if self.target_key else None
        if target is not None:
            for k, v in arrays.items():
                if k != self.target_key and v.shape == target.shape:
                    scores[f"psnr_{k}"] = psnr(v.float(), target.float(), self.data_range)
        name = self.filename if trainer.world_size == 1 else self.filename.replace(".npz", f"-rank{trainer.global_rank}.npz")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / name
        np.savez(self.path, **{k: v.float().numpy() for k, v in arrays.items()}, **{k: np.float64(s) for k, s in scores.items()})
        summary = ", ".join(f"{k} {s:.2f} dB" for k, s in scores.items())
        rank_zero_info(f"wrote {self.path} ({', '.join(arrays)}){': ' + summary if summary else ''}")
        for logger in trainer.loggers:
            logger.log_metrics({f"predict/{k}": s for k, s in scores.items()})
