"""MASHA1/MASHA2 (Beznosikov et al. 2022, Alg. 1-2) on a strongly-monotone quadratic game with a closed-form saddle
point. Workers are simulated in one process; bits are counted per message, both ways (lightning_vi.strategies.masha).
"""

import pytest
import torch

from lightning_vi.strategies.masha import Extragradient, Masha1, Masha2, masha1_server, quadratic_game

TOL = 1e-3


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def game(request):
    """The game of one seed and extragradient's bits (up + down) to reach TOL with its best step on a grid."""
    seed = request.param
    ops, z_star, L = quadratic_game(50, workers=2, seed=seed)
    # the saddle point really solves F(z*) = 0 (independent check of the closed form)
    assert torch.linalg.vector_norm(torch.stack([F(z_star) for F in ops]).mean(0)) < 1e-10
    z0 = torch.zeros(100, dtype=torch.float64)
    eg = [Extragradient(ops, z0, g / L).run(400, z_star).bits_to_reach(TOL) for g in (0.5, 0.7, 0.9, 1.0)]
    return seed, ops, z_star, L, z0, min(b for b in eg if b is not None)


def _best(cls, ops, z0, z_star, L, gammas, **kw):
    """Fewest total bits to reach TOL over a small step grid (the same kind of tuning extragradient gets)."""
    runs = [cls(ops, z0, g / L, **kw).run(1500, z_star) for g in gammas]
    reached = [h for h in runs if h.bits_to_reach(TOL) is not None]
    assert reached, [h.distance[-1] for h in runs]
    best = min(reached, key=lambda h: h.bits_to_reach(TOL))
    assert best.distance[-1] < TOL  # and it stays there
    return best


def test_masha1_reaches_saddle_point_with_fewer_bits_than_extragradient(game):
    seed, ops, z_star, L, z0, eg_bits = game
    h = _best(Masha1, ops, z0, z_star, L, (0.3,), k=0.1, seed=seed)
    # measured ratios (total bits, uncompressed downlink) 0.71 / 0.73 / 0.66 for seeds 0 / 1 / 2
    assert h.bits_to_reach(TOL) < 0.8 * eg_bits, (h.bits_to_reach(TOL), eg_bits)


def test_masha2_reaches_saddle_point_with_fewer_bits_than_extragradient(game):
    seed, ops, z_star, L, z0, eg_bits = game
    h = _best(Masha2, ops, z0, z_star, L, (0.3, 0.5), k=0.1, seed=seed)
    # Top-k messages carry int32 indices too; measured ratios 0.74 / 0.89 / 0.73
    assert h.bits_to_reach(TOL) < 0.95 * eg_bits, (h.bits_to_reach(TOL), eg_bits)


@pytest.mark.parametrize("cls,gammas", [(Masha1, (0.2, 0.3)), (Masha2, (0.3, 0.5))], ids=["masha1", "masha2"])
def test_bidirectional_compression_fewer_total_bits_than_extragradient(game, cls, gammas):
    seed, ops, z_star, L, z0, eg_bits = game
    h = _best(cls, ops, z0, z_star, L, gammas, k=0.1, server_k=0.1, seed=seed)
    # measured ratios: MASHA1 0.66 / 0.82 / 0.75, MASHA2 0.84 / 0.87 / 0.80
    assert h.bits_to_reach(TOL) < 0.95 * eg_bits, (h.bits_to_reach(TOL), eg_bits)
    # the downlink really is compressed: per compressed step each worker gets at most k_s = 10 values (+ indices)
    plain = cls(ops, z0, 0.2 / L, k=0.1, seed=seed).run(200)
    comp = cls(ops, z0, 0.2 / L, k=0.1, server_k=0.1, seed=seed).run(200)
    assert comp.bits_down[-1] < plain.bits_down[-1]
    assert comp.bits_up[-1] == plain.bits_up[-1]  # same uplink (same coins, same worker draws)


def _virtual_identity_error(m, ops, steps=60):
    """Largest violation of MASHA2's error-feedback identity (a consequence of the residual updates in Alg. 2):
    z^{k+1} - E^{k+1} = z_bar^k - E^k - gamma F(z^{k+1/2}) with E = mean_m e_m + e, F from the operators here."""
    F = lambda z: torch.stack([op(z) for op in ops]).mean(0)  # noqa: E731
    def E():
        workers, server = m.residuals()
        return torch.stack(workers).mean(0) + (0 if server is None else server)
    worst = 0.0
    for _ in range(steps):
        z_bar = m.tau * m.z + (1 - m.tau) * m.w
        z_half = z_bar - m.gamma * F(m.w)
        expected = z_bar - E() - m.gamma * F(z_half)
        m.step()
        worst = max(worst, float((m.z - E() - expected).abs().max()))
    return worst


@pytest.mark.parametrize("server_k", [None, 0.1, 3])
def test_masha2_error_feedback_identity(server_k):
    ops, z_star, L = quadratic_game(20, workers=3, seed=4)
    z0 = torch.ones(40, dtype=torch.float64)
    m = Masha2(ops, z0, 0.3 / L, k=4, server_k=server_k, seed=1)
    assert _virtual_identity_error(m, ops) < 1e-12
    assert any(float(e.abs().sum()) > 0 for e in m.residuals()[0])  # something was held back
    # without error feedback the identity fails: the test can tell the two apart
    plain = Masha2(ops, z0, 0.3 / L, k=4, server_k=server_k, seed=1, error_feedback=False)
    assert _virtual_identity_error(plain, ops) > 1e-3
    workers, server = plain.residuals()  # and it keeps no residual anywhere
    assert all(float(e.abs().sum()) == 0 for e in workers + ([] if server is None else [server]))


def test_masha1_server_randk_unbiased_on_the_union():
    # Q_serv keeps k_s of the |U| coordinates the workers sent, scaled |U|/k_s: E[Q(x)] = x and
    # E||Q(x) - x||^2 = (|U|/k_s - 1)||x||^2 (the Rand-k identities on the support U)
    x = torch.zeros(10, dtype=torch.float64)
    x[[1, 4, 6, 9]] = torch.tensor([2.0, -1.0, 0.5, 3.0], dtype=torch.float64)
    indices = [torch.tensor([1, 4], dtype=torch.int32), torch.tensor([6, 9, 4], dtype=torch.int32)]
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([masha1_server(x, indices, 2, gen)[0] for _ in range(6000)])
    assert masha1_server(x, indices, 2, gen)[1] == 2 * 32  # two values on the wire per worker
    torch.testing.assert_close(draws.mean(0), x, rtol=0, atol=0.1)  # sd of each mean < 0.03
    var = float(((draws - x) ** 2).sum(1).mean())
    assert abs(var - (4 / 2 - 1) * float(x @ x)) < 0.05 * float(x @ x)
    exact, bits = masha1_server(x, indices, None, gen)  # uncompressed downlink: the mean on the union
    assert torch.equal(exact, x) and bits == 4 * 32


def test_masha1_message_count():
    ops, z_star, L = quadratic_game(5, workers=3, seed=0)
    m = Masha1(ops, torch.zeros(10, dtype=torch.float64), gamma=0.1 / L, k=2, p=0.5, seed=0)
    refreshes, union = 0, 0
    for _ in range(50):
        w = m.w
        gens = [g.get_state() for g in m.generators]
        m.step()
        # the union of the three workers' Rand-k coordinates, redrawn from the shared seed schedule
        draws = []
        for st in gens:
            g = torch.Generator()
            g.set_state(st)
            draws.append(torch.randperm(10, generator=g)[:2])
        union += len(set(torch.cat(draws).tolist()))
        refreshes += m.w is not w
    # one full round at start and at each refresh (3 x 10 floats each way), one compressed message per worker
    # per step (2 floats), the server's relay of the union (|U| floats per worker) and the coin (1 bit per worker)
    assert m.messages == 3 * (1 + refreshes) + 3 * 50
    assert m.bits_up == 32 * (3 * 10 * (1 + refreshes) + 3 * 2 * 50)
    assert m.bits_down == 32 * 3 * 10 * (1 + refreshes) + 32 * 3 * union + 3 * 50
    assert m.bits == m.bits_up + m.bits_down
    assert 10 < refreshes < 40


def test_bidirectional_message_counts():
    ops, _, L = quadratic_game(5, workers=3, seed=0)
    z0 = torch.zeros(10, dtype=torch.float64)
    m1 = Masha1(ops, z0, 0.1 / L, k=3, server_k=2, p=0.5, seed=0)
    m2 = Masha2(ops, z0, 0.1 / L, k=3, server_k=2, p=0.5, seed=0)
    for m, up, down in [(m1, 3 * 32, 2 * 32), (m2, 3 * 64, 2 * 64)]:  # Top-k: value + int32 index
        full = 0
        for _ in range(40):
            w = m.w
            m.step()
            full += m.w is not w
        assert m.bits_up == 32 * 3 * 10 * (1 + full) + 3 * up * 40
        assert m.bits_down == 32 * 3 * 10 * (1 + full) + 3 * down * 40 + 3 * 40


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


@pytest.mark.parametrize("cls", [Masha1, Masha2])
@pytest.mark.parametrize("kwargs,match", [
    ({"gamma": 0.0}, "gamma=0.0"), ({"gamma": -1.0}, "gamma=-1.0"), ({"gamma": 0.1, "p": 1.5}, "p=1.5"),
    ({"gamma": 0.1, "p": 0.0}, "p=0.0"), ({"gamma": 0.1, "tau": 1.0}, "tau=1.0"), ({"gamma": 0.1, "k": 0}, "k=0"),
    ({"gamma": 0.1, "k": 7}, "k=7"), ({"gamma": 0.1, "k": 1.5}, "k=1.5"), ({"gamma": 0.1, "server_k": 0}, "k=0"),
    ({"gamma": 0.1, "server_k": 9}, "k=9")])
def test_bad_arguments_name_the_value(cls, kwargs, match):
    ops, _, _ = quadratic_game(3, workers=2)  # d = 6
    with pytest.raises(ValueError, match=match):
        cls(ops, torch.zeros(6, dtype=torch.float64), **kwargs)


def test_bad_history_direction():
    ops, z_star, L = quadratic_game(3, workers=2)
    h = Extragradient(ops, torch.zeros(6, dtype=torch.float64), 0.5 / L).run(5, z_star)
    with pytest.raises(ValueError, match="direction='both'"):
        h.bits_to_reach(1.0, direction="both")
