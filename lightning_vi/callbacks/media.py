"""Logger-agnostic image logging: W&B, TensorBoard, or PNG files for any other logger (CSV, none)."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor


def make_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> Tensor:
    """Tile ``[N, C, H, W]`` images into one ``[C, H', W']`` grid (values scaled to [0, 1])."""
    images = images.detach().float().cpu()
    if images.ndim == 3:
        images = images.unsqueeze(1)
    n, c, h, w = images.shape
    lo, hi = images.amin(), images.amax()
    if lo < 0 or hi > 1:
        images = (images - lo) / (hi - lo).clamp_min(1e-8)
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    idx = torch.arange(n)
    for i in idx.tolist():  # n is a display-grid size (<= a few hundred), not the batch
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return grid


def to_uint8(image: Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] -> ``[H, W]`` or ``[H, W, 3]`` uint8."""
    arr = (image.clamp(0, 1) * 255).round().byte().cpu().numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr[:3], (1, 2, 0))


def log_image(trainer: L.Trainer, key: str, image: Tensor | np.ndarray, caption: str | None = None) -> list[str]:
    """Log one image through every active logger; returns where it went (for tests and messages).

    ``image`` is ``[C, H, W]`` in [0, 1] or an ``[H, W(, 3)]`` uint8 array (e.g. a matplotlib render).
    """
    arr = to_uint8(image) if isinstance(image, Tensor) else image
    step = trainer.global_step
    went = []
    for logger in trainer.loggers:
        name = type(logger).__name__
        if name == "WandbLogger":
            logger.log_image(key=key, images=[arr], **({"caption": [caption]} if caption else {}))
            went.append("wandb")
        elif name == "TensorBoardLogger":
            dataformats = "HW" if arr.ndim == 2 else "HWC"
            logger.experiment.add_image(key, arr, global_step=step, dataformats=dataformats)
            went.append("tensorboard")
        else:
            root = Path(getattr(logger, "log_dir", None) or trainer.default_root_dir)
            went.append(str(_save_png(root, key, step, arr)))
    if not trainer.loggers:
        went.append(str(_save_png(Path(trainer.default_root_dir), key, step, arr)))
    return went


def _save_png(root: Path, key: str, step: int, arr: np.ndarray) -> Path:
    from PIL import Image

    path = root / "media" / f"{key.replace('/', '_')}_step{step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def figure_to_array(fig) -> np.ndarray:
    """Render a matplotlib figure to an ``[H, W, 3]`` uint8 array and close it."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return arr
