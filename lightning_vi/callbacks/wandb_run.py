"""W&B runs that tell the truth: failed runs marked failed, resumed runs continued, best values in the summary.

``lvi`` adds :class:`WandbRunRecord` by itself whenever a ``WandbLogger`` is among the trainer's loggers (it
does nothing with other loggers), so every config gains this without edits:

* **exit code**: an exception during fit/validate/test/predict finishes the run with ``exit_code=1`` (W&B shows
  it as failed) after recording the error in the summary (``lvi/error``); ``lvi`` finishes a successful run with
  ``exit_code=0``. With ``log_model: true`` the checkpoints saved before the failure are still logged.
* **resume**: every checkpoint stores the run id under ``checkpoint["wandb_run_id"]``; ``lvi fit --ckpt_path
  X.ckpt`` reads it and continues that run (``id`` + ``resume="allow"``) instead of opening an unlinked one.
* **best values**: metrics get ``define_metric(name, summary="<min|max>,last")`` before they are first logged:
  a ``ModelCheckpoint``/``EarlyStopping`` monitor with its ``mode``; otherwise by name, ``min`` for losses and
  errors (``loss``, ``nll``, ``error``, ``mse``, ``ece``, ``bpd``, ...), ``max`` for accuracy-like metrics
  (``acc*``, ``elbo``, ``auc``, ``auroc``, ``f1``). Other metrics keep the last value.
* **group / job type**: ``group`` defaults to the logger's run name (else the trainer's ``default_root_dir`` name),
  ``job_type`` to the subcommand (``fit``, ``test``, ...), unless the logger's arguments set them.

The run settings must be in place before ``wandb.init``; Lightning creates the experiment at the start of
``trainer.fit`` (before any callback hook), so the CLI calls :meth:`WandbRunRecord.prepare` before it runs the
subcommand. Without the CLI, call ``record.prepare(trainer, "fit", ckpt_path)`` yourself before ``trainer.fit``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

RUN_ID_KEY = "wandb_run_id"
MODES = ("min", "max")
_MIN_WORDS = {"loss", "nll", "error", "err", "mse", "rmse", "mae", "ece", "bpd", "fid", "nfe"}
_MAX_WORDS = {"elbo", "auc", "auroc", "f1"}


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """The trainer's ``WandbLogger``s (an empty list with other loggers or none)."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def summary_mode(name: str, monitors: dict[str, str] | None = None) -> str | None:
    """``"min"``, ``"max"`` or ``None`` (keep the last value) for a metric name such as ``val/loss``.

    A monitored metric takes its callback's mode; otherwise the words of the name's last part decide
    (``train/loss_epoch`` -> min, ``val/acc`` -> max, ``val/recon`` -> None)."""
    if monitors and name in monitors:
        return monitors[name]
    words = re.split(r"[_\-.]", name.rsplit("/", 1)[-1].lower())
    if any(w in _MIN_WORDS for w in words):
        return "min"
    if any(w.startswith("acc") or w in _MAX_WORDS for w in words):
        return "max"
    return None


def read_run_id(ckpt_path: str | Path) -> str | None:
    """The W&B run id a checkpoint was saved under (``checkpoint["wandb_run_id"]``), or ``None``."""
    from lightning.fabric.utilities.cloud_io import _load

    checkpoint = _load(ckpt_path, map_location="cpu")  # Lightning's own loader: the file the resume reads anyway
    run_id = checkpoint.get(RUN_ID_KEY) if isinstance(checkpoint, dict) else None
    return str(run_id) if run_id else None


class WandbRunRecord(Callback):
    """Finish W&B runs with their real exit code, continue resumed runs, keep best values in the summary.

    Args:
        group: W&B group; default the logger's run name, else the name of ``trainer.default_root_dir``.
        job_type: W&B job type; default the subcommand (``fit``, ``validate``, ``test``, ``predict``).
        summary: extra ``{metric name: "min" | "max"}`` rules; they win over monitors and name rules.
    """

    def __init__(self, group: str | None = None, job_type: str | None = None,
                 summary: dict[str, str] | None = None) -> None:
        summary = dict(summary or {})
        bad = {k: v for k, v in summary.items() if v not in MODES}
        if bad:
            raise ValueError(f"WandbRunRecord summary modes {bad} are not allowed; use one of {MODES}")
        self.group, self.job_type, self.summary = group, job_type, summary
        self._defined: set[str] = set()
        self._monitors: dict[str, str] = {}
        self._wrapped: list[WandbLogger] = []

    # -- before wandb.init --------------------------------------------------------------------------------
    def prepare(self, trainer: L.Trainer, subcommand: str, ckpt_path: str | Path | None = None) -> None:
        """Set group, job type and (for a resumed fit) the run id in each WandbLogger's ``wandb.init`` kwargs.

        Must run before the experiment exists; a logger whose run already started is left alone, with a warning."""
        run_id = None
        if subcommand == "fit" and ckpt_path is not None and Path(ckpt_path).is_file():
            run_id = read_run_id(ckpt_path)
        for logger in wandb_loggers(trainer):
            if logger._experiment is not None:
                rank_zero_warn(f"WandbRunRecord: the W&B run {logger._experiment.id} already started; its group, "
                               "job type and resume id stay as they are")
                continue
            init = logger._wandb_init
            if init.get("dir"):  # wandb's service process may run in another cwd (a second run in one process)
                init["dir"] = str(Path(init["dir"]).resolve())
            if init.get("group") is None:
                init["group"] = self.group or init.get("name") or Path(trainer.default_root_dir).resolve().name
            if init.get("job_type") is None:
                init["job_type"] = self.job_type or subcommand
            if run_id is not None and init.get("id") is None:
                init["id"] = logger._id = run_id
                if init.get("resume") is None:
                    init["resume"] = "allow"

    # -- during the run -----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for cb in trainer.callbacks:
            if isinstance(cb, (ModelCheckpoint, EarlyStopping)) and cb.monitor and cb.mode in MODES:
                self._monitors.setdefault(cb.monitor, cb.mode)
        self._monitors.update(self.summary)
        for logger in wandb_loggers(trainer):
            if logger in self._wrapped:
                continue
            self._define(logger, self._monitors)
            logger.log_metrics = self._defining(logger, logger.log_metrics)  # type: ignore[method-assign]
            self._wrapped.append(logger)

    def _defining(self, logger: WandbLogger, log_metrics: Any) -> Any:
        """``log_metrics`` that first defines the summary of each metric name it has not seen."""

        def wrapper(metrics: Any, step: int | None = None) -> None:
            self._define(logger, metrics)
            return log_metrics(metrics, step)

        return wrapper

    def _define(self, logger: WandbLogger, names: Any) -> None:
        new = [n for n in names if n not in self._defined]
        for name in new:
            self._defined.add(name)
            mode = summary_mode(name, self._monitors)
            if mode is not None:  # keep Lightning's x-axis (it defines "*" with this step metric)
                logger.experiment.define_metric(name, summary=f"{mode},last",
                                                step_metric="trainer/global_step", step_sync=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        for logger in wandb_loggers(trainer):
            if logger.version:
                checkpoint[RUN_ID_KEY] = logger.version
                return

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.finish(trainer, exit_code=1, error=exception)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in self._wrapped:
            logger.__dict__.pop("log_metrics", None)
        self._wrapped = []

    # -- the end ------------------------------------------------------------------------------------------
    def finish(self, trainer: L.Trainer, exit_code: int = 0, error: BaseException | None = None) -> None:
        """Finish each started W&B run with ``exit_code``; on failure first record the error and log the
        checkpoints saved so far when ``log_model=True`` (Lightning logs them only after a success)."""
        for logger in wandb_loggers(trainer):
            run = logger._experiment
            if run is None or not hasattr(run, "finish"):
                continue
            if exit_code != 0:
                if error is not None:
                    run.summary["lvi/error"] = f"{type(error).__name__}: {error}"
                for cb in list(getattr(logger, "_checkpoint_callbacks", {}).values()):
                    logger._scan_and_log_checkpoints(cb)
            run.finish(exit_code=exit_code)
