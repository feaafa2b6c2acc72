"""The ``lvi`` command: LightningCLI (omegaconf parser mode) plus ``lvi plugins`` and ``lvi families``.

``lvi fit --config configs/quickstart.yaml`` trains; ``validate``, ``test`` and ``predict`` work the same
way. In configs, ``model.class_path`` may be a registered family name (``vae``) and each entry of
``model.init_args.plugins`` a registered plugin name (``cutmix``) or ``{name: {args}}``; unknown names
stop before anything runs, with the known names and the closest match.
"""

from __future__ import annotations

import argparse
import atexit
import difflib
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

import lightning_vi.callbacks  # noqa: F401  (short class names in configs: SampleGrid, ...)
import lightning_vi.data  # noqa: F401  (short class names in configs: DigitsDataModule, ...)
from lightning_vi import checkpoints as ckpts
from lightning_vi.callbacks.wandb_run import WandbRunRecord, wandb_loggers
from lightning_vi.core.module import NonFiniteLossError, VIModule, import_object
from lightning_vi.registry import FAMILIES, PLUGINS, UnknownNameError

SUBCOMMANDS = ("fit", "validate", "test", "predict")
LISTINGS = ("families", "plugins")
DESCRIPTION = (
    "lightning-vi: train and evaluate variational and generative models from YAML. "
    "`lvi fit --config configs/quickstart.yaml` trains; validate, test and predict work the same way. "
    "`lvi families` lists the model families and `lvi plugins` the regularizer plugins, by the registered "
    "names that configs use (model.class_path: vae, model.init_args.plugins: [cutmix]); "
    "`lvi fit --model.help vae` and `lvi fit --model vae --model.init_args.plugins.help cutmix` show their arguments. "
    "Set LVI_TRACEBACK=1 to see the traceback behind an error."
)
#: Temporary resolved config -> the file the user gave (so messages name the user's file).
_CONFIG_SOURCES: dict[str, str] = {}


class ConfigError(ValueError):
    """A bad key or value in the config or on the command line; the message names it and the allowed ones."""


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

    Parse errors come back as a :class:`ConfigError` naming the bad key, the closest accepted one and
    all accepted ones (instead of argparse's usage dump); the Trainer's own checks name the setting.

    On top of Lightning: a ``fit`` with smoke settings writes under ``<default_root_dir>/smoke/``
    (``--smoke false`` keeps the real folders), and ``--ckpt_path`` is read and checked against the
    model the config builds before anything runs (:mod:`lightning_vi.checkpoints`).
    """

    def parse_arguments(self, parser: Any, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except argparse.ArgumentError as err:
            raise ConfigError(_argument_message(str(err), self, sys.argv[1:])) from err

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        if self.subcommand == "fit":
            _check_trainable(self.model, sys.argv[1:])
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            raise ConfigError(_trainer_message(err, self._get(self.config, "trainer") or {})) from err
        return _add_wandb_record(trainer)

    def _run_subcommand(self, subcommand: str) -> None:
        record = _wandb_record(self.trainer)
        if record is not None:  # group, job type and resumed run id go in before wandb.init
            record.prepare(self.trainer, subcommand, self.config_init[subcommand].get("ckpt_path"))
        super()._run_subcommand(subcommand)

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
        if self._lvi_checkpoint is not None:
            _take_checkpoint_hparams(self, self._lvi_checkpoint[1])

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


def _take_checkpoint_hparams(cli: LightningCLI, ckpt: dict) -> None:
    """Copy into the config the hyper-parameters the family takes from its checkpoint
    (``hparams_from_checkpoint``, e.g. a diffusion consumer's frozen producer spec)."""
    model = cli.config[cli.config["subcommand"]].get("model")
    class_path = getattr(model, "class_path", None)
    if not class_path or getattr(model, "init_args", None) is None:
        return
    try:
        keys = getattr(import_object(class_path), "hparams_from_checkpoint", ())
    except (ImportError, AttributeError, ValueError):
        return
    saved = ckpt.get("hyper_parameters") or {}
    for key in keys:
        if saved.get(key) is not None and key in model.init_args:
            model.init_args[key] = saved[key]


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
            _CONFIG_SOURCES[tmp.name] = path
            out[j] = tmp.name if j == i + 1 else f"--config={tmp.name}"
    for i, arg in enumerate(argv):  # --model vae, --model.help vae, --model.init_args.plugins.help cutmix
        key, eq, value = arg.partition("=")
        registry = _registry_for(key)
        if registry is None:
            continue
        if not eq:
            if i + 1 >= len(argv):
                continue
            value = argv[i + 1]
        if "." in value or value.startswith(("{", "[", "-")) or value.endswith((".yaml", ".yml", ".json")):
            continue
        classes = _family_class_names() if registry is FAMILIES else _plugin_class_names()
        if value in classes:
            continue
        cls = registry.get(value)  # raises UnknownNameError listing the known names
        path = f"{cls.__module__}.{cls.__qualname__}"
        if eq:
            out[i] = f"{key}={path}"
        else:
            out[i + 1] = path
    return out


def _registry_for(key: str) -> Any:
    """Registry whose names an option takes: families for ``--model``/``--model.help``, plugins for ``...plugins.help``."""
    if key in ("--model", "--model.class_path", "--model.help"):
        return FAMILIES
    if key.startswith("--model.") and key.endswith(".plugins.help"):
        return PLUGINS
    return None


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
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False, "description": DESCRIPTION},
        auto_configure_optimizers=False,
        run=run,
    )


def _closest(word: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(word, allowed, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def _accepted_keys(cls: type) -> list[str]:
    """Init arguments that jsonargparse accepts for ``cls`` (it follows ``**kwargs`` into base classes)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "x")
    keys = [a.dest[2:] for a in parser._actions if a.dest.startswith("x.")]
    return [k for k in keys if "." not in k]


def _option_names(cli: VICLI, argv: list[str]) -> list[str]:
    """Long options of the subcommand being parsed (without the leading ``--``)."""
    sub = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = getattr(cli, "_subcommand_parsers", {}).get(sub, cli.parser)
    names = {opt[2:] for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    return sorted(n for n in names if not n.endswith(".help"))


def _argument_message(text: str, cli: VICLI, argv: list[str]) -> str:
    """One short message for a jsonargparse parse error: the bad key, the closest accepted key, all accepted keys."""
    key = re.search(r'Parser key "([^"]+)"', text)
    bad = re.search(r"Problem with given class_path '([\w.]+)':\s*Option '([^']+)' is not accepted", text)
    if bad:
        try:
            cls = _import(bad.group(1))
            accepted = _accepted_keys(cls)
        except Exception:  # noqa: BLE001 - fall back to the raw report below
            accepted = []
        if accepted:
            where = f"{key.group(1)}.init_args" if key else "init_args"
            option = bad.group(2)
            return (f"unknown key {option!r} in {where} ({cls.__name__}); {_closest(option, accepted)}"
                    f"accepted: {', '.join(accepted)}")
    unknown = re.search(r"unrecognized arguments: (.*)", text)
    if unknown:
        options = [a for a in unknown.group(1).split() if a.startswith("--")]
        if options:
            option = options[0].split("=", 1)[0][2:]
            allowed = ["--" + n for n in _option_names(cli, argv) if not n.endswith("+")]
            group = "--" + option.rsplit(".", 1)[0] + "." if "." in option else "--"
            same = [n for n in allowed if n.startswith(group) and "." not in n[len(group):]]
            where = f" in {group[2:-1]}" if group != "--" else ""
            return (f"unknown option '--{option}'; {_closest('--' + option, allowed)}"
                    f"accepted{where}: {', '.join(same or allowed)}")
    key_error = (re.search(r"does not accept option '([^']+)'", text) or re.search(r"Key '([^']+)' is not expected", text)
                 or re.search(r"Option '([^']+)' is not accepted", text))
    if key_error:
        option = key_error.group(1)
        allowed = [n for n in _option_names(cli, argv) if not n.endswith("+")]
        group = option.rsplit(".", 1)[0] + "." if "." in option else ""
        same = [n[len(group):] for n in allowed if n.startswith(group) and "." not in n[len(group):]]
        return (f"unknown key {option!r}; {_closest(option, allowed)}"
                f"accepted{' in ' + group[:-1] if group else ''}: {', '.join(same or allowed)}")
    return _value_message(text) or _user_message(text)


def _value_message(text: str) -> str | None:
    """``key=value is invalid: expected int`` for a value of the wrong type (jsonargparse's Union report, reduced)."""
    keys = re.findall(r'Parser key "([^"]+)"', text)
    if not keys:
        return None
    key = keys[0] + "".join((".init_args." if "class_path" in text else ".") + k for k in keys[1:])
    value = re.search(r"Got value: (.*)", text) or re.search(r"NestedArg\(key='[^']*', val=(.*)\)\s*$", text) \
        or re.search(r"Given value: (.*)\s*$", text)
    expected, choices = [], []
    for item in re.findall(r"Expected a (.+?)(?:\. Got value: .*)?$", text, flags=re.M):
        literal = re.match(r"^typing\.Literal\[(.*)\]$", item)
        if literal:
            choices += [c for c in literal.group(1).split(", ") if c not in choices]
            continue
        item = re.sub(r"<class '(?:builtins\.)?([\w.]+)'>", r"\1", item)
        if item != "NoneType" and item not in expected:
            expected.append(item)
    if choices:
        expected.insert(0, f"one of {', '.join(choices)}")
    if not expected:
        return None
    shown = f"={value.group(1).strip()}" if value else ""
    return f"{key}{shown} is invalid: expected {' or '.join(expected)}"


def _import(path: str) -> Any:
    import importlib

    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _trainer_message(err: BaseException, trainer_config: Any) -> str:
    """``trainer.<key>=<value> is invalid: <Lightning's reason>`` for the setting that the Trainer rejected."""
    text = str(err).strip()
    config = dict(trainer_config.items()) if hasattr(trainer_config, "items") else {}
    named = re.findall(r"`(\w+)", text) + re.findall(r"\b(\w+)\b", text)
    key = next((k for k in named if k in config and config[k] is not None), None)
    if key is None:
        return f"invalid trainer settings: {text}"
    reason = re.sub(r"\s*You passed in .*$", "", text)
    return f"trainer.{key}={config[key]!r} is invalid: {reason}"


def _check_trainable(model: Any, argv: list[str]) -> None:
    """Stop ``lvi fit`` before anything runs when the model has nothing to optimize (e.g. ``red_diff``)."""
    if model is None or any(p.requires_grad for p in model.parameters()):
        return
    name = FAMILIES.name_of(model) or type(model).__name__
    args = [_user_arg(a) for a in argv]
    rest = " ".join(a for a in args if a != "fit")
    raise ConfigError(
        f"{name} has no trainable parameters, so `lvi fit` has nothing to train: it runs a trained model "
        f"(a sampler over a trained prior) at prediction time; use `lvi predict {rest}`".rstrip()
    )


def _user_arg(arg: str) -> str:
    """``arg`` with a temporary resolved config replaced by the file the user gave."""
    key, eq, value = arg.partition("=")
    if eq and value in _CONFIG_SOURCES:
        return f"{key}={_CONFIG_SOURCES[value]}"
    return _CONFIG_SOURCES.get(arg, arg)


def _user_message(err: BaseException | str) -> str:
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
    if argv and argv[0] in LISTINGS:
        registry = PLUGINS if argv[0] == "plugins" else FAMILIES
        print(registry.listing())
        return
    commands = [*SUBCOMMANDS, *LISTINGS]
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        print(f"lvi: error: unknown command {argv[0]!r}; {_closest(argv[0], commands)}"
              f"commands: {', '.join(commands)} (lvi --help)", file=sys.stderr)
        raise SystemExit(2)
    try:
        cli = build_cli(argv)
    except (UnknownNameError, FileNotFoundError, ValueError, NonFiniteLossError, argparse.ArgumentError) as err:
        if os.environ.get("LVI_TRACEBACK"):
            raise
        print(f"lvi: error: {_user_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    _finish_wandb(cli)


if __name__ == "__main__":
    main()
