"""The ``lvi`` command: LightningCLI (omegaconf parser mode) plus ``lvi plugins`` and ``lvi families``.

``lvi fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` work the same
way. In configs, ``model.class_path`` may be a registered family name (``vae``) and each entry of
``model.init_args.plugins`` a registered plugin name (``cutmix``) or ``{name: {args}}``; unknown names
stop before anything runs, with the known names and the closest match.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

import lightning_vi.callbacks  # noqa: F401  (short class names in configs: SampleGrid, ...)
import lightning_vi.data  # noqa: F401  (short class names in configs: DigitsDataModule, ...)
from lightning_vi import checkpoints as ckpts
from lightning_vi.core.module import NonFiniteLossError, VIModule
from lightning_vi.registry import FAMILIES, PLUGINS, UnknownNameError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Writes ``config.yaml`` next to the logs and records the resolved config in every logger (W&B config)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class RecordConfigCallback(LoggerSaveConfigCallback):
    """The config record of a fit: ``config.yaml`` beside its checkpoints, written by nothing else.

    It is written (once per fit, for every checkpoint folder) just before the run's first checkpoint
    is saved, so a run that fails before saving leaves the previous record with the previous
    checkpoints; ``lvi validate/test/predict`` never write it. Each checkpoint also carries the same
    text under ``checkpoint["lvi_config"]``. The resolved config still goes to every logger.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["save_to_log_dir"] = False  # the log folder is shared by every command: see on_save_checkpoint
        super().__init__(*args, **kwargs)
        self._recorded: set[str] = set()
        self._text: str | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.already_saved and trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def record_text(self) -> str:
        if self._text is None:
            from datetime import datetime, timezone

            started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            self._text = (f"# The resolved config of the `lvi fit` run (started {started}) that wrote the checkpoints\n"
                          "# in this folder. Later commands do not change this file; the next fit here replaces it\n"
                          "# together with last.ckpt.\n" + self.parser.dump(self.config, skip_none=False))
        return self._text

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":
            return
        checkpoint["lvi_config"] = self.record_text()
        if not trainer.is_global_zero:
            return
        for cb in trainer.checkpoint_callbacks:
            folder = getattr(cb, "dirpath", None)
            if folder and folder not in self._recorded:
                Path(folder).mkdir(parents=True, exist_ok=True)
                tmp = Path(folder) / ".config.yaml.tmp"
                tmp.write_text(checkpoint["lvi_config"])
                os.replace(tmp, Path(folder) / "config.yaml")
                self._recorded.add(folder)


class VICLI(LightningCLI):
    """LightningCLI with the registry's names available and the omegaconf parser mode.

    On top of Lightning: a ``fit`` with smoke settings writes under ``<default_root_dir>/smoke/``
    (``--smoke false`` keeps the real folders), and ``--ckpt_path`` is read and checked against the
    model the config builds before anything runs (:mod:`lightning_vi.checkpoints`).
    """

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--smoke", type=Optional[bool], default=None,
            help="fit only: true/false mark the run as a smoke test or a real run; default (null): a smoke "
                 "test when fast_dev_run, or limit_*_batches / max_steps / overfit_batches given on the "
                 f"command line. Smoke runs write under <trainer.default_root_dir>/{ckpts.SMOKE_FOLDER}/.")

    def _parse_ckpt_path(self) -> None:
        """Lightning (2.6) would replace the config's model here by the hyper-parameters stored in the
        checkpoint (with an unsafe-loading traceback for a bad file), so the classifier config given a VAE
        checkpoint trains a VAE. lvi keeps the config's model: the checkpoint is read safely and its family
        checked now, its weights against the built model in ``before_<subcommand>``."""
        self._lvi_checkpoint = _read_ckpt_path(self)

    def before_instantiate_classes(self) -> None:
        _redirect_smoke_run(self)

    def before_fit(self) -> None:
        _check_ckpt_path(self, "fit")
        _note_checkpoint_folder(self)

    def before_validate(self) -> None:
        _check_ckpt_path(self, "validate")

    def before_test(self) -> None:
        _check_ckpt_path(self, "test")

    def before_predict(self) -> None:
        _check_ckpt_path(self, "predict")


def _redirect_smoke_run(cli: LightningCLI) -> None:
    """A smoke ``fit`` writes its checkpoints and logs under ``<default_root_dir>/smoke`` (one notice)."""
    if cli.subcommand != "fit":
        return
    config = cli.config[cli.subcommand]
    forced = config.get("smoke")
    reasons = ckpts.smoke_settings(config["trainer"], sys.argv[1:])
    if forced is False or not (forced or reasons):
        return
    folder = ckpts.redirect_to_smoke_folder(config["trainer"])
    why = ", ".join(reasons) or "--smoke true"
    ckpts.notice(f"smoke run ({why}): checkpoints and logs go to {folder}/, not to the run's own folder "
                 "(pass --smoke false to write there).")


def _read_ckpt_path(cli: LightningCLI) -> tuple[str, dict] | None:
    """Read the subcommand's ``--ckpt_path`` safely; stop if it was written by another family."""
    subcommand = cli.config.get("subcommand")
    path = cli.config[subcommand].get("ckpt_path") if subcommand else None
    if path is None or not ckpts.is_checkpoint_file_path(path):
        return None
    ckpt = ckpts.read_checkpoint(path)
    model = cli.config[subcommand].get("model")
    ckpts.check_family(ckpt, path, getattr(model, "class_path", None))
    return str(path), ckpt


def _check_ckpt_path(cli: LightningCLI, subcommand: str) -> None:
    """Check ``--ckpt_path`` against the model the config built (family, weight names and shapes)."""
    found = getattr(cli, "_lvi_checkpoint", None) or _read_ckpt_path(cli)
    cli._lvi_checkpoint = None  # do not hold the weights in memory during the run
    if found is None:
        return
    path, ckpt = found
    others = ckpts.check_fits_model(ckpt, path, cli.model)
    if others:
        ckpts.notice(f"the config's values are used, not those saved in {path}: " + "; ".join(others))


def _note_checkpoint_folder(cli: LightningCLI) -> None:
    """One-line notices before a fit: an earlier run's last.ckpt is replaced; a save_last that goes stale."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    resume = cli.config_init["fit"].get("ckpt_path")
    resume = Path(resume).resolve() if resume and ckpts.is_checkpoint_file_path(resume) else None
    for cb in cli.trainer.checkpoint_callbacks:
        if isinstance(cb, ckpts.LastCheckpoint) and cb.dirpath and not cli.trainer.fast_dev_run:
            last = Path(cb.dirpath) / f"{cb.filename}.ckpt"
            if last.is_file() and last.resolve() != resume:
                ckpts.notice(f"{last} is from an earlier run; this run replaces it "
                             f"(to continue that run instead: --ckpt_path {last}).")
        elif isinstance(cb, ModelCheckpoint) and cb.save_last and cb.monitor is not None:
            ckpts.notice(f"ModelCheckpoint(monitor={cb.monitor!r}, save_last={cb.save_last!r}) rewrites last.ckpt "
                         "only when the monitored value improves; add lightning_vi.checkpoints.LastCheckpoint for "
                         "a last.ckpt that is always the latest state.")


def _load_yaml(path: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path!r} is not valid YAML: {err}") from None


def _resolve_names(config: Any) -> bool:
    """Replace registered family/plugin names by class paths in a parsed config; True if changed."""
    if not isinstance(config, dict):
        return False
    changed = False
    model = config.get("model")
    if isinstance(model, dict):
        path = model.get("class_path")
        if isinstance(path, str) and "." not in path and path not in _family_class_names():
            cls = FAMILIES.get(path)  # raises UnknownNameError listing the known families
            model["class_path"] = f"{cls.__module__}.{cls.__qualname__}"
            changed = True
        args = model.get("init_args") or {}
        for spec in args.get("plugins") or []:
            name = spec if isinstance(spec, str) else (
                spec.get("class_path") if isinstance(spec, dict) and "class_path" in spec
                else next(iter(spec)) if isinstance(spec, dict) and len(spec) == 1 else None)
            if isinstance(name, str) and "." not in name and name not in _plugin_class_names():
                PLUGINS.get(name)  # validate early
    for sub in SUBCOMMANDS:  # configs written per subcommand
        changed |= _resolve_names(config.get(sub))
    return changed


def _family_class_names() -> set[str]:
    return {cls.__name__ for _, cls in FAMILIES.items()}


def _plugin_class_names() -> set[str]:
    return {cls.__name__ for _, cls in PLUGINS.items()}


def _remove(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def _preprocess(argv: list[str]) -> list[str]:
    """Resolve registry names inside ``--config`` files (rewritten to a temporary copy if needed)."""
    out = list(argv)
    for i, arg in enumerate(argv):
        path = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path, j = argv[i + 1], i + 1
        elif arg.startswith("--config="):
            path, j = arg.split("=", 1)[1], i
        if path is None:
            continue
        config = _load_yaml(path)
        if _resolve_names(config):
            tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="lvi-", delete=False)
            yaml.safe_dump(config, tmp)
            tmp.close()
            atexit.register(_remove, tmp.name)
            out[j] = tmp.name if j == i + 1 else f"--config={tmp.name}"
    for i, arg in enumerate(argv):  # --model vae on the command line
        if arg in ("--model", "--model.class_path") and i + 1 < len(argv) and "." not in argv[i + 1]:
            name = argv[i + 1]
            if name not in _family_class_names() and not name.startswith(("{", "[")) and not name.endswith(".yaml"):
                cls = FAMILIES.get(name)
                out[i + 1] = f"{cls.__module__}.{cls.__qualname__}"
    return out


def build_cli(args: list[str] | None = None, run: bool = True) -> VICLI:
    """Build (and by default run) the LightningCLI; ``args`` as on the command line."""
    os.environ.setdefault("WANDB_MODE", "offline")
    FAMILIES.discover()
    PLUGINS.discover()
    argv = _preprocess(list(sys.argv[1:] if args is None else args))
    # LightningCLI reads sys.argv; DDP launchers re-run this command line in the child processes.
    saved, sys.argv = sys.argv, [sys.argv[0] if sys.argv else "lvi", *argv]
    try:
        return _make_cli(run)
    finally:
        sys.argv = saved


def _make_cli(run: bool) -> VICLI:
    return VICLI(
        VIModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=RecordConfigCallback,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
        run=run,
    )


def _user_message(err: BaseException) -> str:
    """The error a user needs: jsonargparse wraps a family's own check (e.g. ``latent_dim=0 is out of
    range``) in a "Union subtypes" report listing every alternative; keep only the family's lines."""
    text = str(err)
    if "Union subtypes" not in text:
        return text
    lines = [ln.strip()[2:] for ln in text.splitlines() if ln.strip().startswith("- ")]
    lines = [ln for ln in lines if "NoneType" not in ln]
    return "\n".join(lines) or text


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in ("plugins", "families"):
        registry = PLUGINS if argv[0] == "plugins" else FAMILIES
        print(registry.listing())
        return
    try:
        build_cli(argv)
    except (UnknownNameError, FileNotFoundError, ValueError, NonFiniteLossError) as err:
        if os.environ.get("LVI_TRACEBACK"):
            raise
        print(f"lvi: error: {_user_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
