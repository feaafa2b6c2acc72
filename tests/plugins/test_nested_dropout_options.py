"""nested_dropout options: Chen et al.'s half-Gaussian index distribution, per-batch indices, layer lists, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_vi.plugins.nested_dropout import NestedDropout, sample_truncation


@pytest.mark.parametrize("d,sigma", [(30, 6.0), (64, 10.0), (8, 100.0)])
def test_half_gaussian_pmf_matches_exp_minus_k_over_sigma_squared(d, sigma) -> None:
    """Empirical p(k) on 200k draws against p(k) = exp(-(k/sigma)^2) / sum_j exp(-(j/sigma)^2), k = 1..D."""
    torch.manual_seed(0)
    n = 200_000
    b = sample_truncation(n, d, "half_gaussian", 0.1, sigma)
    assert int(b.min()) >= 1 and int(b.max()) <= d
    emp = torch.bincount(b, minlength=d + 1)[1:].double() / n
    w = [math.exp(-((k / sigma) ** 2)) for k in range(1, d + 1)]
    expected = torch.tensor([x / sum(w) for x in w], dtype=torch.float64)
    assert (emp - expected).abs().max() < 4 * math.sqrt(0.25 / n), (emp[:5], expected[:5])


class Feat(nn.Module):
    """A module whose 'backbone' outputs all ones, so the kept width of each row is its truncation index."""

    def __init__(self, d: int = 20) -> None:
        super().__init__()
        self.backbone = nn.Identity()
        self.other = nn.Identity()
        self.d = d


def kept(out: torch.Tensor) -> torch.Tensor:
    return (out != 0).sum(1)


def test_per_example_and_per_batch_indices() -> None:
    torch.manual_seed(0)
    x = torch.ones(500, 20)
    m = Feat()
    NestedDropout(distribution="half_gaussian", sigma=8.0).attach(m)
    per_example = kept(m.backbone(x))
    assert len(per_example.unique()) > 5  # one index per row
    m2 = Feat()
    NestedDropout(distribution="half_gaussian", sigma=8.0, per_batch=True).attach(m2)
    rows = [kept(m2.backbone(x)) for _ in range(200)]
    assert all(len(r.unique()) == 1 for r in rows)  # one index per mini-batch ...
    firsts = torch.stack([r[0] for r in rows])
    assert len(firsts.unique()) > 5  # ... drawn anew each batch
    m.eval()
    assert torch.equal(m.backbone(x), x)  # eval_k None: all units


def test_layer_list_and_family_feature_layers() -> None:
    x = torch.ones(300, 20)
    m = Feat()
    NestedDropout(distribution="half_gaussian", sigma=1.0, layer=["backbone", "other"]).attach(m)
    for layer in (m.backbone, m.other):
        assert (layer(x)[:, 10:] == 0).all()  # P(k > 10) = O(exp(-100))
    m2 = Feat()
    m2.feature_layers = ("other",)
    NestedDropout(distribution="half_gaussian", sigma=1.0).attach(m2)  # layer=None: the family's feature_layers
    assert (m2.other(x)[:, 10:] == 0).all() and torch.equal(m2.backbone(x), x)
    with pytest.raises(ValueError, match="layer='nope'.*available layers: backbone, other"):
        NestedDropout(layer="nope").attach(Feat())


@pytest.mark.parametrize("kwargs,match", [
    (dict(distribution="half_gaussian", sigma=0.0), r"sigma=0.0 is out of range; allowed: \(0.0, inf\)"),
    (dict(distribution="half_gaussian", sigma=-2.0), r"sigma=-2.0 is out of range"),
    (dict(distribution="half_gaussian"), r"half_gaussian' needs sigma.*allowed: a number > 0"),
    (dict(distribution="geometric", sigma=3.0), r"sigma=3.0 is used only by distribution='half_gaussian'"),
    (dict(distribution="uniform"), r"distribution='uniform' is not allowed; choose one of \['geometric', 'half_gaussian'"),
    (dict(k_candidates=[0, 4]), r"k_candidates=\[0, 4\].*integers >= 1"),
    (dict(k_candidates=[]), r"k_candidates=\[\]"),
    (dict(layer=[]), r"layer=\[\]"),
])
def test_bad_arguments(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        NestedDropout(**kwargs)
