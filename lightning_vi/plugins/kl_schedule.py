"""KL schedules for any family with a ``kl`` term: warm-up (Bowman et al. 2016, Sec. 3.1), cyclical
annealing (Fu et al. 2019, "Cyclical Annealing Schedule", Eq. 6) and free bits (Kingma et al. 2016,
"Improved Variational Inference with Inverse Autoregressive Flow", App. C.8).

The plugin sets ``module.term_weights["kl"] = beta * w(step)`` before every training batch, with
``beta`` the family's own KL weight at attach time and

* ``linear``:    w(t) = min(1, t / warmup_steps);
* ``cyclical``:  tau = (t mod T) / T with T = cycle_steps; w(t) = min(1, tau / ratio);
* ``constant``:  w(t) = 1 (free bits only).

Free bits (``free_bits = lambda > 0``, nats per latent dimension): the family's ``kl`` term is replaced
by the extra term ``kl_free_bits = beta w(t) sum_d max(lambda, KL_d)``, with ``KL_d`` the batch-mean KL of
dimension d; the family must return it as the output ``kl_per_dim`` [D] (the ``vae`` family does). The
plain ``kl`` stays logged. Validation/test use the weight of the last training step.

Defaults: ``schedule="linear"``, ``warmup_steps=1000``, ``cycle_steps=1000``, ``ratio=0.5``, ``free_bits=0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range
from lightning_vi.core.protocols import HasTermWeights, require_capability
from lightning_vi.plugins._util import require
from lightning_vi.plugins.base import Plugin
from lightning_vi.registry import PLUGINS


@PLUGINS.register("kl_schedule")
class KLSchedule(Plugin):
    """KL warm-up (linear, cyclical) and free bits for any family with a ``kl`` term.

    Args:
        schedule: ``"linear"``, ``"cyclical"`` or ``"constant"``.
        warmup_steps: steps of the linear warm-up, >= 1.
        cycle_steps: length T of one cycle (cyclical), >= 1.
        ratio: fraction of a cycle spent increasing, in (0, 1].
        free_bits: nats per latent dimension lambda, >= 0 (0 = off).
    """

    order = 20

    def __init__(self, schedule: str = "linear", warmup_steps: int = 1000, cycle_steps: int = 1000,
                 ratio: float = 0.5, free_bits: float = 0.0) -> None:
        check_choice("schedule", schedule, ("linear", "cyclical", "constant"))
        check_range("warmup_steps", warmup_steps, 1)
        check_range("cycle_steps", cycle_steps, 1)
        check_range("ratio", ratio, 0.0, 1.0, low_open=True)
        check_range("free_bits", free_bits, 0.0)
        self.schedule, self.warmup_steps, self.cycle_steps = schedule, int(warmup_steps), int(cycle_steps)
        self.ratio, self.free_bits = float(ratio), float(free_bits)
        self.beta = 1.0
        self.weight = 1.0

    def attach(self, module: Any) -> None:
        require_capability(module, HasTermWeights, f"plugin {self.name!r}")
        tw = module.term_weights
        require("kl" in tw, self.name, module,
                f"it schedules the weight of a 'kl' term and the family's term_weights are {tw}")
        self.beta = float(tw["kl"])
        self.set_step(module, 0)

    def factor(self, step: int) -> float:
        """w(step) in [0, 1]."""
        if self.schedule == "linear":
            return min(1.0, step / self.warmup_steps)
        if self.schedule == "cyclical":
            tau = (step % self.cycle_steps) / self.cycle_steps
            return min(1.0, tau / self.ratio)
        return 1.0

    def set_step(self, module: Any, step: int) -> None:
        self.weight = self.beta * self.factor(step)
        module.term_weights["kl"] = 0.0 if self.free_bits > 0 else self.weight

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.set_step(pl_module, trainer.global_step)
        pl_module.log("train/kl_weight", self.weight, on_step=True, on_epoch=False)

    def extra_terms(self, outputs: dict[str, Tensor], batch: Any, module: Any) -> dict[str, Tensor]:
        if self.free_bits <= 0:
            return {}
        kl_d = outputs.get("kl_per_dim")
        if kl_d is None:
            raise KeyError(f"kl_schedule free_bits={self.free_bits} needs the per-dimension KL: "
                           f"{type(module).__name__}.objective must return an output 'kl_per_dim' [D] "
                           f"(outputs: {sorted(outputs)})")
        kl_d = kl_d.reshape(-1, kl_d.shape[-1]).mean(0) if kl_d.ndim > 1 else kl_d
        return {"kl_free_bits": self.weight * torch.clamp(kl_d, min=self.free_bits).sum()}
