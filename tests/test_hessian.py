"""Hessian spectra against the exact Hessian (`jax.hessian` + `numpy.linalg.eigh`) in float64."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sandbox import hessian

_RNG = np.random.default_rng(0)
_X_Nx4 = _RNG.normal(size=(8, 4))
_Y_Nx1 = _RNG.normal(size=(8, 1))
# A 4-8-1 tanh MLP at a random point (49 parameters): not a minimum, so H is indefinite.
_PARAMS = {
    "w1": _RNG.normal(size=(4, 8)),
    "b1": 0.1 * _RNG.normal(size=(1, 8)),
    "w2": _RNG.normal(size=(8, 1)),
    "b2": np.zeros((1, 1)),
}


def _mlp_loss(params):
    h_Nx8 = jnp.tanh(_X_Nx4 @ params["w1"] + params["b1"])
    return 0.5 * jnp.mean((h_Nx8 @ params["w2"] + params["b2"] - _Y_Nx1) ** 2)


def _params64():
    """The MLP parameters as float64 jax arrays; call inside `jax.enable_x64(True)`."""
    return jax.tree.map(jnp.asarray, _PARAMS)


@functools.cache
def _exact():
    """The MLP's Hessian [n, n] and its eigenvalues, descending [n], float64 numpy."""
    with jax.enable_x64(True):
        flat_n, unravel = ravel_pytree(_params64())
        H_nxn = np.asarray(jax.jit(jax.hessian(lambda f: _mlp_loss(unravel(f))))(flat_n))
    return H_nxn, np.linalg.eigvalsh(H_nxn)[::-1]


def _n():
    return _exact()[0].shape[0]


def test_mlp_hessian_is_indefinite():
    H_nxn, eig_n = _exact()
    assert H_nxn.shape == (49, 49)
    # The min-eigenvalue tests below mean something only if lambda_min < 0 < lambda_max.
    assert eig_n[-1] < -0.1 and eig_n[0] > 1.0


def test_hvp_equals_hessian_times_v(key):
    H_nxn, _ = _exact()
    with jax.enable_x64(True):
        params = _params64()
        flat_n, unravel = ravel_pytree(params)
        v_n = jax.random.normal(key, flat_n.shape, flat_n.dtype)
        Hv = jax.jit(functools.partial(hessian.hvp, _mlp_loss))(params, unravel(v_n))
        assert jax.tree.structure(Hv) == jax.tree.structure(params)
        # Both are exact to rounding in float64: only summation order differs.
        np.testing.assert_allclose(ravel_pytree(Hv)[0], H_nxn @ np.asarray(v_n), rtol=1e-11)


def test_top_eigenvalues_with_full_krylov_space_are_exact(key):
    _, eig_n = _exact()
    with jax.enable_x64(True):
        top_k = hessian.top_eigenvalues(_mlp_loss, _params64(), 3, key=key, num_iters=_n())
        assert top_k.shape == (3,) and top_k.dtype == jnp.float64
        # m = n: T is similar to H up to rounding, ~1e-15 relative with reorthogonalization.
        np.testing.assert_allclose(top_k, eig_n[:3], rtol=1e-8)


def test_top_eigenvalue_converges_well_below_the_dimension(key):
    _, eig_n = _exact()
    with jax.enable_x64(True):
        # 20 of 49 steps: the largest Ritz value is already within ~1e-15 (gap 4.1 vs 3.7).
        top_k = hessian.top_eigenvalues(_mlp_loss, _params64(), 1, key=key, num_iters=20)
        np.testing.assert_allclose(top_k, eig_n[:1], rtol=1e-6)
        # The default num_iters (20 for k = 1) gives the same run.
        np.testing.assert_allclose(
            hessian.top_eigenvalues(_mlp_loss, _params64(), 1, key=key), top_k, rtol=1e-14
        )


def test_host_and_lax_loops_compute_the_same_run(key):
    _, eig_n = _exact()
    with jax.enable_x64(True):
        params = _params64()
        runs = {
            loop: hessian.ritz(_mlp_loss, params, key=key, num_iters=_n(), loop=loop)
            for loop in ("lax", "host")
        }
        # Same start, same arithmetic, compiled as one loop or as one step: rounding only.
        np.testing.assert_allclose(runs["host"].values, runs["lax"].values, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(runs["host"].values, eig_n, rtol=1e-8, atol=1e-10)
        with pytest.raises(ValueError, match="`loop`"):
            hessian.ritz(_mlp_loss, params, key=key, num_iters=5, loop="python")
    assert hessian.default_loop() == ("host" if jax.default_backend() == "cpu" else "lax")


def test_leading_blocks_of_the_tridiagonal_are_the_shorter_runs(key):
    _, eig_n = _exact()
    with jax.enable_x64(True):
        params = _params64()
        alpha, beta = hessian.tridiagonal(_mlp_loss, params, key=key, num_iters=30)
        assert alpha.shape == (30,) and beta.shape == (29,)
        short = hessian.ritz(_mlp_loss, params, key=key, num_iters=12).values
        # Lanczos is a recurrence: 12 steps of a 30-step run are the 12-step run.
        np.testing.assert_allclose(
            hessian.ritz_values(alpha[:12], beta[:11]), short, rtol=1e-10, atol=1e-12
        )
        full = hessian.ritz_values(alpha, beta)
        assert abs(full[0] - eig_n[0]) <= abs(short[0] - eig_n[0]) + 1e-12
    with pytest.raises(ValueError, match="`alpha`"):
        hessian.ritz_values(np.ones(3), np.ones(3))


def test_min_and_extreme_eigenvalues_are_exact(key):
    _, eig_n = _exact()
    with jax.enable_x64(True):
        params = _params64()
        lam_min = hessian.min_eigenvalue(_mlp_loss, params, key=key, num_iters=_n())
        lam_max, lam_min2 = hessian.extreme_eigenvalues(_mlp_loss, params, key=key, num_iters=_n())
        # m = n: exact to rounding, relative to the spectral norm ~4.
        np.testing.assert_allclose(lam_min, eig_n[-1], rtol=1e-8)
        np.testing.assert_allclose([lam_max, lam_min2], eig_n[[0, -1]], rtol=1e-8)
        # With 20 steps both ends have converged to ~1e-13 on this spectrum.
        lam_max, lam_min = hessian.extreme_eigenvalues(_mlp_loss, params, key=key, num_iters=20)
        np.testing.assert_allclose([lam_max, lam_min], eig_n[[0, -1]], rtol=1e-6)


def test_converged_extremes_flags_the_ends_by_their_change(key):
    _, eig_n = _exact()
    with jax.enable_x64(True):
        params = _params64()
        # 2 x 20 steps: both ends exact to 1e-6 relative (see above), and flagged converged.
        e = hessian.converged_extremes(_mlp_loss, params, key=key, num_iters=20)
        np.testing.assert_allclose([e["lambda_max"], e["lambda_min"]], eig_n[[0, -1]], rtol=1e-6)
        assert e["converged"] == {"lambda_max": True, "lambda_min": True}
        # 2 x 1 steps: two Ritz values of 49; the one-step Ritz value (a Rayleigh quotient)
        # lies strictly inside the spectrum, so the ends still move: not both converged at 1e-6.
        e = hessian.converged_extremes(_mlp_loss, params, key=key, num_iters=1, tol=1e-6)
        assert e["lanczos_iters"] == 2 and not all(e["converged"].values())
        assert e["half"]["lambda_max"] == e["half"]["lambda_min"]  # one step: one Ritz value
        assert eig_n[-1] <= e["lambda_min"] < e["lambda_max"] <= eig_n[0]
    with pytest.raises(ValueError, match="`num_iters`"):
        hessian.converged_extremes(_mlp_loss, _PARAMS, key=key, num_iters=25)  # 50 > 49


def test_ritz_weights_sum_to_one(key):
    with jax.enable_x64(True):
        values_m, weights_m = hessian.ritz(_mlp_loss, _params64(), key=key, num_iters=20)
        assert values_m.shape == weights_m.shape == (20,)
        assert np.all(np.diff(values_m) <= 0)  # descending
        np.testing.assert_allclose(np.sum(weights_m), 1.0, rtol=1e-12)


_TRACE_PROBES = 500


def _trace():
    with jax.enable_x64(True):
        estimate, stderr = hessian.trace(
            _mlp_loss, _params64(), key=jax.random.key(1), num_probes=_TRACE_PROBES, batch=128
        )
        return float(estimate), float(stderr)


def test_trace_within_five_standard_errors():
    H_nxn, _ = _exact()
    estimate, stderr = _trace()
    assert 0 < stderr < 0.1 * abs(np.trace(H_nxn))
    assert abs(estimate - np.trace(H_nxn)) < 5 * stderr


def test_trace_standard_error_matches_rademacher_variance():
    H_nxn, _ = _exact()
    _, stderr = _trace()
    # Var[z^T H z] = 2 sum_{i != j} H_ij^2 for Rademacher z.
    var = 2 * (np.sum(H_nxn**2) - np.sum(np.diag(H_nxn) ** 2))
    # The sample std of 500 probes is within about 3% (one sigma, 1 / sqrt(2 P)) of the
    # true one; 20% is over six sigma.
    np.testing.assert_allclose(stderr, np.sqrt(var / _TRACE_PROBES), rtol=0.2)


def test_trace_does_not_depend_on_batch(key):
    with jax.enable_x64(True):
        ragged = hessian.trace(_mlp_loss, _params64(), key=key, num_probes=7, batch=3)
        whole = hessian.trace(_mlp_loss, _params64(), key=key, num_probes=7, batch=7)
        # The same 7 probes (the last group of 3 padded and masked): summation order only.
        np.testing.assert_allclose(ragged, whole, rtol=1e-12)


_SLQ = dict(num_probes=3, num_iters=10)


def test_density_moments_equal_exact_probe_moments():
    H_nxn, _ = _exact()
    key = jax.random.key(2)
    with jax.enable_x64(True):
        nodes_Pxm, weights_Pxm = hessian.density(_mlp_loss, _params64(), key=key, **_SLQ)
        nodes_Pxm, weights_Pxm = np.asarray(nodes_Pxm), np.asarray(weights_Pxm)
        v_Pxn = np.asarray(hessian._probes(key, _SLQ["num_probes"], _n(), jnp.float64))
    assert nodes_Pxm.shape == weights_Pxm.shape == (3, 10)
    np.testing.assert_allclose(np.linalg.norm(v_Pxn, axis=1), 1.0, rtol=1e-14)
    Hv_Pxn = v_Pxn
    for k in range(4):
        exact_P = np.sum(v_Pxn * Hv_Pxn, axis=1)  # v^T H^k v, |v| = 1
        slq_P = np.sum(weights_Pxm * nodes_Pxm**k, axis=1)
        # Gauss quadrature with m = 10 nodes is exact for k < 20; rounding only.
        np.testing.assert_allclose(slq_P, exact_P, rtol=1e-10, err_msg=f"moment {k}")
        Hv_Pxn = Hv_Pxn @ H_nxn


def test_trace_and_density_host_and_lax_loops_agree(key):
    with jax.enable_x64(True):
        params = _params64()
        tr = {
            loop: hessian.trace(_mlp_loss, params, key=key, num_probes=23, batch=5, loop=loop)
            for loop in ("lax", "host")
        }
        # Same probes, same arithmetic, grouped in one program or one call per group.
        np.testing.assert_allclose(tr["host"], tr["lax"], rtol=1e-10)
        den = {
            loop: hessian.density(_mlp_loss, params, key=key, num_probes=3, num_iters=10, loop=loop)
            for loop in ("lax", "host")
        }
        for h, x in zip(den["host"], den["lax"], strict=True):
            assert h.shape == (3, 10)
            np.testing.assert_allclose(h, x, rtol=1e-9, atol=1e-12)


def test_density_curve_integrates_to_one():
    with jax.enable_x64(True):
        nodes_Pxm, weights_Pxm = hessian.density(
            _mlp_loss, _params64(), key=jax.random.key(2), **_SLQ
        )
        nodes_Pxm, weights_Pxm = np.asarray(nodes_Pxm), np.asarray(weights_Pxm)
    sigma = 0.05
    grid_G = np.linspace(np.min(nodes_Pxm) - 10 * sigma, np.max(nodes_Pxm) + 10 * sigma, 4001)
    density_G = hessian.density_curve(nodes_Pxm, weights_Pxm, grid_G, sigma)
    assert density_G.shape == grid_G.shape and np.all(density_G >= 0)
    # Trapezoid on a grid 1/40 of sigma apart, tails beyond 10 sigma: error far below 1e-3.
    np.testing.assert_allclose(np.trapezoid(density_G, grid_G), 1.0, atol=1e-3)


# 0.5 x^T A x with A diagonal over a pytree of two leaves, eigenvalues with multiplicities:
# a Lanczos run from one vector sees only the 5 distinct values of 8, so the exact top 3
# (5, 5, 2) needs the restart after breakdown.
_A = {"a": np.array([[5.0, 2.0], [5.0, -1.0]]), "b": np.array([2.0, 0.5, -1.0, -3.0])}


def _quadratic(params):
    return 0.5 * (jnp.sum(_A["a"] * params["a"] ** 2) + jnp.sum(_A["b"] * params["b"] ** 2))


def test_quadratic_eigenvalues_with_multiplicities_are_exact(key):
    eig_n = np.sort(np.concatenate([x.ravel() for x in _A.values()]))[::-1]
    with jax.enable_x64(True):
        params = {"a": jnp.ones((2, 2)), "b": jnp.zeros(4)}  # H does not depend on the point
        n = eig_n.size
        top_k = hessian.top_eigenvalues(_quadratic, params, 3, key=key, num_iters=n)
        # Exact to rounding: the basis spans the whole space.
        np.testing.assert_allclose(top_k, [5.0, 5.0, 2.0], rtol=1e-12)
        np.testing.assert_allclose(
            hessian.ritz(_quadratic, params, key=key, num_iters=n).values, eig_n, atol=1e-12
        )
        lam_max, lam_min = hessian.extreme_eigenvalues(_quadratic, params, key=key, num_iters=n)
        np.testing.assert_allclose([lam_max, lam_min], [5.0, -3.0], rtol=1e-12)
        np.testing.assert_allclose(
            hessian.min_eigenvalue(_quadratic, params, key=key, num_iters=n), -3.0, rtol=1e-12
        )


def test_lanczos_restarts_after_breakdown():
    a_n = np.concatenate([x.ravel() for x in _A.values()])
    with jax.enable_x64(True):
        run = jax.jit(lambda v: hessian.lanczos(lambda x: a_n * x, v, a_n.size))
        alpha_m, beta_m1, V_mxn = (np.asarray(x) for x in run(jnp.ones(a_n.size)))
    # The Krylov space of ones has dimension 5 (distinct values): beta 5 -> 6 is set to 0,
    # and the basis goes on, orthonormal, to span everything.
    assert beta_m1[4] == 0 and np.all(np.delete(beta_m1, 4) > 1e-3)
    np.testing.assert_allclose(V_mxn @ V_mxn.T, np.eye(a_n.size), atol=1e-13)
    T_mxm = np.diag(alpha_m) + np.diag(beta_m1, 1) + np.diag(beta_m1, -1)
    np.testing.assert_allclose(np.linalg.eigvalsh(T_mxm), np.sort(a_n), atol=1e-12)


def test_lanczos_basis_is_orthonormal_and_projects_the_matrix(key):
    with jax.enable_x64(True):
        M_nxn = jax.random.normal(key, (60, 60), jnp.float64)
        A_nxn = M_nxn + M_nxn.T
        v0_n = jnp.ones(60)
        run = jax.jit(lambda A, v: hessian.lanczos(lambda x: A @ x, v, 30))
        alpha_m, beta_m1, V_mxn = run(A_nxn, v0_n)
        assert alpha_m.shape == (30,) and beta_m1.shape == (29,) and V_mxn.shape == (30, 60)
        # Full reorthogonalization: orthonormal to rounding, even with converged Ritz values.
        np.testing.assert_allclose(V_mxn @ V_mxn.T, np.eye(30), atol=1e-13)
        np.testing.assert_allclose(V_mxn[0], v0_n / np.sqrt(60), rtol=1e-14)
        T_mxm = np.diag(alpha_m) + np.diag(beta_m1, 1) + np.diag(beta_m1, -1)
        # |A| ~ 2 sqrt(60 * 2) ~ 22: entries of V A V^T beyond the tridiagonal are rounding.
        np.testing.assert_allclose(V_mxn @ A_nxn @ V_mxn.T, T_mxm, atol=1e-12)


def test_lanczos_loop_is_not_unrolled():
    A_nxn = jnp.diag(jnp.arange(60.0))
    v0_n = jnp.ones(60)
    num_eqns = []
    for num_iters in (5, 50):
        jaxpr = jax.make_jaxpr(lambda v, m=num_iters: hessian.lanczos(lambda x: A_nxn @ x, v, m))(
            v0_n
        ).jaxpr
        assert {e.primitive.name for e in jaxpr.eqns} & {"while", "scan"}
        num_eqns.append(len(jaxpr.eqns))
    assert num_eqns[0] == num_eqns[1]


def test_float32_params_stay_float32_and_compile_once(key):
    _, eig_n = _exact()
    traces = []
    # float32 copies of the data: with jax 0.10.2, a jitted function that closes over a
    # numpy float64 array and was traced under `enable_x64` can fail to lower (a
    # float32 - float64 subtract) when traced again without it.
    x_Nx4, y_Nx1 = _X_Nx4.astype(np.float32), _Y_Nx1.astype(np.float32)

    def loss(params):
        traces.append(1)
        h_Nx8 = jnp.tanh(x_Nx4 @ params["w1"] + params["b1"])
        return 0.5 * jnp.mean((h_Nx8 @ params["w2"] + params["b2"] - y_Nx1) ** 2)

    params32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _PARAMS)
    for _ in range(2):
        lam_max, lam_min = hessian.extreme_eigenvalues(loss, params32, key=key, num_iters=30)
    assert lam_max.dtype == lam_min.dtype == jnp.float32
    assert len(traces) == 1  # the second call reuses the compiled program
    # float32 rounding: the errors are ~3e-7 here (spectral norm ~4); 1e-5 leaves room.
    np.testing.assert_allclose([lam_max, lam_min], eig_n[[0, -1]], atol=1e-5)


_P32 = {"w": np.zeros(3, np.float32)}


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda k: hessian.top_eigenvalues(_quadratic, _P32, 0, key=k), "`k`"),
        (lambda k: hessian.top_eigenvalues(_quadratic, _P32, 4, key=k), "`k`"),
        (lambda k: hessian.top_eigenvalues(_quadratic, _P32, 2, key=k, num_iters=1), "`num_iters`"),
        (lambda k: hessian.top_eigenvalues(_quadratic, _P32, 1, key=k, num_iters=4), "`num_iters`"),
        (lambda k: hessian.ritz(_quadratic, _P32, key=k, num_iters=0), "`num_iters`"),
        (lambda k: hessian.min_eigenvalue(_quadratic, _P32, key=k, num_iters=2.0), "`num_iters`"),
        (lambda k: hessian.extreme_eigenvalues(_quadratic, {}, key=k, num_iters=2), "`params`"),
        (lambda k: hessian.trace(_quadratic, _P32, key=k, num_probes=1), "`num_probes`"),
        (lambda k: hessian.trace(_quadratic, _P32, key=k, batch=0), "`batch`"),
        (lambda k: hessian.density(_quadratic, _P32, key=k, num_probes=0), "`num_probes`"),
        (lambda k: hessian.density(_quadratic, _P32, key=k, num_iters=5), "`num_iters`"),
        (lambda k: hessian.lanczos(lambda v: v, jnp.ones((2, 2)), 1), "`v0_n`"),
        (lambda k: hessian.lanczos(lambda v: v, jnp.ones(3), 0), "`num_iters`"),
        (lambda k: hessian.density_curve(np.ones((2, 3)), np.ones(3), np.ones(5), 0.1), "`nodes`"),
        (lambda k: hessian.density_curve(np.ones((2, 3)), np.ones((2, 3)), [0.0], 0.0), "`sigma`"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(key, call, name):
    with pytest.raises(ValueError, match=name):
        call(key)


# ----------------------------------------------------------------------------- blocks


def _block_indices(mask) -> np.ndarray:
    """The flat indices (ravel_pytree order) of a mask's parameters."""
    flat, _ = ravel_pytree(jax.tree.map(lambda p, m: np.broadcast_to(m, p.shape), _PARAMS, mask))
    return np.flatnonzero(np.asarray(flat, bool))


_BLOCKS = {
    "layer 1 weights": {"w1": True, "b1": False, "w2": False, "b2": False},  # 32
    "output layer": {"w1": False, "b1": False, "w2": True, "b2": True},  # 9
    "biases": {"w1": False, "b1": True, "w2": False, "b2": True},  # 9
}


@pytest.mark.parametrize(
    "name, loop", [("layer 1 weights", "lax"), ("output layer", "host"), ("biases", "host")]
)
def test_block_spectrum_equals_eigh_of_the_sub_matrix(name, loop, key):
    H_nxn, _ = _exact()
    idx = _block_indices(_BLOCKS[name])
    H_bb = H_nxn[np.ix_(idx, idx)]
    eig_b = np.linalg.eigvalsh(H_bb)[::-1]
    with jax.enable_x64(True):
        params = _params64()
        lam_max, lam_min = hessian.extreme_eigenvalues(
            _mlp_loss, params, key=key, num_iters=len(idx), loop=loop, mask=_BLOCKS[name]
        )
        top2 = hessian.top_eigenvalues(
            _mlp_loss, params, 2, key=key, num_iters=len(idx), loop=loop, mask=_BLOCKS[name]
        )
        nodes, weights = hessian.density(
            _mlp_loss,
            params,
            key=key,
            num_probes=2,
            num_iters=len(idx),
            loop=loop,
            mask=_BLOCKS[name],
        )
    # A Lanczos run as long as the block is a complete basis of it: the extreme Ritz values
    # are H_BB's extreme eigenvalues to float64 rounding (1e-9 of the spectrum's scale), and
    # no eigenvalue of the rest of H (or a spurious 0) appears.
    scale = np.abs(eig_b).max()
    np.testing.assert_allclose([lam_max, lam_min], [eig_b[0], eig_b[-1]], atol=1e-9 * scale)
    np.testing.assert_allclose(top2, eig_b[:2], atol=1e-9 * scale)
    # SLQ on the block: each probe's nodes are eigenvalues of H_BB, and its quadrature
    # reproduces the probe's first moments exactly: sum_j w_j theta_j = tr(H_BB) / |B| in
    # expectation; here the nodes are checked against the spectrum.
    for nodes_m in np.asarray(nodes):
        assert np.abs(nodes_m[:, None] - eig_b[None, :]).min(axis=1).max() < 1e-8 * scale
    np.testing.assert_allclose(np.asarray(weights).sum(axis=1), 1.0, atol=1e-12)


def test_block_trace_is_the_sub_matrix_trace_within_its_error(key):
    H_nxn, _ = _exact()
    idx = _block_indices(_BLOCKS["layer 1 weights"])
    exact = np.trace(H_nxn[np.ix_(idx, idx)])
    with jax.enable_x64(True):
        est, se = hessian.trace(
            _mlp_loss,
            _params64(),
            key=key,
            num_probes=400,
            batch=50,
            mask=_BLOCKS["layer 1 weights"],
        )
    # Hutchinson is unbiased: within 4 standard errors (a 6e-5 chance of failing by bad luck
    # for a normal mean), and the error is small next to the trace of the whole H.
    assert abs(float(est) - exact) < 4 * float(se)
    assert float(se) < 0.1 * abs(np.trace(H_nxn))


@pytest.mark.parametrize(
    "loop, max_bytes",
    # One block's basis: 9 steps x 49 float64 parameters (8 bytes each).
    [("lax", 2**30), ("lax", 9 * 49 * 8 + 1), ("host", 2**30)],
    ids=["lax, all blocks at once", "lax, one block at a time", "host"],
)
def test_blocks_batched_equal_one_block_at_a_time(loop, max_bytes, key):
    with jax.enable_x64(True):
        params = _params64()
        both = hessian.blocks(
            _mlp_loss, params, _BLOCKS, key=key, num_iters=9, loop=loop, max_bytes=max_bytes
        )
        for name, mask in _BLOCKS.items():
            lam_max, lam_min = hessian.extreme_eigenvalues(
                _mlp_loss, params, key=key, num_iters=9, loop=loop, mask=mask
            )
            tr, _ = hessian.trace(_mlp_loss, params, key=key, num_probes=20, loop=loop, mask=mask)
            assert both[name]["size"] == len(_block_indices(mask))
            np.testing.assert_allclose(
                [both[name]["lambda_max"], both[name]["lambda_min"], both[name]["trace"]],
                [lam_max, lam_min, tr],
                rtol=1e-10,
                atol=1e-12,  # lambda_min of the 32-weight block is 0 to rounding
            )


def test_block_mask_selects_by_path():
    mask = hessian.block_mask(_PARAMS, lambda path: path.startswith("b"))
    assert mask == {"w1": False, "b1": True, "w2": False, "b2": True}


@pytest.mark.parametrize(
    "mask, match",
    [
        ({"w1": True}, "`mask` must have the structure"),
        ({"w1": False, "b1": False, "w2": False, "b2": False}, "`mask` selects no parameter"),
        ({"w1": np.ones(3, bool), "b1": False, "w2": False, "b2": False}, "`mask` leaves"),
        ({"w1": 1, "b1": False, "w2": False, "b2": False}, "`mask` leaves"),
    ],
)
def test_bad_masks_are_named(mask, match, key):
    with pytest.raises(ValueError, match=match):
        hessian.extreme_eigenvalues(_mlp_loss, _params64(), key=key, mask=mask)


def test_more_steps_or_eigenvalues_than_the_block_has_are_refused(key):
    mask = _BLOCKS["biases"]  # 9 parameters
    with pytest.raises(ValueError, match="`num_iters`"):
        hessian.extreme_eigenvalues(_mlp_loss, _params64(), key=key, num_iters=10, mask=mask)
    with pytest.raises(ValueError, match="`k`"):
        hessian.top_eigenvalues(_mlp_loss, _params64(), 10, key=key, mask=mask)
    with pytest.raises(ValueError, match="`num_iters`"):
        hessian.blocks(_mlp_loss, _params64(), _BLOCKS, key=key, num_iters=10)
    with pytest.raises(ValueError, match="`masks`"):
        hessian.blocks(_mlp_loss, _params64(), {}, key=key)


def test_outliers_of_a_spiked_spectrum():
    # A diagonal "Hessian" with a bulk uniform on [0, 1] (n = 2000) and C = 5 outliers at
    # 10..50: SLQ's heavy nodes stay in the bulk, so the edge is <= 1, exactly the 5
    # outliers lie above it, and lambda_C / lambda_{C+1} = 10 / (the bulk's top, ~1).
    rng = np.random.default_rng(0)
    eig = np.concatenate([[50.0, 40.0, 30.0, 20.0, 10.0], rng.uniform(0, 1, 1995)])

    def loss(w):
        return 0.5 * jnp.sum(jnp.asarray(eig, w.dtype) * w**2)

    w = jnp.zeros(len(eig), jnp.float32)
    key = jax.random.key(0)
    top = hessian.top_eigenvalues(loss, w, 12, key=key, num_iters=40, loop="lax")
    nodes, weights = hessian.density(loss, w, key=key, num_probes=2, num_iters=30, loop="lax")
    out = hessian.outliers(top, nodes, weights, 5)
    assert 0.9 < out["bulk_edge"] <= 1.0 + 1e-5
    assert out["count"] == 5 and not out["count_capped"]
    # The bulk's top converges slowly in Lanczos (a dense edge): lambda_6 within 1% after 40
    # steps.
    assert out["gap_ratio_C"] == pytest.approx(10 / np.sort(eig)[-6], rel=1e-2)
    with pytest.raises(ValueError, match="`top_values`"):
        hessian.outliers(top[::-1], nodes, weights, 5)
    with pytest.raises(ValueError, match="`min_weight`.*no node marks the bulk"):
        hessian.bulk_edge(nodes, weights, min_weight=0.999)
    with pytest.raises(ValueError, match="`min_weight` must be in"):
        hessian.bulk_edge(nodes, weights, min_weight=0.0)
    with pytest.raises(ValueError, match="`nodes` and `weights`"):
        hessian.bulk_edge(nodes, weights[:, :-1])
    with pytest.raises(ValueError, match="`nodes` and `weights` must hold at least one"):
        hessian.bulk_edge(np.zeros((0, 0)), np.zeros((0, 0)))
    with pytest.raises(ValueError, match="`nodes` and `weights` must be finite"):
        hessian.bulk_edge(np.where(np.arange(nodes.shape[1]) == 0, np.nan, nodes), weights)
    with pytest.raises(ValueError, match="`top_values` must be a non-empty 1-D array of finite"):
        hessian.outliers(np.concatenate([[np.nan], top[1:]]), nodes, weights, 5)
