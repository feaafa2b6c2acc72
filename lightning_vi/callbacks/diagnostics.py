"""Posterior-collapse and active-variable diagnostics, logged each validation epoch (P01, P09).

Logs ``diag/active_units``, ``diag/collapsed_dims``, ``diag/mutual_information``,
``diag/kl_dim_<i>``, ``diag/passive_corr_mean`` / ``diag/passive_corr_sampled`` and
``diag/passive_pair_corr_mean`` / ``diag/passive_pair_corr_sampled`` (P09) and the images
``media/kl_per_dim`` (bar chart) and ``media/latent_correlations`` (mean vs sampled correlation matrices).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from lightning_vi.callbacks.media import figure_to_array, log_image
from lightning_vi.core.protocols import HasLatents, require_capability
from lightning_vi.metrics.latent import LatentStatistics, passive_correlation, passive_pair_correlation


class LatentDiagnostics(L.Callback):
    """Per-dimension KL, collapsed dims, active units, I(x; z) and mean-vs-sampled correlations.

    Args:
        au_threshold: variance of posterior means above which a unit is active (0.01).
        kl_threshold: mean KL (nats) below which a dimension counts as collapsed.
        max_examples: validation examples encoded per epoch. images: also log the figures.
    """

    def __init__(self, au_threshold: float = 0.01, kl_threshold: float = 0.01, max_examples: int = 2000,
                 images: bool = True) -> None:
        if au_threshold < 0 or kl_threshold < 0:
            raise ValueError(f"au_threshold={au_threshold!r}, kl_threshold={kl_threshold!r}: allowed [0, inf)")
        self.au_threshold, self.kl_threshold = au_threshold, kl_threshold
        self.max_examples, self.images = max_examples, images
        self.last: dict[str, torch.Tensor] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require_capability(pl_module, HasLatents, "LatentDiagnostics (e.g. on vae, cvae, hvae, cevae)")

    @torch.no_grad()
    def compute(self, pl_module: L.LightningModule, batch: dict) -> dict[str, torch.Tensor]:
        x = batch["x"][: self.max_examples].to(pl_module.device)
        if hasattr(pl_module, "condition_vector"):  # CVAE: q(z | x, c)
            c = pl_module.condition_vector(batch[pl_module.hparams.condition_key][: self.max_examples])
            out = pl_module.encode(x, c.to(pl_module.device))
        else:
            out = pl_module.encode(x)
        ok = (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
              and out[0].ndim == 2 and out[0].shape == out[1].shape)
        if not ok:
            got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                   for t in (out if isinstance(out, (tuple, list)) else [out])]
            raise TypeError(f"LatentDiagnostics needs {type(pl_module).__name__}.encode(x) to return (mu, log_var), "
                            f"two tensors of one shape [B, latent_dim]; got {got}")
        mu, log_var = out
        metric = LatentStatistics(mu.shape[1], self.au_threshold, self.kl_threshold).to(mu.device)
        metric.update(mu, log_var)
        return metric.compute()

    def _val_batch(self, trainer: L.Trainer) -> dict | None:
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "splits", None):
            return dm.splits["val"]
        loaders = trainer.val_dataloaders
        if loaders is None:
            return None
        return next(iter(loaders))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        batch = self._val_batch(trainer)
        if batch is None:
            return
        was_training = pl_module.training
        pl_module.eval()
        stats = self.compute(pl_module, batch)
        pl_module.train(was_training)
        self.last = stats
        pc_mean, pc_sampled = passive_correlation(stats)
        scalars = {"diag/active_units": stats["active_units"], "diag/collapsed_dims": stats["collapsed_dims"],
                   "diag/mutual_information": stats["mutual_information"]}
        scalars.update({f"diag/kl_dim_{i}": v for i, v in enumerate(stats["kl_per_dim"])})
        if not math.isnan(pc_mean):
            scalars.update({"diag/passive_corr_mean": pc_mean, "diag/passive_corr_sampled": pc_sampled})
        pp_mean, pp_sampled = passive_pair_correlation(stats)
        if not math.isnan(pp_mean):
            scalars.update({"diag/passive_pair_corr_mean": pp_mean, "diag/passive_pair_corr_sampled": pp_sampled})
        for k, v in scalars.items():
            pl_module.log(k, float(v), on_epoch=True)
        if self.images and trainer.is_global_zero:
            log_image(trainer, "media/kl_per_dim", kl_bar_chart(stats))
            log_image(trainer, "media/latent_correlations", correlation_figure(stats))


def kl_bar_chart(stats: dict[str, torch.Tensor]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = stats["kl_per_dim"].cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 2.5), dpi=80)
    ax.bar(range(len(kl)), kl, color=["tab:blue" if a else "tab:grey" for a in stats["active"].tolist()])
    ax.set_xlabel("latent dim (grey = passive)")
    ax.set_ylabel("KL (nats)")
    fig.tight_layout()
    return figure_to_array(fig)


def correlation_figure(stats: dict[str, torch.Tensor]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6, 3), dpi=80)
    for ax, key, title in zip(axes, ("corr_mean", "corr_sampled"), ("mean reps", "sampled reps")):
        ax.imshow(stats[key].abs().cpu().numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"|corr| {title}")
    fig.tight_layout()
    return figure_to_array(fig)
