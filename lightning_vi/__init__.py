"""lightning-vi: variational and generative models on PyTorch Lightning, driven from one YAML file."""

from lightning_vi.core.module import NonFiniteLossError, VIModule
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import FAMILIES, PLUGINS, Registry, UnknownNameError
from lightning_vi import strategies  # noqa: F401,E402  (registers ddp_topk / ddp_randk with Lightning)

__version__ = "0.1.0"
__all__ = ["VIModule", "Plugin", "NonFiniteLossError", "FAMILIES", "PLUGINS", "Registry", "UnknownNameError"]
