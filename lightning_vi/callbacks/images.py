"""Image callbacks for generative families: sample grid, reconstructions, latent traversal.

Each logs through :func:`log_image`, so W&B, TensorBoard and file-based loggers all work.
"""

from __future__ import annotations

import lightning as L
import torch

from lightning_vi.callbacks.media import log_image, make_grid
from lightning_vi.core.protocols import Decodes, HasLatents, Samples, require_capability


class _EveryNEpochs(L.Callback):
    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs={every_n_epochs!r} is out of range; allowed: [1, inf)")
        self.every_n_epochs = every_n_epochs

    def _due(self, trainer: L.Trainer) -> bool:
        return (not trainer.sanity_checking and trainer.is_global_zero
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    @staticmethod
    def _val_images(trainer: L.Trainer, n: int) -> torch.Tensor:
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "splits", None):
            return dm.splits["val"]["x"][:n]
        batch = next(iter(trainer.val_dataloaders))
        return (batch["x"] if isinstance(batch, dict) else batch[0])[:n]

    @staticmethod
    def _require_images(x: torch.Tensor, user: str, what: str, pl_module: L.LightningModule) -> None:
        if x.ndim < 3:
            raise ValueError(f"{user} logs image grids, but {what} of {type(pl_module).__name__} have shape "
                             f"{tuple(x.shape)}; images need [N, C, H, W]. Remove the callback for this data.")


class SampleGrid(_EveryNEpochs):
    """Log a grid of ``n`` samples from ``pl_module.sample(n, generator)`` as ``media/samples``.

    Needs a family that :class:`~lightning_vi.core.protocols.Samples` (checked at ``setup``) and image samples.
    """

    def __init__(self, n: int = 64, every_n_epochs: int = 1, seed: int = 0) -> None:
        super().__init__(every_n_epochs)
        self.n, self.seed = n, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, Samples, "SampleGrid")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        with torch.no_grad():
            x = pl_module.sample(self.n, generator=torch.Generator().manual_seed(self.seed))
        self._require_images(x, "SampleGrid", "samples", pl_module)
        log_image(trainer, "media/samples", make_grid(x))


class Reconstructions(_EveryNEpochs):
    """Log validation inputs (top rows) above their reconstructions ``pl_module(x)``."""

    def __init__(self, n: int = 32, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.n = n

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        x = self._val_images(trainer, self.n).to(pl_module.device)
        self._require_images(x, "Reconstructions", "validation inputs", pl_module)
        with torch.no_grad():
            rec = pl_module(x)
        if not isinstance(rec, torch.Tensor) or rec.shape != x.shape:
            got = tuple(rec.shape) if isinstance(rec, torch.Tensor) else type(rec).__name__
            raise TypeError(f"Reconstructions needs {type(pl_module).__name__}(x) to return a reconstruction of "
                            f"x's shape {tuple(x.shape)}; got {got}")
        nrow = min(8, len(x))
        pairs = torch.cat([torch.cat([x[i:i + nrow], rec[i:i + nrow]]) for i in range(0, len(x), nrow)])
        log_image(trainer, "media/reconstructions", make_grid(pairs, nrow=nrow))


class LatentTraversal(_EveryNEpochs):
    """Vary each latent dimension over ``[-span, span]`` around a validation example's posterior mean.

    One row per latent dimension (up to ``max_dims``), ``steps`` columns. Needs a family with
    :class:`~lightning_vi.core.protocols.HasLatents` and :class:`~lightning_vi.core.protocols.Decodes`
    (checked at ``setup``); ``pl_module.mean(params)`` maps decoder outputs to images where the family has it.
    """

    def __init__(self, steps: int = 9, span: float = 2.5, max_dims: int = 10, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.steps, self.span, self.max_dims = steps, span, max_dims

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, HasLatents, "LatentTraversal")
        require_capability(pl_module, Decodes, "LatentTraversal")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        x = self._val_images(trainer, 1).to(pl_module.device)
        self._require_images(x, "LatentTraversal", "validation inputs", pl_module)
        with torch.no_grad():
            mu = pl_module.encode(x)[0][0]
            d = min(self.max_dims, mu.numel())
            values = torch.linspace(-self.span, self.span, self.steps, device=mu.device)
            z = mu.repeat(d * self.steps, 1)
            rows = torch.arange(d, device=mu.device).repeat_interleave(self.steps)
            z[torch.arange(len(z)), rows] = values.repeat(d)
            imgs = pl_module.mean(pl_module.decode(z)) if hasattr(pl_module, "mean") else pl_module.decode(z)
        log_image(trainer, "media/traversal", make_grid(imgs, nrow=self.steps))
