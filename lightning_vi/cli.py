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
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

import lightning_vi.callbacks  # noqa: F401  (short class names in configs: SampleGrid, ...)
import lightning_vi.data  # noqa: F401  (short class names in configs: DigitsDataModule, ...)
from lightning_vi.callbacks.wandb_run import WandbRunRecord, wandb_loggers
from lightning_vi.core.module import NonFiniteLossError, VIModule
from lightning_vi.registry import FAMILIES, PLUGINS, UnknownNameError

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Writes ``config.yaml`` next to the logs and records the resolved config in every logger (W&B config)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class VICLI(LightningCLI):
    """LightningCLI with the registry's names available and the omegaconf parser mode."""

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        return _add_wandb_record(super().instantiate_trainer(**kwargs))

    def _run_subcommand(self, subcommand: str) -> None:
        record = _wandb_record(self.trainer)
        if record is not None:  # group, job type and resumed run id go in before wandb.init
            record.prepare(self.trainer, subcommand, self.config_init[subcommand].get("ckpt_path"))
        super()._run_subcommand(subcommand)


def _add_wandb_record(trainer: L.Trainer) -> L.Trainer:
    """Add a ``WandbRunRecord`` when a WandbLogger logs and the config did not add one (no-op otherwise)."""
    if wandb_loggers(trainer) and _wandb_record(trainer) is None:
        trainer.callbacks.append(WandbRunRecord())
    return trainer


def _wandb_record(trainer: L.Trainer | None) -> WandbRunRecord | None:
    return next((cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, WandbRunRecord)), None)


def _finish_wandb(cli: VICLI) -> None:
    """``lvi`` ends a successful run with exit code 0 (failures are finished with 1 by ``WandbRunRecord``)."""
    trainer = getattr(cli, "trainer", None)
    record = _wandb_record(trainer)
    if record is not None:
        record.finish(trainer, exit_code=0)


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
        save_config_callback=LoggerSaveConfigCallback,
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
        cli = build_cli(argv)
    except (UnknownNameError, FileNotFoundError, ValueError, NonFiniteLossError) as err:
        if os.environ.get("LVI_TRACEBACK"):
            raise
        print(f"lvi: error: {_user_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    _finish_wandb(cli)


if __name__ == "__main__":
    main()
