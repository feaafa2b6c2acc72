"""Entropy models of the quantised latents: a factorized univariate baseline and the vectorized
multivariate Gaussian mixture (MV-GMM) prior of P44 (Zhu et al. 2022, "Unified Multivariate Gaussian
Mixture for Efficient Neural Image Compression").

Both priors see the latent of one image as ``[M, d]``: ``M`` groups (the paper's multiple codebooks) of
``d``-dimensional vectors. The factorized prior is the case ``d = 1`` (every latent scalar alone, with its
own univariate mixture); the MV-GMM prior models each group's vector jointly.

Probability of a quantised vector (unit bins centred on the integers). For mixture component ``k`` of
group ``m`` with mean ``mu_k`` (codeword ``k`` of codebook ``m``) and Cholesky factor ``L_k``
(``Sigma_k = L_k L_k^T``), the Gaussian chain rule gives ``y_i | y_<i ~ N(c_{k,i}, L_{k,ii}^2)`` with
``c_{k,i} = mu_{k,i} + sum_{j<i} L_{k,ij} eps_j`` and ``eps = L_k^{-1}(y - mu_k)``. Each conditional is
integrated over its unit bin::

    P_k(y) = prod_i [Phi((y_i + 1/2 - c_{k,i}) / L_{k,ii}) - Phi((y_i - 1/2 - c_{k,i}) / L_{k,ii})]
    P(y)   = sum_k pi_k P_k(y)

For a diagonal covariance (``covariance="diag"``) ``c_{k,i} = mu_{k,i}`` and ``P_k`` is exactly the
Gaussian's mass on the unit hypercube around ``y``. For a full covariance the hypercube integral has no
closed form; the chain-rule discretisation above (the paper's cascaded, dimension-by-dimension
estimation) is used instead. It is an exact probability mass function on the integer lattice (it sums to
one), and it is the one the entropy coder uses, so the estimated and the coded rate agree.

The sequential conditionals of the *mixture* that the coder needs are
``P(y_i | y_<i) = sum_k w_k(y_<i) P_k(y_i | y_<i)`` with posterior weights
``w_k(y_<i) ∝ pi_k prod_{j<i} P_k(y_j | y_<j)`` (the probabilistic vector quantisation of the prefix);
their product over ``i`` is ``P(y)`` (chain rule).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_vi.core.checks import check_choice, check_range

#: probabilities of a unit bin are clamped from below (Ballé et al. 2018's likelihood bound)
MIN_PROB = 1e-12


def normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2.0))


def bin_log_prob(y: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """``log(Phi((y + 1/2 - mean) / scale) - Phi((y - 1/2 - mean) / scale))``, stable in both tails
    (the difference is taken on the side of the mean where the CDFs are small)."""
    centred = y - mean
    sign = -torch.sign(centred)  # upper tail: use 1 - Phi(x) = Phi(-x)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    upper = normal_cdf(sign * (centred + 0.5) / scale)
    lower = normal_cdf(sign * (centred - 0.5) / scale)
    return torch.log((upper - lower).abs().clamp_min(MIN_PROB))


class VectorPrior(nn.Module):
    """Mixture of Gaussians over ``[M, d]`` latent groups, discretised on unit bins (module docstring).

    Args:
        num_groups: ``M``, groups (codebooks) per image.
        group_dim: ``d``, dimension of a latent vector.
        num_components: ``K``, codewords (mixture components) per codebook.
        covariance: ``"diag"`` (exact hypercube mass) or ``"full"`` (learned Cholesky factor, chain-rule
            discretisation).
        init_scale: spread of the initial codewords and initial component std.
    """

    def __init__(self, num_groups: int, group_dim: int, num_components: int, covariance: str = "full",
                 init_scale: float = 2.0) -> None:
        super().__init__()
        check_range("num_groups", num_groups, 1)
        check_range("group_dim", group_dim, 1)
        check_range("num_components", num_components, 1)
        check_choice("covariance", covariance, ("diag", "full"))
        check_range("init_scale", init_scale, 0.0, low_open=True)
        self.num_groups, self.group_dim, self.num_components = int(num_groups), int(group_dim), int(num_components)
        self.covariance = covariance
        m, d, k = self.num_groups, self.group_dim, self.num_components
        self.logits = nn.Parameter(torch.zeros(m, k))
        self.codebooks = nn.Parameter(init_scale * torch.randn(m, k, d))  # component means = codewords
        self.raw_diag = nn.Parameter(torch.full((m, k, d), math.log(math.expm1(init_scale))))
        if covariance == "full":
            self.raw_lower = nn.Parameter(torch.zeros(m, k, d, d))
        self.register_buffer("strict_lower", torch.ones(d, d).tril(-1), persistent=False)

    @property
    def group_shape(self) -> tuple[int, int]:
        return self.num_groups, self.group_dim

    def cholesky(self) -> Tensor:
        """Lower-triangular ``L`` ``[M, K, d, d]`` with positive diagonal (softplus + 0.05)."""
        diag = F.softplus(self.raw_diag) + 0.05
        chol = torch.diag_embed(diag)
        if self.covariance == "full":
            chol = chol + self.raw_lower * self.strict_lower
        return chol

    def _conditionals(self, y: Tensor, chol: Tensor, means: Tensor) -> tuple[Tensor, Tensor]:
        """Conditional means ``c`` and stds of every dimension given the previous ones, per component:
        ``y [B, M, n]`` -> two ``[B, M, K, n]`` tensors (``n <= d``: a prefix)."""
        n = y.shape[-1]
        chol, means = chol[..., :n, :n], means[..., :n]
        diag = torch.diagonal(chol, dim1=-2, dim2=-1)  # [M, K, n]
        if self.covariance == "diag" or n == 0:
            return means.expand(y.shape[0], *means.shape), diag.expand(y.shape[0], *diag.shape)
        resid = (y.unsqueeze(2) - means).unsqueeze(-1)  # [B, M, K, n, 1]
        eps = torch.linalg.solve_triangular(chol.expand(y.shape[0], *chol.shape), resid, upper=False)
        off = chol * self.strict_lower[:n, :n]
        cond = means + (off @ eps).squeeze(-1)
        return cond, diag.expand(y.shape[0], *diag.shape)

    def component_log_probs(self, y: Tensor) -> Tensor:
        """``log P_k(y)`` ``[B, M, K]`` of vectors ``y [B, M, n]`` (``n <= d``, a prefix of the dimensions)."""
        chol = self.cholesky().to(y.dtype)
        cond, scale = self._conditionals(y, chol, self.codebooks.to(y.dtype))
        return bin_log_prob(y.unsqueeze(2), cond, scale).sum(-1)

    def log_prob(self, y: Tensor) -> Tensor:
        """Natural-log probability mass of the unit bins around ``y [B, M, d]``, per group: ``[B, M]``."""
        log_w = F.log_softmax(self.logits.to(y.dtype), -1)
        return torch.logsumexp(log_w + self.component_log_probs(y), -1)

    def conditional_pmf(self, prefix: Tensor, support: Tensor) -> Tensor:
        """``P(y_i = s | y_<i = prefix)`` for ``s`` in ``support [S]``, ``i = prefix.shape[-1]``: ``[B, M, S]``."""
        i = prefix.shape[-1]
        chol = self.cholesky().to(support.dtype)
        means = self.codebooks.to(support.dtype)
        log_w = F.log_softmax(self.logits.to(support.dtype), -1)
        if i > 0:
            log_w = log_w + self.component_log_probs(prefix)
        w = torch.softmax(log_w, -1)  # [B, M, K]: posterior over codewords given the prefix
        if self.covariance == "full" and i > 0:
            resid = (prefix.unsqueeze(2) - means[..., :i]).unsqueeze(-1)
            eps = torch.linalg.solve_triangular(chol[..., :i, :i].expand(prefix.shape[0], *chol.shape[:-2], i, i),
                                                resid, upper=False).squeeze(-1)
            cond = means[..., i] + (chol[..., i, :i] * eps).sum(-1)  # [B, M, K]
        else:
            cond = means[..., i].expand(prefix.shape[0], *means.shape[:-1])
        scale = chol[..., i, i]  # [M, K]
        p = bin_log_prob(support.view(1, 1, 1, -1), cond.unsqueeze(-1), scale.unsqueeze(-1)).exp()
        return (w.unsqueeze(-1) * p).sum(2)


class MVGMPrior(VectorPrior):
    """The paper's vectorized prior: a multivariate Gaussian mixture per group of ``d`` latent channels,
    means from (probabilistic) vector quantisation over ``M`` codebooks, learned covariances."""


class FactorizedPrior(VectorPrior):
    """Factorized univariate baseline: every latent scalar has its own ``K``-component Gaussian mixture,
    integrated over its unit bin (a per-channel learned density in the spirit of Ballé et al. 2018)."""

    def __init__(self, num_channels: int, num_components: int = 4, init_scale: float = 2.0) -> None:
        super().__init__(num_channels, 1, num_components, covariance="diag", init_scale=init_scale)
