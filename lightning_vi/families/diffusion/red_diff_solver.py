"""RED-Diff (Mardani et al. 2024, "A Variational Perspective on Solving Inverse Problems with
Diffusion Models"): restore ``x`` from ``y = A(x) + noise`` by fitting a point-mass variational
distribution ``q(x0 | y) = delta(mu)`` with Adam over ``mu``, descending in diffusion time t.

Per step (Algorithm 1): draw ``eps``, ``x_t = sqrt(abar_t) mu + sqrt(1 - abar_t) eps`` and minimise::

    loss(mu) = mean ||y - A(mu)||^2 / 2  +  lam * mean(w_t * sg[eps_hat(x_t, t) - eps] * mu)     (Eq. 11)

The stop-gradient makes the regularizer's gradient exactly ``lam * w_t * (eps_hat - eps)``: no
denoiser Jacobian (the score-distillation form of the diffusion prior). The weight is the inverse
square-root SNR ``w_t = sqrt((1 - abar_t) / abar_t) = sigma_t / alpha_t`` (Sec. 4.3, "SNR weighting").

Operators (on data-space images ``[B, C, H, W]``): ``inpainting`` (a fixed binary mask),
``super_resolution`` (``factor``-fold average pooling) and ``denoising`` (identity; the noise level is
``sigma_y``). Python use::

    solver = REDDiff(ddpm_model, make_operator("super_resolution", factor=2), steps=200)
    x_restored = solver.restore(y)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_vi.core.checks import check_choice, check_range

OPERATORS = ("inpainting", "super_resolution", "denoising")


class Operator:
    """A forward operator ``A`` with a simple back-projection used to initialise ``mu``."""

    def __init__(self, name: str, forward: Callable[[Tensor], Tensor], init: Callable[[Tensor], Tensor]) -> None:
        self.name, self._forward, self._init = name, forward, init

    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(x)

    def initial(self, y: Tensor) -> Tensor:
        return self._init(y)


def make_operator(name: str, factor: int = 2, mask: Tensor | None = None) -> Operator:
    """``inpainting`` (``mask``: 1 = observed, broadcast over the batch), ``super_resolution``
    (``factor``), or ``denoising``."""
    check_choice("operator", name, OPERATORS)
    if name == "denoising":
        return Operator(name, lambda x: x, lambda y: y)
    if name == "super_resolution":
        check_range("factor", factor, 1)
        return Operator(name, lambda x: F.avg_pool2d(x, factor),
                        lambda y: F.interpolate(y, scale_factor=factor, mode="nearest"))
    if mask is None:
        raise ValueError("operator='inpainting' needs mask (a 0/1 tensor shaped like one image)")
    m = mask.float()
    fill = 0.5
    return Operator(name, lambda x: x * m.to(x), lambda y: y * m.to(y) + fill * (1 - m.to(y)))


class REDDiff:
    """The solver. ``model`` is a trained :class:`DDPM` (any prediction type); ``model_fn`` and
    ``schedule`` come from it. Images are in data space; ``mu`` lives in the model's space.

    Args:
        operator: from :func:`make_operator`. sigma_y: measurement noise std (data space), recorded
            for reference; the data term is the paper's unnormalized one (weight 1).
        lam: regularization weight. steps: Adam steps (t descends linearly from ``t_max`` to ``t_min``).
        lr: Adam learning rate on ``mu``. weighting: ``sqrt_inv_snr`` (paper) or ``constant``.
    """

    def __init__(self, model, operator: Operator, sigma_y: float = 0.05, lam: float = 0.25, steps: int = 200,
                 lr: float = 0.2, t_max: int | None = None, t_min: int = 0, weighting: str = "sqrt_inv_snr") -> None:
        check_range("sigma_y", sigma_y, 0.0, low_open=True)
        check_range("lam", lam, 0.0)
        check_range("steps", steps, 1)
        check_range("lr", lr, 0.0, low_open=True)
        check_choice("weighting", weighting, ("sqrt_inv_snr", "constant"))
        self.model, self.op, self.sigma_y, self.lam, self.steps, self.lr = model, operator, sigma_y, lam, steps, lr
        T = model.schedule.num_train_timesteps
        self.t_max = T - 1 if t_max is None else t_max
        check_range("t_max", self.t_max, 0, T - 1)
        check_range("t_min", t_min, 0, self.t_max)
        self.t_min, self.weighting = t_min, weighting

    def weight(self, t: int) -> Tensor:
        """``w_t = sqrt((1 - abar_t) / abar_t)`` (or 1)."""
        a = self.model.schedule.alphas_cumprod[t]
        return (1 - a).sqrt() / a.sqrt() if self.weighting == "sqrt_inv_snr" else torch.ones(())

    def regularizer(self, mu: Tensor, t: int, noise: Tensor) -> Tensor:
        """``lam * w_t * <sg[eps_hat - eps], mu>``, summed over the batch."""
        s = self.model.schedule
        x_t = s.add_noise(mu, noise, t)
        fn = self.model.model_fn(None, 1.0)
        with torch.no_grad():
            _, eps_hat = s.split(fn(x_t, torch.full((mu.shape[0],), t, device=mu.device)), x_t, t)
        return self.lam * self.weight(t).to(mu) * ((eps_hat - noise).detach() * mu).sum()

    def data_term(self, mu: Tensor, y: Tensor) -> Tensor:
        return ((y - self.op(self.model.from_model_space(mu))) ** 2).sum() / 2

    def restore(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Restored data-space images from measurements ``y``."""
        model = self.model.eval()
        mu = model.to_model_space(self.op.initial(y)).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([mu], lr=self.lr)
        ts = torch.linspace(self.t_max, self.t_min, self.steps).round().long().tolist()
        for t in ts:
            noise = torch.randn(mu.shape, generator=generator).to(mu)
            loss = self.data_term(mu, y) / y.numel() + self.regularizer(mu, t, noise) / mu.numel()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.from_model_space(mu.detach())
