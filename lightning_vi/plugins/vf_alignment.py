"""Vision-foundation alignment loss of VA-VAE (Yao, Yang & Wang 2025, "Reconstruction vs. Generation:
Taming Optimization Dilemma with Vision Foundation Model Aligned VAEs", Sec. 3.2, Eq. 2-4).

Latents ``z`` [B, D] (the output ``latent`` of the objective, default ``mu``) are mapped by a learned
linear projection ``W`` to ``z' = W z`` [B, F] and aligned with features ``f = E(x)`` [B, F] of a frozen
extractor ``E``:

    L_mcos = 1/B sum_i ReLU(1 - m1 - cos(z'_i, f_i))                              (Eq. 2)
    L_mdms = 1/B^2 sum_{i,j} ReLU(|cos(z'_i, z'_j) - cos(f_i, f_j)| - m2)            (Eq. 3)
    L_vf   = weight * (L_mcos + L_mdms)

(the paper's adaptive weighting by gradient-norm ratio is replaced by the fixed ``weight``). Spatial
latents [B, C, h, w] and feature maps are pooled to vectors first. The loss is 0 when ``z' = f``.

Frozen extractor ``extractor`` (everything works offline):
* ``"random_conv"``: a fixed random conv net (seeded by ``seed``; random features keep structure,
  Saxe et al. 2011); rebuilt identically on reload;
* ``"checkpoint:<path>"``: a trained lightning-vi classifier checkpoint; its ``backbone`` features;
* ``"<package.module.factory>"``: a dotted path to a callable returning an ``nn.Module``.

Defaults: ``weight=0.1``, ``m1=0.5``, ``m2=0.25`` (paper), ``feature_dim=32``, ``latent="mu"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_range
from lightning_vi.core.protocols import HasLatentDim, require_capability
from lightning_vi.plugins._util import require
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


def vf_loss(zp: Tensor, f: Tensor, m1: float = 0.5, m2: float = 0.25) -> tuple[Tensor, Tensor]:
    """``(L_mcos, L_mdms)`` for projected latents ``zp`` and features ``f`` (both [B, F])."""
    mcos = F.relu(1.0 - m1 - F.cosine_similarity(zp, f, dim=-1)).mean()
    zn, fn = F.normalize(zp, dim=-1), F.normalize(f, dim=-1)
    mdms = F.relu((zn @ zn.T - fn @ fn.T).abs() - m2).mean()
    return mcos, mdms


def random_conv_extractor(in_channels: int, feature_dim: int, seed: int = 0) -> nn.Module:
    """A fixed random conv net ``[B, C, H, W] -> [B, feature_dim]`` (the same for the same seed)."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, feature_dim))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(max(p[0].numel(), 1)) if p.ndim > 1 else 0.1))
    return net


def _pool(t: Tensor) -> Tensor:
    return t.flatten(2).mean(-1) if t.ndim > 2 else t


@PLUGINS.register("vf_alignment")
class VFAlignment(Plugin):
    """VA-VAE alignment of latents with a frozen feature extractor (marginal cosine + distance-matrix loss).

    Args:
        extractor: ``"random_conv"``, ``"checkpoint:<path>"`` or a dotted factory path.
        feature_dim: feature width of the random extractor, >= 1.
        latent: objective output holding the latents (``mu`` or ``z``).
        weight: loss weight, >= 0. m1, m2: margins in [0, 1] and [0, 2].
        seed: seed of the random extractor.
    """

    order = 25

    def __init__(self, extractor: str = "random_conv", feature_dim: int = 32, latent: str = "mu",
                 weight: float = 0.1, m1: float = 0.5, m2: float = 0.25, seed: int = 0) -> None:
        check_range("feature_dim", feature_dim, 1)
        check_range("weight", weight, 0.0)
        check_range("m1", m1, 0.0, 1.0)
        check_range("m2", m2, 0.0, 2.0)
        if not (extractor == "random_conv" or extractor.startswith("checkpoint:") or "." in extractor):
            raise ValueError(f"extractor={extractor!r} is not allowed; give 'random_conv', 'checkpoint:<path>' "
                             "or a dotted path to a factory returning an nn.Module")
        self.extractor_spec, self.feature_dim, self.latent = extractor, int(feature_dim), latent
        self.weight, self.m1, self.m2, self.seed = float(weight), float(m1), float(m2), int(seed)
        self.extractor: nn.Module | None = None

    def build_extractor(self, module: Any) -> nn.Module:
        spec = self.extractor_spec
        if spec == "random_conv":
            shape = getattr(module, "input_shape", None)
            require(shape is not None and len(shape) == 3, self.name, module,
                    "extractor='random_conv' needs image inputs (input_shape [C, H, W])")
            return random_conv_extractor(shape[0], self.feature_dim, self.seed)
        if spec.startswith("checkpoint:"):
            from lightning_vi.families.classifier import Classifier

            clf = Classifier.load_from_checkpoint(spec.split(":", 1)[1], map_location="cpu")
            return clf.backbone
        from lightning_vi.core.module import import_object

        return import_object(spec)()

    @torch.no_grad()
    def _infer_dim(self, module: Any, net: nn.Module) -> int:
        shape = getattr(module, "input_shape", None)
        if shape is None:
            return self.feature_dim
        return int(_pool(net(torch.zeros(2, *shape))).shape[-1])

    def attach(self, module: Any) -> None:
        require_capability(module, HasLatentDim, f"plugin {self.name!r} (it aligns the objective output "
                           f"{self.latent!r} to features; e.g. the 'vae' family)")
        latent_dim = module.latent_dim
        net = self.build_extractor(module).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.extractor = net
        module.vf_projection = nn.Linear(latent_dim, self._infer_dim(module, net))

    def extra_terms(self, outputs: dict[str, Tensor], batch: Any, module: Any) -> dict[str, Tensor]:
        z = outputs.get(self.latent)
        if z is None:
            raise KeyError(f"vf_alignment latent={self.latent!r} is not an output of {type(module).__name__}.objective "
                           f"(outputs: {sorted(outputs)})")
        assert self.extractor is not None
        x = batch["x"]
        self.extractor.to(x.device)
        with torch.no_grad():
            f = _pool(self.extractor(x)).float()
        zp = module.vf_projection(_pool(z))
        mcos, mdms = vf_loss(zp.float(), f, self.m1, self.m2)
        return {"vf_mcos": self.weight * mcos, "vf_mdms": self.weight * mdms}
