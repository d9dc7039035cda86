"""sandbox.flows: the cone solver against closed forms and exhaustive search, the flows against
gradient flow below threshold and against a long GD run at the edge of stability."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

from sandbox import flows


@pytest.fixture(scope="module", autouse=True)
def _fast_compile():
    # Numbers here are checked against closed forms; XLA's optimizations only cost compile
    # time (the flows compile nested loops).
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
    jax.clear_caches()


# ----------------------------------------------------------------------------- cone problems


def _random_problem(rng, k, rank=None):
    """A (symmetric, indefinite) and B = sum_l G_l (x) G_l, positive definite on symmetric
    matrices when rank >= k (k + 1) / 2."""
    rank = k * (k + 1) if rank is None else rank
    M = rng.normal(size=(k, k))
    A = 0.5 * (M + M.T)
    G = rng.normal(size=(rank, k, k))
    G = 0.5 * (G + G.transpose(0, 2, 1))
    B = np.einsum("lij,lab->ijab", G, G) / rank
    return A, B


def _apply(B, X):
    return np.einsum("ijab,ab->ij", B, X)


def _exhaustive_2x2(A, B):
    """Every face of the 2 x 2 PSD cone: X = 0, X full rank (Z = 0), X = s v v^T with Z v = 0
    (all roots in the angle of v, bracketed on a 4000-point grid, refined by brentq)."""
    found = []
    if np.linalg.eigvalsh(A).min() >= 0:
        found.append(np.zeros((2, 2)))
    # full rank: B[X] = -A on the 3 coordinates of a symmetric X
    basis = [np.array(e, float) for e in ([[1, 0], [0, 0]], [[0, 1], [1, 0]], [[0, 0], [0, 1]])]
    Bm = np.array([[np.sum(_apply(B, e) * f) for e in basis] for f in basis])
    rhs = -np.array([np.sum(A * f) for f in basis])
    c = np.linalg.solve(Bm, rhs)
    X = sum(ci * e for ci, e in zip(c, basis, strict=True))
    if np.linalg.eigvalsh(X).min() >= 0:
        found.append(X)

    def parts(theta):
        v = np.array([np.cos(theta), np.sin(theta)])
        u = np.array([-np.sin(theta), np.cos(theta)])
        V = np.outer(v, v)
        s = -(v @ A @ v) / (v @ _apply(B, V) @ v)
        Z = A + s * _apply(B, V)
        return s, V, Z, u @ Z @ v, u @ Z @ u

    grid = np.linspace(0, np.pi, 4001)
    v = np.stack([np.cos(grid), np.sin(grid)], 1)  # the same h(theta) as `parts`, vectorized
    u = np.stack([-np.sin(grid), np.cos(grid)], 1)
    V = v[:, :, None] * v[:, None, :]
    BV = np.einsum("ijab,tab->tij", B, V)
    s_t = -np.einsum("ti,ij,tj->t", v, A, v) / np.einsum("ti,tij,tj->t", v, BV, v)
    h = np.einsum("ti,tij,tj->t", u, A + s_t[:, None, None] * BV, v)
    for lo, hi, h_lo, h_hi in zip(grid[:-1], grid[1:], h[:-1], h[1:], strict=True):
        if h_lo == 0 or h_lo * h_hi < 0:
            t = lo if h_lo == 0 else optimize.brentq(lambda t: parts(t)[3], lo, hi, xtol=1e-15)
            s, V, Z, _, uZu = parts(t)
            if s >= 0 and uZu >= -1e-12:
                found.append(s * V)
    assert found, "no face of the cone solves the problem"
    objective = [0.5 * np.sum(X * _apply(B, X)) + np.sum(A * X) for X in found]
    return found[int(np.argmin(objective))]


def test_cone_solver_k1_is_the_closed_form():
    # k = 1: x >= 0, a + b x >= 0, x (a + b x) = 0  =>  x = max(0, -a / b).
    rng = np.random.default_rng(0)
    a = rng.normal(size=64)
    b = rng.uniform(0.1, 3, size=64)
    with jax.enable_x64(True):
        solve = jax.jit(
            jax.vmap(lambda a, b: flows.complementarity(a[None, None], b[None, None, None, None]))
        )
        x = np.asarray(solve(jnp.asarray(a), jnp.asarray(b)))[:, 0, 0]
    np.testing.assert_allclose(x, np.maximum(0, -a / b), rtol=1e-12, atol=1e-14)


def test_cone_solver_k2_matches_exhaustive_search():
    # The exhaustive solution is found to brentq's 1e-15 in the angle; the problem is
    # strictly convex (B definite) so the solution is unique: agreement to 1e-8.
    rng = np.random.default_rng(1)
    problems = [_random_problem(rng, 2) for _ in range(24)]
    with jax.enable_x64(True):
        solve = jax.jit(jax.vmap(flows.complementarity))
        X = np.asarray(
            solve(
                jnp.asarray(np.stack([p[0] for p in problems])),
                jnp.asarray(np.stack([p[1] for p in problems])),
            )
        )
    ranks = []
    for (A, B), X_i in zip(problems, X, strict=True):
        ref = _exhaustive_2x2(A, B)
        np.testing.assert_allclose(X_i, ref, atol=1e-8)
        ranks.append(np.linalg.matrix_rank(ref, tol=1e-9))
    assert set(ranks) == {0, 1, 2}, ranks  # every face of the cone was exercised


@pytest.mark.parametrize(
    "k", [3, pytest.param(6, marks=pytest.mark.slow), pytest.param(10, marks=pytest.mark.slow)]
)
def test_cone_solver_meets_the_complementarity_conditions_to_1e8(k):
    # X >= 0, Z = A + B[X] >= 0 and <X, Z> = 0, each to 1e-8 in float64 (A and B of unit
    # size), with and without a mask of rows and columns.
    rng = np.random.default_rng(k)
    problems = [_random_problem(rng, k) for _ in range(8)]
    masks = rng.uniform(size=(8, k)) < 0.7
    with jax.enable_x64(True):
        A = jnp.asarray(np.stack([p[0] for p in problems]))
        B = jnp.asarray(np.stack([p[1] for p in problems]))
        X = np.asarray(jax.jit(jax.vmap(flows.complementarity))(A, B))
        Xm = np.asarray(
            jax.jit(jax.vmap(lambda a, b, m: flows.complementarity(a, b, mask=m)))(
                A, B, jnp.asarray(masks)
            )
        )
    for (A_i, B_i), X_i, Xm_i, m in zip(problems, X, Xm, masks, strict=True):
        Z = A_i + _apply(B_i, X_i)
        assert np.linalg.eigvalsh(X_i).min() >= -1e-8
        assert np.linalg.eigvalsh(Z).min() >= -1e-8
        assert abs(np.sum(X_i * Z)) <= 1e-8
        # masked: the same problem on the selected rows and columns, zero elsewhere
        sel = np.ix_(m, m)
        assert np.all(Xm_i[~m] == 0) and np.all(Xm_i[:, ~m] == 0)
        if m.any():
            Zm = A_i[sel] + _apply(B_i[np.ix_(m, m, m, m)], Xm_i[sel])
            assert np.linalg.eigvalsh(Xm_i[sel]).min() >= -1e-8
            assert np.linalg.eigvalsh(Zm).min() >= -1e-8
            assert abs(np.sum(Xm_i[sel] * Zm)) <= 1e-8


def _sym_basis(k):
    """An orthonormal basis [k (k + 1) / 2, k, k] of the symmetric k x k matrices."""
    out = []
    for p, q in zip(*np.triu_indices(k), strict=True):
        E = np.zeros((k, k))
        E[p, q] = E[q, p] = 1.0 if p == q else 1 / np.sqrt(2)
        out.append(E)
    return np.array(out)


def _constructed_problem(rng, k, cond, scale):
    """(A, B, X*): B with condition number `cond` on the symmetric matrices, and a solution
    X* chosen first, large (`scale`) along the least curved direction of B: X* = scale
    Proj_PSD(E_min) and Z* >= 0 on its null space, so X* Z* = 0 and A = Z* - B[X*] has X*
    as its solution (unique: B is definite)."""
    S = _sym_basis(k)
    m = len(S)
    V = np.linalg.qr(rng.normal(size=(m, m)))[0]
    B = np.einsum("pq,pij,qab->ijab", (V * np.logspace(0, -np.log10(cond), m)) @ V.T, S, S)
    lam, Q = np.linalg.eigh(np.einsum("p,pij->ij", V[:, -1], S))
    if lam[-1] < -lam[0]:  # the sign with the larger positive part
        lam, Q = -lam[::-1], Q[:, ::-1]
    X = (Q * (scale * np.maximum(lam, 0))) @ Q.T
    Z = (Q * np.where(lam > 0, 0, rng.uniform(0.5, 2, size=k))) @ Q.T
    return Z - _apply(B, X), B, X


def _natural_residual(A, B, X):
    """|Y - Proj_PSD(Y - Z)|_F with A, B scaled to |A|_max = |B|_2 = 1, in NumPy."""
    k = len(A)
    a, b = np.abs(A).max(), np.linalg.norm(B.reshape(k * k, k * k), 2)
    Y, Z = X * b / a, (A + _apply(B, X)) / a
    mu, Q = np.linalg.eigh(Y - Z)
    return np.linalg.norm(Y - (Q * np.maximum(mu, 0)) @ Q.T)


def test_cone_solver_ill_conditioned_matches_the_constructed_solution():
    # B with condition number 1e4 to 1e6 and X* of size 100 to 1000 along its least curved
    # direction: semismooth Newton alone stalls on some of these (its projected gradient
    # fallback moves about 1 / cond per step: 6 of these 24 ended 18% to 81% off after its
    # 50 iterations), the smoothing Newton fallback finds X* (measured relative error up to
    # 5e-11, float64 rounding times the condition number; tolerance 1e-7).
    rng = np.random.default_rng(7)
    problems = [
        _constructed_problem(rng, 3, cond, scale)
        for cond, scale in [(1e4, 100), (1e5, 300), (1e6, 1000)]
        for _ in range(8)
    ]
    with jax.enable_x64(True):
        A = jnp.asarray(np.stack([p[0] for p in problems]))
        B = jnp.asarray(np.stack([p[1] for p in problems]))
        X = np.asarray(jax.jit(jax.vmap(flows.complementarity))(A, B))
        res = np.asarray(jax.vmap(flows.cone_residual)(A, B, jnp.asarray(X)))
    for (_, _, X_star), X_i in zip(problems, X, strict=True):
        np.testing.assert_allclose(X_i, X_star, atol=1e-7 * np.abs(X_star).max())
    assert res.max() <= 1e-7, res.max()


def test_cone_solver_solves_an_ill_conditioned_random_problem():
    # A random k = 3 problem (the 140th from this seed) whose B has condition number 1.4e5:
    # 50 semismooth Newton iterations ended at min eig Z = -0.33 (objective -13.0 against
    # -53.2). The conditions, checked in NumPy, certify the solution (B is definite): X and
    # Z >= 0 and <X, Z> = 0 to 1e-9 of |A| |X| (float64 rounding times the condition).
    rng = np.random.default_rng(0)
    for _ in range(140):
        M = rng.normal(size=(3, 3))
        G = rng.normal(size=(6, 3, 3))
        G = 0.5 * (G + G.transpose(0, 2, 1))
    A, B = 0.5 * (M + M.T), np.einsum("lij,lab->ijab", G, G) / 6
    with jax.enable_x64(True):
        X = np.asarray(flows.complementarity(jnp.asarray(A), jnp.asarray(B)))
    Z = A + _apply(B, X)
    size = np.abs(A).max() * np.abs(X).max()
    assert np.abs(X).max() > 100  # the far-away solution
    assert np.linalg.eigvalsh(X).min() >= -1e-9 * np.abs(X).max()
    assert np.linalg.eigvalsh(Z).min() >= -1e-9 * np.abs(A).max()
    assert abs(np.sum(X * Z)) <= 1e-9 * size
    objective = 0.5 * np.sum(X * _apply(B, X)) + np.sum(A * X)
    np.testing.assert_allclose(objective, -53.176874, rtol=1e-7)


def test_cone_solver_masked_float32_meets_the_selected_blocks_scale():
    # The central flow's cone problems are float32, masked, with an A of the size of
    # |2 - eig| (about 1e-2). The solver's tolerance, 100 eps = 1.2e-5, is on the selected
    # block scaled to unit size (the masked-out rows' I once set the scale: up to 7.8e-4
    # here). Natural residual of the block in float64 NumPy: measured up to 4.8e-6,
    # tolerance 1e-4.
    rng = np.random.default_rng(3)
    problems = [_random_problem(rng, 4) for _ in range(64)]
    A = np.stack([p[0] for p in problems]) * 1e-2
    B = np.stack([p[1] for p in problems])
    m = np.array([True, True, True, False])
    X = jax.jit(jax.vmap(lambda a, b: flows.complementarity(a, b, mask=jnp.asarray(m))))(
        jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)
    )
    X = np.asarray(X, np.float64)
    assert np.all(X[:, 3, :] == 0) and np.all(X[:, :, 3] == 0)
    sel = np.ix_(m, m)
    res = [
        _natural_residual(a[sel], b[np.ix_(m, m, m, m)], x[sel])
        for a, b, x in zip(A, B, X, strict=True)
    ]
    assert max(res) <= 1e-4, max(res)


def test_cone_residual_is_the_scaled_natural_residual():
    # Against the NumPy definition, for a solution and for other X (rtol 1e-10; atol 1e-13
    # for the rounding at the solution, where it is 6e-16), and masked: the residual of the
    # selected block.
    rng = np.random.default_rng(11)
    A, B = _random_problem(rng, 3)
    with jax.enable_x64(True):
        X = np.asarray(flows.complementarity(jnp.asarray(A), jnp.asarray(B)))
        M = rng.normal(size=(3, 3))
        for Xt in (X, X + 0.1 * np.eye(3), np.zeros((3, 3)), M + M.T):
            got = float(flows.cone_residual(jnp.asarray(A), jnp.asarray(B), jnp.asarray(Xt)))
            np.testing.assert_allclose(got, _natural_residual(A, B, Xt), rtol=1e-10, atol=1e-13)
        assert float(flows.cone_residual(jnp.asarray(A), jnp.asarray(B), jnp.asarray(X))) < 1e-13
        m = np.array([True, False, True])
        Xm = np.asarray(flows.complementarity(jnp.asarray(A), jnp.asarray(B), mask=m))
        sel = np.ix_(m, m)
        bad = Xm + 0.1 * np.outer(m, m)
        got = float(flows.cone_residual(jnp.asarray(A), jnp.asarray(B), jnp.asarray(bad), mask=m))
    np.testing.assert_allclose(
        got, _natural_residual(A[sel], B[np.ix_(m, m, m, m)], bad[sel]), rtol=1e-10
    )


# ----------------------------------------------------------------------------- below threshold

D = np.array([0.5, 0.3, 0.1, 0.05])  # Hessian of the quadratic
W0 = np.array([1.0, -0.5, 0.8, 0.3])


def _quadratic(w):
    return 0.5 * jnp.sum(jnp.asarray(D, w.dtype) * w * w)


def test_below_threshold_gd_flows_equal_gradient_flow():
    # lr lambda <= 0.05: no effective eigenvalue near 2, so X = 0 and the central flow is the
    # stable flow, and both are the gradient flow w(t) = exp(-lr D t) w0. One RK4 substep
    # per step (0.05 < DT_THETA) errs by about (lr lambda)^5 / 120 = 3e-9 per step, 1e-7
    # over 30 steps: 1e-6 holds.
    lr, steps = 0.1, 30
    with jax.enable_x64(True):
        w0 = jnp.asarray(W0)
        stable = flows.run(_quadratic, w0, flow="stable", lr=lr, steps=steps, num_eigs=2)
        central = flows.run(_quadratic, w0, flow="central", lr=lr, steps=steps, num_eigs=2)
        discrete = flows.run(_quadratic, w0, flow="discrete", lr=lr, steps=steps, num_eigs=2)
        stable, central, discrete = jax.device_get((stable, central, discrete))
    exact = np.exp(-lr * D * steps) * W0
    t = np.arange(steps)[:, None]
    exact_loss = 0.5 * np.sum(D * (np.exp(-lr * D * t) * W0) ** 2, axis=1)
    for trace in (stable, central):
        np.testing.assert_allclose(trace.params, exact, atol=1e-6)
        np.testing.assert_allclose(trace.loss, exact_loss, atol=1e-6)
        np.testing.assert_allclose(trace.predicted, trace.loss, atol=1e-12)  # Sigma = 0
        np.testing.assert_allclose(trace.eigs, np.tile(lr * D[:2], (steps, 1)), rtol=1e-10)
        np.testing.assert_allclose(trace.eig_next, lr * D[2], rtol=1e-10)  # the 3rd
        np.testing.assert_array_equal(trace.cone_residual, 0)  # no cone problem below 2 C
    np.testing.assert_allclose(central.params, stable.params, atol=1e-12)
    # GD itself is (1 - lr D)^t w0 exactly (it differs from the flow by t (lr lambda)^2 / 2).
    np.testing.assert_allclose(discrete.params, (1 - lr * D) ** steps * W0, rtol=1e-12)
    assert np.all(np.isnan(discrete.predicted))
    np.testing.assert_allclose(discrete.eig_next, lr * D[2], rtol=1e-10)


def test_eig_next_is_nan_when_every_eigenvalue_is_tracked():
    # num_eigs = 4 = the number of parameters: there is no 5th eigenvalue
    with jax.enable_x64(True):
        trace = jax.device_get(
            flows.run(_quadratic, jnp.asarray(W0), flow="central", lr=0.1, steps=3, num_eigs=4)
        )
    np.testing.assert_allclose(trace.eigs[-1], 0.1 * D, rtol=1e-10)
    assert np.all(np.isnan(trace.eig_next))


def _rmsprop_flow_reference(optimizer, lr, beta2, steps):
    """The stable flow of (scalar) RMSProp on the quadratic by scipy's DOP853 (rtol 1e-12)."""
    kappa = (1 - beta2) / beta2

    def rhs(_, y):
        w, nu = y[:4], y[4:]
        g = D * w
        sq = g * g if optimizer == "rmsprop" else np.array([g @ g])
        return np.concatenate([-lr * g / np.sqrt(nu), kappa * (sq - nu)])

    g0 = D * W0
    nu0 = g0 * g0 if optimizer == "rmsprop" else np.array([g0 @ g0])
    sol = integrate.solve_ivp(
        rhs, (0, steps), np.concatenate([W0, nu0]), method="DOP853", rtol=1e-12, atol=1e-14
    )
    return sol.y[:4, -1], sol.y[4:, -1]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["rmsprop", "scalar_rmsprop"])
def test_below_threshold_rmsprop_flows_equal_the_preconditioned_gradient_flow(optimizer):
    # lr / sqrt(nu) times the curvature stays below 0.05 over 30 steps: X = 0, the central
    # flow is the stable flow, and both match an independent DOP853 solution of
    # dw/dt = -lr g / sqrt(nu), dnu/dt = (1 - b2) / b2 (g^2 - nu) to 1e-6 (RK4 error as in
    # the gd test).
    lr, beta2, steps = 0.005, 0.9, 30
    w_ref, nu_ref = _rmsprop_flow_reference(optimizer, lr, beta2, steps)
    with jax.enable_x64(True):
        w0 = jnp.asarray(W0)
        kw = dict(optimizer=optimizer, lr=lr, steps=steps, num_eigs=2, beta2=beta2)
        stable = flows.run(_quadratic, w0, flow="stable", **kw)
        central = flows.run(_quadratic, w0, flow="central", **kw)
        stable, central = jax.device_get((stable, central))
    assert stable.eigs.max() < 0.5
    for trace in (stable, central):
        np.testing.assert_allclose(trace.params, w_ref, atol=1e-6)
        np.testing.assert_allclose(np.reshape(trace.nu, -1), nu_ref, rtol=1e-6)
    np.testing.assert_allclose(central.params, stable.params, atol=1e-12)


# ----------------------------------------------------------------------------- edge of stability

LR = 0.5  # threshold: sharpness 2 / lr = 4


def _cubic(w):
    """0.5 (1 + y) x^2 + 0.05 (y - 4)^2 + 0.15 z^2: the sharpness 1 + y rises from 3 towards
    5 under the flow; above 4 = 2 / lr GD oscillates in x, and the oscillation's x^2 pushes
    y (and the sharpness) back down. Central flow: y stays at 3, Sigma_xx = 2 mu (4 - 3) =
    0.2, loss 0.05 and predicted time-averaged loss 0.05 + Sigma_xx / lr = 0.45."""
    x, y, z = w[0], w[1], w[2]
    return 0.5 * (1 + y) * x**2 + 0.05 * (y - 4) ** 2 + 0.15 * z**2


@pytest.fixture(scope="module")
def eos():
    with jax.enable_x64(True):
        w0 = jnp.array([0.1, 2.0, 1.0])
        central = flows.run(_cubic, w0, flow="central", lr=LR, steps=300, num_eigs=2)
        discrete = flows.run(_cubic, w0, flow="discrete", lr=LR, steps=4000, num_eigs=2)
        return jax.device_get((central, discrete))


def test_central_flow_holds_the_effective_sharpness_at_2_and_predicts_gd(eos):
    central, discrete = eos
    onset = flows.onset(central.eigs)
    assert onset is not None and 5 < onset < 60
    # after onset the effective sharpness lr (1 + y) stays at 2: the cone problem holds the
    # linear prediction one step ahead, so the step after onset may drift by the second
    # order term (measured 1.3e-5, tolerance 1e-4); from then on to 1e-6.
    np.testing.assert_allclose(central.eigs[onset + 1 :, 0], 2.0, atol=1e-4)
    np.testing.assert_allclose(central.eigs[onset + 3 :, 0], 2.0, atol=1e-6)
    # the flow settles where theory puts it: y = 3, loss 0.05, prediction 0.45
    np.testing.assert_allclose(central.params, [0.0, 3.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(central.loss[-1], 0.05, rtol=1e-6)
    np.testing.assert_allclose(central.predicted[-1], 0.45, rtol=1e-6)
    # the third effective eigenvalue, y's curvature 0.1 times lr once x = 0, is far below 2
    np.testing.assert_allclose(central.eig_next[-1], 0.05, rtol=1e-9)
    assert central.eig_next.max() < 0.1
    # every cone problem solved to float64 rounding (measured 2e-16; 1e-12), none before the
    # top eigenvalue passes 2 CRITICAL
    crit = np.flatnonzero(central.eigs[:, 0] > 2 * flows.CRITICAL)[0]
    assert np.all(central.cone_residual[:crit] == 0) and central.cone_residual.max() < 1e-12
    # against GD's running mean over its last 2000 steps (window 2000): the central flow is
    # a second-order time average; measured gap 0.55%, tolerance 2% (the paper: "a few
    # percent").
    mean = float(np.mean(discrete.loss[-2000:]))
    assert abs(mean / 0.45 - 1) < 0.02, mean
    # GD does oscillate: its loss is far from its mean on single steps
    assert np.ptp(discrete.loss[-100:]) > 0.1


def test_below_onset_central_and_stable_flows_agree(eos):
    central, _ = eos
    with jax.enable_x64(True):
        stable = jax.device_get(
            flows.run(
                _cubic, jnp.array([0.1, 2.0, 1.0]), flow="stable", lr=LR, steps=300, num_eigs=2
            )
        )
    onset = flows.onset(central.eigs)
    np.testing.assert_allclose(central.loss[:onset], stable.loss[:onset], rtol=1e-9)
    # after onset the stable flow's sharpness keeps rising to 1 + 4 = 5 (effective 2.5)
    assert stable.eigs[-1, 0] > 2.4


M_STAR = np.array([[5.0, 0.5], [0.5, 4.8]])  # eigenvalues 5.41 and 4.39, both above 4
MU = 0.1


def _coupled(w):
    """0.5 x^T M(y) x + (mu / 2) |y - y*|^2, x in R^2, M(y) = [[1 + y1, y3 / sqrt 2], [y3 /
    sqrt 2, 1 + y2]], so that |y - y*| = |M(y) - M*|_F with M* = M(y*). The stable flow
    takes M to M*, both of its eigenvalues past 4 = 2 / lr. The central flow stops where
    mu (y - y*) + 1/2 grad_y <M(y), Sigma> = 0 with Sigma >= 0, M <= 4 I and Sigma (4 I - M)
    = 0: the optimality conditions of min |M - M*|_F^2 over M <= 4 I (Sigma / 2 mu its
    multiplier). The solution is the projection M = Q min(m, 4) Q^T of M* = Q m Q^T, here
    4 I: both directions critical, and Sigma = 2 mu (M* - 4 I), whose off-diagonal entry
    2 mu 0.5 = 0.1 holds y3 at 0 (the cone problem's X is a full 2 x 2 block)."""
    x, y = w[:2], w[2:]
    r = 1 / np.sqrt(2)
    M = jnp.stack([jnp.stack([1 + y[0], r * y[2]]), jnp.stack([r * y[2], 1 + y[1]])])
    y_star = jnp.asarray([M_STAR[0, 0] - 1, M_STAR[1, 1] - 1, np.sqrt(2) * M_STAR[0, 1]])
    return 0.5 * x @ M @ x + 0.5 * MU * jnp.sum((y - y_star) ** 2)


def test_central_flow_holds_two_coupled_directions_at_the_projection():
    # Closed form (see _coupled): y = (3, 3, 0), x = 0, loss mu/2 |M* - 4 I|_F^2 = 0.107,
    # Sigma = 2 mu (M* - 4 I) with tr Sigma = 0.36, predicted loss + tr Sigma / lr = 0.827.
    # The flow approaches it at rate lr mu = 0.05 per step, within exp(-0.05 390) = 3e-9
    # after 400 steps (measured 9e-16 in y); tolerance 1e-7. Both effective eigenvalues end
    # at 2. A cone problem that dropped X's off-diagonal entry ends at y3 = 0.021 with
    # eigenvalues 2.009 and 1.991.
    sigma = 2 * MU * (M_STAR - 4 * np.eye(2))
    loss = 0.5 * MU * np.sum((M_STAR - 4 * np.eye(2)) ** 2)
    with jax.enable_x64(True):
        w0 = jnp.array([0.1, -0.05, 2.0, 1.5, 0.3])
        central = jax.device_get(
            flows.run(_coupled, w0, flow="central", lr=LR, steps=400, num_eigs=2)
        )
        # with one tracked direction the cone problem holds only the top one: the second
        # passes 2 CRITICAL unseen, and eig_next shows it
        short = jax.device_get(
            flows.run(_coupled, w0, flow="central", lr=LR, steps=400, num_eigs=1)
        )
    np.testing.assert_allclose(central.params, [0, 0, 3, 3, 0], atol=1e-7)
    np.testing.assert_allclose(central.eigs[-1], [2, 2], atol=1e-7)
    np.testing.assert_allclose(central.loss[-1], loss, rtol=1e-7)
    np.testing.assert_allclose(central.sigma[-1], np.trace(sigma) / LR, rtol=1e-7)
    np.testing.assert_allclose(central.predicted[-1], loss + np.trace(sigma) / LR, rtol=1e-7)
    assert central.eig_next.max() < 0.1 and central.cone_residual.max() < 1e-12
    assert short.eig_next.max() > 2 * flows.CRITICAL
    assert abs(short.params[4]) > 0.01  # without the off-diagonal term y3 is not held at 0


@pytest.mark.slow
def test_vmapped_over_two_learning_rates_equals_two_runs(eos):
    # batched reductions may reorder sums: float64 agreement to 1e-9
    with jax.enable_x64(True):
        w0 = jnp.array([0.1, 2.0, 1.0])
        lrs = jnp.array([0.5, 0.45])

        def one(lr):
            # the steps of the `eos` fixture: the separate runs reuse its compiled program
            return flows.run(_cubic, w0, flow="central", lr=lr, steps=300, num_eigs=2)

        both = jax.device_get(jax.vmap(one)(lrs))
        each = jax.device_get([one(lr) for lr in lrs])
    for i, trace in enumerate(each):
        for name in ("loss", "predicted", "eigs", "params", "substeps", "matvecs"):
            np.testing.assert_allclose(
                getattr(both, name)[i], getattr(trace, name), rtol=1e-9, atol=1e-12, err_msg=name
            )


def test_program_is_not_unrolled_in_steps():
    w0 = jnp.array([0.1, 2.0, 1.0])

    def program(steps):
        text = str(
            jax.make_jaxpr(
                lambda w: flows.run(_cubic, w, flow="central", lr=LR, steps=steps, num_eigs=2)
            )(w0)
        )
        return re.sub(r"\s+", "", re.sub(r"\d+", "#", text))

    assert program(3) == program(300)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(flow="euler"), "`flow`"),
        (dict(optimizer="adam"), "`optimizer`"),
        (dict(lr=0.0), "`lr`"),
        (dict(lr=-1.0), "`lr`"),
        (dict(lr=float("nan")), "`lr`"),
        (dict(lr=np.array([0.1, 0.2])), "`lr`"),  # one rate per call (vmap for more)
        (dict(lr=True), "`lr`"),
        (dict(num_eigs=4), "`num_eigs`"),
        (dict(num_eigs=0), "`num_eigs`"),
        (dict(steps=0), "`steps`"),
        (dict(steps=2.5), "`steps`"),
        (dict(beta2=0.9), "`beta2`"),
        (dict(optimizer="rmsprop", beta2=1.0), "`beta2`"),
        (dict(optimizer="rmsprop", eps=-1.0), "`eps`"),
    ],
)
def test_bad_arguments_are_one_value_error_naming_them(kwargs, name):
    args = dict(flow="central", lr=0.1, steps=5, num_eigs=2) | kwargs
    with pytest.raises(ValueError, match=re.escape(name)):
        flows.run(_cubic, jnp.zeros(3), **args)


def test_running_mean_is_centred():
    x = np.arange(10.0)
    np.testing.assert_allclose(flows.running_mean(x, 3)[1:-1], x[1:-1])
    np.testing.assert_allclose(flows.running_mean(x, 3)[[0, -1]], [0.5, 8.5])


def test_block_eigensolver_finds_the_preconditioned_spectrum():
    # A diagonal quadratic with 40 parameters (the block Rayleigh-Ritz path, not the dense
    # one): for RMSProp P^-1 H = diag(lr D / (sqrt(nu) + eps)) exactly, so the recorded
    # top 3 at the last step (which uses the final nu) are its 3 largest entries. The
    # warm-started solve converges to float64 rounding of the Ritz values (1e-9 relative).
    rng = np.random.default_rng(3)
    d = rng.uniform(0.1, 1.0, size=40)
    w0 = rng.normal(size=40)
    lr, eps = 1e-3, 1e-3

    def quadratic(w):
        return 0.5 * jnp.sum(jnp.asarray(d) * w * w)

    with jax.enable_x64(True):
        trace = jax.device_get(
            flows.run(
                quadratic,
                jnp.asarray(w0),
                flow="discrete",
                optimizer="rmsprop",
                lr=lr,
                steps=30,
                num_eigs=3,
                eps=eps,
            )
        )
    exact = np.sort(lr * d / (np.sqrt(trace.nu) + eps))[::-1][:4]
    np.testing.assert_allclose(trace.eigs[-1], exact[:3], rtol=1e-9)
    # the block's 4th Ritz value, recorded as eig_next, converges too (1e-9)
    np.testing.assert_allclose(trace.eig_next[-1], exact[3], rtol=1e-9)


@pytest.mark.parametrize(
    "optimizer, lr",
    [("scalar_rmsprop", 0.05), pytest.param("rmsprop", 0.02, marks=pytest.mark.slow)],
)
def test_rmsprop_central_flow_predicts_the_settled_edge(optimizer, lr):
    # On the cubic, (scalar) RMSProp settles on a period-2 orbit at its edge whose
    # oscillation the central flow's Sigma describes exactly (the gradient is quadratic in
    # x, so the second-order time average has no remainder): the prediction L(w) +
    # 1/2 <H, Sigma> and the state nu (the effective learning rate) against the discrete
    # run's means over its last 1000 of 2000 steps. Measured 6e-6 and 1e-12 for the loss;
    # tolerance 1e-3. The geometric mean of rmsprop's per-parameter rates includes the
    # oscillating coordinate: 2% there.
    kw = dict(optimizer=optimizer, lr=lr, num_eigs=2, beta2=0.9, eps=1e-3)
    with jax.enable_x64(True):
        w0 = jnp.array([0.1, 2.0, 1.0])
        central = jax.device_get(flows.run(_cubic, w0, flow="central", steps=300, **kw))
        discrete = jax.device_get(flows.run(_cubic, w0, flow="discrete", steps=2000, **kw))
    onset = flows.onset(central.eigs)
    assert onset is not None
    np.testing.assert_allclose(central.eigs[onset + 3 :, 0], 2.0, atol=5e-3)
    np.testing.assert_allclose(np.median(discrete.eigs[-1000:, 0]), 2.0, atol=0.05)
    np.testing.assert_allclose(central.predicted[-1], discrete.loss[-1000:].mean(), rtol=1e-3)
    lr_tol = 1e-3 if optimizer == "scalar_rmsprop" else 0.02
    np.testing.assert_allclose(central.lr_eff[-1], discrete.lr_eff[-1000:].mean(), rtol=lr_tol)
    # the oscillation carries most of the loss there: L(w) alone is far below the mean
    assert central.loss[-1] < 0.01 * central.predicted[-1]


def _heavy_ball_mean_loss(beta, mu=0.03, steps=6000, window=2000):
    """Heavy ball (v <- beta v + g, w <- w - lr v) at lr = 0.5 (1 + beta), so that its
    threshold (2 + 2 beta) / lr is 4, on 0.5 (1 + y) x^2 + (mu / 2) (y - 4)^2 from (0.1, 2),
    in plain NumPy: the mean loss over the last `window` steps and the final y, or None
    where it diverged."""
    lr = 0.5 * (1 + beta)
    x, y, vx, vy = 0.1, 2.0, 0.0, 0.0
    loss = np.empty(steps)
    for t in range(steps):
        loss[t] = 0.5 * (1 + y) * x * x + 0.5 * mu * (y - 4) ** 2
        vx, vy = beta * vx + (1 + y) * x, beta * vy + 0.5 * x * x + mu * (y - 4)
        x, y = x - lr * vx, y - lr * vy
        if not abs(x) < 1e6:
            return None
    return float(loss[-window:].mean()), y


def test_heavy_ball_departs_from_the_quasi_static_candidate_flow():
    """The measurement behind studies/central_flows.py's reason for leaving momentum out: the
    candidate flow (GD's central flow at threshold (2 + 2 beta) / lr = 4) puts y at 3 with a
    time-averaged loss of 4.5 mu = 0.135 whatever beta. GD (beta = 0) agrees (measured 0.134,
    tolerance 2%); heavy ball settles elsewhere (measured 0.114 at y = 3.69 for beta = 0.1,
    0.147 at y = 2.42 for beta = 0.2: more than 5% off) and diverges at beta = 0.3."""
    candidate = 4.5 * 0.03
    gd, _ = _heavy_ball_mean_loss(0.0)
    assert abs(gd / candidate - 1) < 0.02, gd
    for beta, y_expected in ((0.1, 3.69), (0.2, 2.42)):
        mean, y = _heavy_ball_mean_loss(beta)
        assert abs(mean / candidate - 1) > 0.05, (beta, mean)
        assert abs(y - y_expected) < 0.05, (beta, y)
    assert _heavy_ball_mean_loss(0.3) is None
