"""MASHA1 (Beznosikov et al. 2022, Alg. 1) on a strongly-monotone quadratic game with a closed-form saddle point.

Workers are simulated in one process; bits are counted per message (see lightning_vi.strategies.masha).
"""

import pytest
import torch

from lightning_vi.strategies.masha import Extragradient, Masha1, quadratic_game


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masha1_reaches_saddle_point_with_fewer_bits_than_extragradient(seed):
    ops, z_star, L = quadratic_game(50, workers=2, seed=seed)
    # the saddle point really solves F(z*) = 0 (independent check of the closed form)
    assert torch.linalg.vector_norm(torch.stack([F(z_star) for F in ops]).mean(0)) < 1e-10
    z0 = torch.zeros(100, dtype=torch.float64)
    masha = Masha1(ops, z0, gamma=0.3 / L, k=0.1, seed=seed).run(3000, z_star)
    assert masha.distance[-1] < 1e-3
    masha_bits = masha.bits_to_reach(1e-3)
    # extragradient with its best step size on a grid (fair baseline)
    eg_bits = [Extragradient(ops, z0, g / L).run(400, z_star).bits_to_reach(1e-3) for g in (0.5, 0.7, 0.9, 1.0)]
    best_eg = min(b for b in eg_bits if b is not None)
    assert masha_bits < 0.8 * best_eg, (masha_bits, eg_bits)


def test_masha1_message_count():
    ops, z_star, L = quadratic_game(5, workers=3, seed=0)
    m = Masha1(ops, torch.zeros(10, dtype=torch.float64), gamma=0.1 / L, k=2, p=0.5, seed=0)
    refreshes = 0
    for _ in range(50):
        w = m.w
        m.step()
        refreshes += m.w is not w
    # one full round at start and at each refresh (3 x 10 floats), one compressed message per worker per step (2 floats)
    assert m.messages == 3 * (1 + refreshes) + 3 * 50
    assert m.bits == 32 * (3 * 10 * (1 + refreshes) + 3 * 2 * 50)
    assert 10 < refreshes < 40


def test_extragradient_converges_on_bilinear_game():
    # min_x max_y x'Ay + a'x - b'y: F(z) = (Ay + a, -A'x + b); saddle x* = A'^{-1}b, y* = -A^{-1}a
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    A = Q @ torch.diag(torch.tensor([1.0, 1.5, 2.0, 2.5], dtype=torch.float64))  # singular values 1..2.5
    a, b = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    F = lambda z: torch.cat([A @ z[4:] + a, -A.T @ z[:4] + b])  # noqa: E731
    z_star = torch.cat([torch.linalg.solve(A.T, b), -torch.linalg.solve(A, a)])
    L = float(torch.linalg.matrix_norm(A, ord=2))
    h = Extragradient([F, F], torch.zeros(8, dtype=torch.float64), gamma=0.5 / L).run(3000, z_star)
    assert h.distance[-1] < 1e-3


@pytest.mark.parametrize("kwargs,match", [({"gamma": 0.0}, "gamma=0.0"), ({"gamma": 0.1, "p": 1.5}, "p=1.5"),
                                          ({"gamma": 0.1, "k": 0}, "k=0")])
def test_bad_arguments_name_the_value(kwargs, match):
    ops, _, _ = quadratic_game(3, workers=2)
    with pytest.raises(ValueError, match=match):
        Masha1(ops, torch.zeros(6, dtype=torch.float64), **kwargs)
