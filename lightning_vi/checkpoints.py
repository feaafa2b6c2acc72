"""Checkpoints a user can trust: ``last.ckpt`` is the latest state, smoke runs stay out of the real
output folder, and ``--ckpt_path`` is checked before anything runs.

* :class:`LastCheckpoint` writes ``<dirpath>/last.ckpt`` at the end of every training epoch and
  overwrites it. ``ModelCheckpoint(monitor=..., save_last=True)`` does not: Lightning (2.6) rewrites
  ``last`` only in an epoch where a top-k checkpoint was saved, so after the monitored value stops
  improving ``last.ckpt`` stays at the best epoch; and on a re-run in the same folder it writes
  ``last-v1.ckpt``, which the configs that read ``last.ckpt`` never see. The configs pair it with
  ``ModelCheckpoint(monitor=val/loss, filename=best, enable_version_counter=false)`` for ``best.ckpt``.
* :func:`smoke_settings` / :func:`redirect_to_smoke_folder`: a ``fit`` with ``fast_dev_run`` or with
  ``--trainer.limit_*_batches`` / ``max_steps`` / ``overfit_batches`` on the command line writes its
  checkpoints and logs under ``<default_root_dir>/smoke/`` instead.
* :func:`read_checkpoint` loads a file with ``torch.load(weights_only=True)`` only and says in words
  why a file is not a checkpoint (empty, truncated, not a PyTorch file, a bare ``state_dict``, unsafe
  pickled objects); :func:`check_fits_model` stops when the checkpoint was written by another family
  or by the same family with other network-shaping hyper-parameters.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = [
    "CheckpointError", "LastCheckpoint", "check_fits_model", "read_checkpoint", "redirect_to_smoke_folder",
    "smoke_settings", "SMOKE_FOLDER",
]

#: Sub-folder of ``trainer.default_root_dir`` that receives a smoke run's checkpoints and logs.
SMOKE_FOLDER = "smoke"
#: ``ckpt_path`` values that Lightning resolves itself (not file paths).
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
#: Trainer settings that make ``fit`` a smoke run when given on the command line.
_SMOKE_FLAGS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "max_steps", "overfit_batches")


class CheckpointError(ValueError):
    """A ``--ckpt_path`` that is not a usable checkpoint for the model the config builds."""


class LastCheckpoint(ModelCheckpoint):
    """Save the latest state to ``<dirpath>/last.ckpt`` after every training epoch (after validation).

    The file is overwritten, also by a new run in the same folder: it is the latest state by definition,
    so ``lvi fit --ckpt_path .../last.ckpt`` resumes at the epoch after the last completed one and
    ``lvi test --ckpt_path .../last.ckpt`` tests the model at the end of training. Built only from
    ``ModelCheckpoint``'s public arguments (no monitor, top-1, no version counter), so it behaves the
    same on every Lightning 2.x; like ``ModelCheckpoint`` it writes nothing under ``fast_dev_run``.

    Args:
        dirpath: folder of ``last.ckpt`` (default: Lightning's, ``<log_dir>/checkpoints``).
        every_n_epochs: save after every n-th epoch (>= 1).
        filename: file stem, ``last`` unless you have a reason.
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 1, filename: str = "last") -> None:
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"LastCheckpoint: every_n_epochs={every_n_epochs!r} must be an integer >= 1")
        super().__init__(dirpath=dirpath, filename=filename, monitor=None, save_top_k=1, save_last=False,
                         every_n_epochs=every_n_epochs, save_on_train_epoch_end=True,
                         enable_version_counter=False)


# -- smoke runs ---------------------------------------------------------------------------------

def smoke_settings(trainer_config: Any, argv: Iterable[str]) -> list[str]:
    """The settings that make this ``fit`` a smoke run, as ``name=value`` (empty: a real run).

    ``fast_dev_run`` counts wherever it is set; the limits (``limit_*_batches``, ``max_steps``,
    ``overfit_batches``) count when given on the command line, since a config file's values are the
    experiment's own.
    """
    get = trainer_config.get if hasattr(trainer_config, "get") else lambda k, d=None: getattr(trainer_config, k, d)
    found = []
    fdr = get("fast_dev_run", False)
    if fdr not in (False, 0, None, "false", "False"):
        found.append(f"fast_dev_run={fdr}")
    given = {a.split("=", 1)[0][len("--trainer."):] for a in argv if a.startswith("--trainer.")}
    for name in _SMOKE_FLAGS:
        value = get(name, None)
        if name not in given or value is None:
            continue
        if (name == "max_steps" and value == -1) or (name.startswith("limit_") and isinstance(value, float)
                                                      and value == 1.0) or (name == "overfit_batches" and value == 0):
            continue
        if isinstance(value, float) and value > 1 and value.is_integer():
            value = int(value)  # jsonargparse reads "2" as 2.0; Lightning counts it as 2 batches
        found.append(f"{name}={value}")
    return found


def redirect_to_smoke_folder(trainer_config: Any) -> str:
    """Move every output path of a trainer config under ``<default_root_dir>/smoke`` (in place).

    Paths inside ``default_root_dir`` keep their place below it (``outputs/x/checkpoints`` ->
    ``outputs/x/smoke/checkpoints``); other ``dirpath``/``save_dir``/``dir`` values of callbacks and
    loggers go to ``<smoke>/<their last folder name>``. Returns the smoke folder.
    """
    root = _get(trainer_config, "default_root_dir") or "."
    root = str(root).rstrip("/") or "/"
    smoke = f"{root}/{SMOKE_FOLDER}" if root != "." else SMOKE_FOLDER
    _set(trainer_config, "default_root_dir", smoke)

    def move(value: Any, key: str | None) -> Any:
        if isinstance(value, str):
            if value == smoke or value.startswith(smoke + "/"):
                return value
            if value == root or value.startswith(root + "/"):
                return smoke + value[len(root):]
            if key in ("dirpath", "save_dir", "dir", "log_dir"):
                name = Path(value).name
                return f"{smoke}/{name}" if name not in ("", ".", "..") else smoke
            return value
        if isinstance(value, list):
            return [move(v, key) for v in value]
        if isinstance(value, dict):
            return {k: move(v, k) for k, v in value.items()}
        if hasattr(value, "__dict__") and not isinstance(value, type):  # jsonargparse Namespace
            for k, v in list(vars(value).items()):
                setattr(value, k, move(v, k))
        return value

    for key in ("callbacks", "logger"):
        value = _get(trainer_config, key)
        if value is not None and not isinstance(value, bool):
            _set(trainer_config, key, move(value, None))
    return smoke


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if hasattr(obj, "get") else getattr(obj, key, None)


def _set(obj: Any, key: str, value: Any) -> None:
    if isinstance(obj, dict):
        obj[key] = value
    else:
        setattr(obj, key, value)


@rank_zero_only
def notice(message: str) -> None:
    """A one-line ``lvi:`` notice on stderr (rank zero only)."""
    print(f"lvi: {message}", file=sys.stderr, flush=True)


# -- reading and checking checkpoints -----------------------------------------------------------

def is_checkpoint_file_path(ckpt_path: Any) -> bool:
    """True for a ``ckpt_path`` that names a file (not Lightning's ``last``/``best``/``hpc``/``registry``)."""
    return isinstance(ckpt_path, (str, Path)) and str(ckpt_path) not in _SPECIAL_CKPT_PATHS and not str(
        ckpt_path).startswith(("registry", "http://", "https://", "s3://", "gs://"))


def _listing(folder: Path) -> str:
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    return f" ({folder}/ holds: {', '.join(found)})" if found else ""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``), or say in words why it is not one.

    Raises:
        FileNotFoundError: no such file (the folder's ``.ckpt`` files are listed).
        CheckpointError: empty, truncated or damaged file; not a PyTorch file; a PyTorch file that is no
            Lightning checkpoint; a file that holds pickled Python objects (never unpickled here).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist{_listing(p.parent)}")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file{_listing(p)}")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): not a checkpoint; the run that "
                              "wrote it was probably stopped while saving. Use another checkpoint or re-run fit.")
    with open(p, "rb") as f:
        head = f.read(8)
    zipped = head.startswith(b"PK\x03\x04")
    if zipped and not zipfile.is_zipfile(p):
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated ({size} bytes; the end of the file is "
                              "missing, e.g. the run was stopped while saving or a copy did not finish). "
                              "Use another checkpoint or re-run fit.")
    legacy = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # pickle PROTO 2-5
    if not zipped and not legacy:  # neither torch's zip format nor a legacy pickle
        kind = "text" if _looks_like_text(p) else "binary data"
        raise CheckpointError(f"checkpoint {str(path)!r} is not a checkpoint: it is not a PyTorch file "
                              f"({size} bytes of {kind}). Give a .ckpt file written by `lvi fit`.")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's own text advises weights_only=False: never pass that on
        text = str(err)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds a pickled Python object ({unsafe.group(1)}), so it was not "
                "written by `lvi fit` (whose checkpoints store plain data); lvi loads only tensors and plain "
                "data and will not run code from a file.") from None
        reason = "truncated or damaged" if zipped else "not a checkpoint (an unreadable or truncated pickle)"
        raise CheckpointError(f"checkpoint {str(path)!r} is {reason}: {type(err).__name__} while reading it "
                              "with torch.load(weights_only=True). Use another checkpoint or re-run fit.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            what = f"a bare state_dict ({len(ckpt)} tensors, e.g. {next(iter(ckpt))!r}) written by torch.save"
        elif isinstance(ckpt, dict):
            what = f"a dict with keys {sorted(map(str, ckpt))[:8]} written by torch.save"
        else:
            what = f"a {type(ckpt).__name__} written by torch.save"
        raise CheckpointError(f"checkpoint {str(path)!r} is not a Lightning checkpoint: it holds {what}, "
                              "without the 'state_dict' that `lvi fit` writes.")
    return ckpt


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        chunk = f.read(512)
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def family_of(class_path: str) -> tuple[str | None, str]:
    """(registered family name or None, class name) of a ``module.Class`` path, without importing it."""
    from lightning_vi.registry import FAMILIES

    short = class_path.rsplit(".", 1)[-1]
    by_path = {f"{cls.__module__}.{cls.__qualname__}": name for name, cls in FAMILIES.items()}
    by_name = {cls.__qualname__: name for name, cls in FAMILIES.items()}
    return by_path.get(class_path, by_name.get(short)), short


def _describe(class_path: str) -> str:
    name, short = family_of(class_path)
    return f"family {name!r} ({short})" if name else f"class {class_path!r}"


def check_family(ckpt: dict[str, Any], path: str | Path, class_path: str) -> None:
    """Stop when the family class recorded in ``ckpt`` (LightningCLI's ``hyper_parameters['_class_path']``, or
    ``lvi_class_path`` that every VIModule writes)
    is not ``class_path``, the class the config builds; both are named (registered name and class)."""
    hp = ckpt.get("hyper_parameters") or {}
    written_by = (hp.get("_class_path") if isinstance(hp, dict) else None) or ckpt.get("lvi_class_path")
    if not isinstance(written_by, str) or not isinstance(class_path, str):
        return
    if written_by != class_path and written_by.rsplit(".", 1)[-1] != class_path.rsplit(".", 1)[-1]:
        name, short = family_of(class_path)
        raise CheckpointError(
            f"checkpoint {str(path)!r} was written by {_describe(written_by)}, but the config builds "
            f"{_describe(class_path)}. Give a checkpoint of a {name or short} run, or the config that wrote "
            "this checkpoint (the config.yaml beside it).")


def hparam_differences(ckpt: dict[str, Any], model: torch.nn.Module) -> list[str]:
    """``name: checkpoint A, config B`` for every saved hyper-parameter the config sets otherwise."""
    from lightning_vi.core.module import to_plain

    hp = ckpt.get("hyper_parameters") or {}
    if not isinstance(hp, dict) or not hasattr(model, "hparams"):
        return []
    mine = to_plain(dict(model.hparams))
    return [f"{k}: checkpoint {hp[k]!r}, config {mine[k]!r}" for k in sorted(hp.keys() & mine.keys())
            if not str(k).startswith("_") and hp[k] != mine[k]]


def check_fits_model(ckpt: dict[str, Any], path: str | Path, model: torch.nn.Module) -> list[str]:
    """Stop when ``ckpt`` (from :func:`read_checkpoint`) cannot be the state of ``model``.

    Two checks, each naming both sides: the family (:func:`check_family`); then the parameter names and
    shapes, reported with the hyper-parameters that differ (those that shape the network show up here).
    Returns the hyper-parameter differences that leave the network's shape alone (the config's values
    are used for them).
    """
    config_cls = type(model)
    config_path = f"{config_cls.__module__}.{config_cls.__qualname__}"
    check_family(ckpt, path, config_path)
    theirs = ckpt.get("state_dict") or {}
    ours = model.state_dict()
    shapes = []
    for key in sorted(ours.keys() & theirs.keys()):
        a, b = ours[key], theirs[key]
        if isinstance(a, torch.nn.parameter.UninitializedParameter) or not hasattr(b, "shape"):
            continue
        if tuple(a.shape) != tuple(b.shape):
            shapes.append(f"{key}: checkpoint {list(b.shape)}, config {list(a.shape)}")
    strict = getattr(model, "strict_loading", True)
    missing = sorted(ours.keys() - theirs.keys()) if strict else []
    unexpected = sorted(theirs.keys() - ours.keys()) if strict else []
    diff = hparam_differences(ckpt, model)
    if not (shapes or missing or unexpected):
        return diff
    parts = []
    if diff:
        parts.append("its hyper-parameters differ (" + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "") + ")")
    if shapes:
        parts.append(f"{len(shapes)} weights have other shapes (e.g. {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} weights of the model are not in it (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"it has {len(unexpected)} weights the model lacks (e.g. {unexpected[0]!r})")
    raise CheckpointError(
        f"checkpoint {str(path)!r} does not fit the {_describe(config_path)} that the config builds: "
        + "; ".join(parts) + ". Use the config that wrote it (the config.yaml beside it) or override those values.")
