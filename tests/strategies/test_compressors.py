"""Oracles for the compressors of MASHA (Beznosikov et al. 2022, Def. 2.1-2.2) and error feedback."""

import itertools

import pytest
import torch

from lightning_vi.strategies.compressors import ErrorFeedback, RandK, TopK, resolve_k


class _FixedSubset:
    """A stand-in for the random draw: makes RandK use a given subset, so all subsets can be enumerated."""

    def __init__(self, subset):
        self.subset = subset

    def __call__(self, d, generator=None, device="cpu"):
        return torch.tensor(self.subset, dtype=torch.int32, device=device)


@pytest.mark.parametrize("d,k", [(5, 2), (4, 1), (6, 3)])
def test_randk_unbiased_with_exact_variance_over_all_subsets(d, k, monkeypatch):
    x = torch.tensor([1.5, -2.0, 0.25, 3.0, -0.75, 1.25], dtype=torch.float64)[:d]
    comp = RandK(k)
    outs = []
    for subset in itertools.combinations(range(d), k):  # uniform over the C(d, k) subsets
        monkeypatch.setattr(comp, "indices", _FixedSubset(subset))
        outs.append(comp(x))
    outs = torch.stack(outs)
    mean = outs.mean(0)
    var = ((outs - x) ** 2).sum(1).mean()
    torch.testing.assert_close(mean, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(var, torch.tensor((d / k - 1) * float(x @ x), dtype=torch.float64), rtol=1e-12, atol=0)


def test_randk_draws_every_subset_uniformly():
    d, k, n = 5, 2, 20000
    comp = RandK(k)
    g = torch.Generator().manual_seed(0)
    counts = {}
    for _ in range(n):
        s = tuple(sorted(comp.indices(d, g).tolist()))
        assert len(set(s)) == k
        counts[s] = counts.get(s, 0) + 1
    assert len(counts) == 10
    expected = n / 10  # sd = sqrt(n * 0.1 * 0.9) ~ 42; 5 sd margin
    assert all(abs(c - expected) < 5 * (n * 0.09) ** 0.5 for c in counts.values()), counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_is_contractive(seed):
    g = torch.Generator().manual_seed(seed)
    for d, k in [(10, 1), (10, 3), (100, 7), (1000, 10)]:
        comp = TopK(k)
        for _ in range(200):
            x = torch.randn(d, generator=g, dtype=torch.float64) * torch.rand(d, generator=g, dtype=torch.float64) ** 3
            err = ((comp(x) - x) ** 2).sum()
            assert err <= (1 - k / d) * (x @ x) + 1e-12
            # and it keeps the k largest magnitudes
            kept = comp(x) != 0
            assert x.abs()[kept].min() >= x.abs()[~kept].max()


@pytest.mark.parametrize("compressor", [TopK(3), TopK(0.5), RandK(0.3, scale=False)])
def test_error_feedback_telescopes_exactly(compressor):
    g = torch.Generator().manual_seed(0)
    ef = ErrorFeedback(compressor)
    grads = [torch.randn(11, generator=g, dtype=torch.float64) for _ in range(25)]
    sent = torch.zeros(11, dtype=torch.float64)
    for grad in grads:
        sent += ef.compress(grad, key="bucket", generator=g).dense()
    # exact in float64: each residual is (e + g) - C(e + g) with C keeping values unchanged or scaled
    torch.testing.assert_close(sent + ef.residual("bucket"), torch.stack(grads).sum(0), rtol=0, atol=1e-12)
    assert ef.residual("bucket").abs().sum() > 0  # something was held back


def test_error_feedback_keeps_one_residual_per_key():
    ef = ErrorFeedback(TopK(1))
    ef.compress(torch.tensor([1.0, 2.0]), key=0)
    ef.compress(torch.tensor([5.0, 1.0, 1.0]), key=1)
    torch.testing.assert_close(ef.residual(0), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(ef.residual(1), torch.tensor([0.0, 1.0, 1.0]))


def test_k_fraction_and_absolute():
    assert resolve_k(0.01, 1000) == 10
    assert resolve_k(0.01, 1050) == 10  # floor: never more than the fraction asks
    assert resolve_k(0.01, 50) == 1
    assert resolve_k(7, 7) == 7
    assert resolve_k(1.0, 9) == 9


@pytest.mark.parametrize("k", [0, -3, 11, 0.0, 1.5, -0.1])
def test_k_outside_range_names_it(k):
    with pytest.raises(ValueError, match=rf"k={k!r}"):
        resolve_k(k, 10)
    with pytest.raises(ValueError, match=r"k="):
        TopK(k).compress(torch.ones(10))
