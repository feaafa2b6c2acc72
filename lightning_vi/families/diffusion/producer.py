"""Frozen producer models (a trained VAE, a DDPM prior) inside the consumer that uses them.

A consumer (``latent_diffusion``, ``lmd``, ``diffusevae``, ``red_diff``) is given the producer's
checkpoint by path only at its first build. :func:`read_producer` checks which family wrote the file
and its shapes, with an error that names the command making the right one; it returns the model and a
*spec* (family, class path, the producer's hyper-parameters) that the consumer stores in its own
hyper-parameters. The producer is then a frozen submodule: its weights are in the consumer's
``state_dict``, it stays in eval mode and out of the optimizer, and ``load_from_checkpoint`` /
``lvi test --ckpt_path`` rebuild it from the spec (:func:`build_producer`) without the producer's file.
"""

from __future__ import annotations

import contextvars
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_vi.core.module import import_object
from lightning_vi.registry import FAMILIES

_META = ("_class_path", "_instantiator")


def _init_arg_names(cls: type) -> set[str]:
    """Constructor arguments that ``save_hyperparameters`` records for ``cls`` (through ``**kwargs`` chains)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(inspect.unwrap(init)).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def checkpoint_family(hparams: dict[str, Any], class_path: str | None = None) -> str | None:
    """Registered family that wrote a checkpoint with these ``hyper_parameters`` (None: not known).

    The class path comes from the checkpoint (``lvi_class_path``, written by every VIModule) or from
    LightningCLI's ``_class_path``; for older checkpoints written from Python, the family is the one
    whose constructor accepts every stored hyper-parameter with the fewest arguments left over (a
    subclass such as cevae accepts a vae's arguments too, plus its own)."""
    class_path = hparams.get("_class_path") or class_path
    if class_path:
        try:
            return FAMILIES.name_of(import_object(class_path))
        except (ImportError, AttributeError, ValueError):
            return None
    keys = set(hparams) - set(_META)
    if not keys:
        return None
    fits = sorted((len(names - keys), name) for name, cls in FAMILIES.items()
                  if keys <= (names := _init_arg_names(cls)))
    if not fits or (len(fits) > 1 and fits[0][0] == fits[1][0]):
        return None
    return fits[0][1]


def _build(cls: type, init_args: dict[str, Any]) -> nn.Module:
    # A fresh context: LightningCLI's "given hyper-parameters" of the consumer being built must not
    # leak into the producer's save_hyperparameters; then its own hyper-parameters are set explicitly.
    model = contextvars.Context().run(cls, **init_args)
    model._set_hparams(dict(init_args))
    return model


def freeze(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def read_producer(path: str, *, arg: str, consumer: str, families: tuple[str, ...], make: str,
                  shapes: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a producer checkpoint (first build of a consumer): ``(frozen model, spec)``.

    Args:
        arg: the consumer's argument name (``vae_checkpoint``); consumer: its family name.
        families: registered families that may have written it. make: the command that makes one.
        shapes: attributes the producer must have, ``{"input_shape": [1, 8, 8], "latent_dim": 8}``.
    """
    need = " or ".join(repr(f) for f in families)
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"{arg}={path!r} does not exist; {consumer} needs a {need} checkpoint; make one with: {make} "
            f"(or pass another path as model.init_args.{arg}). A {consumer} checkpoint written before the "
            f"{need} was kept inside it also needs this file: load_from_checkpoint(ckpt, {arg}=PATH).")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a Lightning checkpoint"
        raise ValueError(f"{arg}={path!r} is not a Lightning checkpoint ({type(err).__name__}: {err}); "
                         f"{consumer} needs a {need} checkpoint; make one with: {make}") from None
    hp = dict(ckpt.get("hyper_parameters") or {})
    family = checkpoint_family(hp, ckpt.get("lvi_class_path"))
    if family not in families:
        who = f"{family!r}" if family else "an unrecognised family"
        raise ValueError(f"{arg}={path!r} was written by {who}; {consumer} needs a {need} checkpoint; "
                         f"make one with: {make}")
    cls = FAMILIES.get(family)
    init_args = {k: v for k, v in hp.items() if k not in _META}
    spec = {"family": family, "class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
    model = _build(cls, init_args)
    if hasattr(model, "on_load_checkpoint"):  # the family's own renames of older state-dict keys
        model.on_load_checkpoint(ckpt)
    model.load_state_dict(ckpt["state_dict"])
    for name, want in (shapes or {}).items():
        have = getattr(model, name)
        have = list(have) if isinstance(have, (tuple, list)) else have
        want = list(want) if isinstance(want, (tuple, list)) else want
        if have != want:
            raise ValueError(f"{name}={want!r} does not match {arg}={path!r}, whose {family} has {name} {have!r}; "
                             f"set {name} to {have!r}, or make a matching checkpoint with: {make}")
    return freeze(model), spec


def build_producer(spec: dict[str, Any]) -> nn.Module:
    """The producer's architecture from a stored spec (weights come from the consumer's own state_dict)."""
    try:
        cls = import_object(spec["class_path"])
        init_args = dict(spec["init_args"])
    except (KeyError, TypeError, ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"the stored producer spec {spec!r} cannot be rebuilt ({type(err).__name__}: {err}); "
                         "it must be {'family', 'class_path', 'init_args'} as written at the first build") from None
    return freeze(_build(cls, init_args))


def vae_make_command(input_shape: tuple[int, ...] | list[int], latent_dim: int | None) -> str:
    """``lvi fit`` command writing a VAE of this image shape and latent size (configs/vae/vae_iwae.yaml: [1, 8, 8], 8)."""
    cmd = "lvi fit --config configs/vae/vae_iwae.yaml"
    shape = [int(s) for s in input_shape]
    if shape != [1, 8, 8]:
        cmd += f" --model.init_args.input_shape '{shape}' --data.init_args.image_size {shape[-1]}"
    if latent_dim is not None and int(latent_dim) != 8:
        cmd += f" --model.init_args.latent_dim {int(latent_dim)}"
    return cmd


class FrozenProducers:
    """Mixin: the submodules named in ``producers`` stay in eval mode when the consumer trains, and
    consumer checkpoints of the old format (producer outside the ``state_dict``) get its weights from
    the file that was read."""

    producers: tuple[str, ...] = ()
    #: Hyper-parameters that ``lvi ... --ckpt_path`` takes from the checkpoint, not the config: the producer
    #: spec written at the first build, so the consumer rebuilds without the producer's file.
    hparams_from_checkpoint: tuple[str, ...] = ("vae_config", "prior_config")

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.producers:
            sub = getattr(self, name, None)
            if isinstance(sub, nn.Module):
                sub.eval()
        return self

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict", {})
        for name in self.producers:
            sub = getattr(self, name, None)
            if isinstance(sub, nn.Module) and not any(k.startswith(name + ".") for k in sd):
                sd.update({f"{name}.{k}": v for k, v in sub.state_dict().items()})
        super().on_load_checkpoint(checkpoint)
