"""Gradients, Hessians, classification and Newton refinement on known cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox import calculus


def _poly(x):
    return x[0] ** 2 * x[1] + jnp.sin(x[1])


def test_gradient_and_hessian_closed_form():
    with jax.enable_x64(True):
        x = jnp.array([0.7, -1.3])
        a, b = 0.7, -1.3
        np.testing.assert_allclose(
            calculus.gradient(_poly)(x), [2 * a * b, a**2 + np.cos(b)], rtol=1e-12
        )
        np.testing.assert_allclose(
            calculus.hessian(_poly)(x),
            [[2 * b, 2 * a], [2 * a, -np.sin(b)]],
            rtol=1e-12,
        )
        np.testing.assert_allclose(
            calculus.gradient_norm(_poly, x),
            np.hypot(2 * a * b, a**2 + np.cos(b)),
            rtol=1e-12,
        )
        eig = calculus.hessian_eigenvalues(_poly, x)
        assert eig.shape == (2,) and eig[0] <= eig[1]


def test_hessian_eigenvalues_2d_are_numpys_eigenvalues_of_the_closed_form_hessian():
    # The Hessian of _poly is [[2y, 2x], [2x, -sin y]]: its eigenvalues by numpy's
    # eigensolver at 50 points, in float64 (rtol 1e-12: both are exact to rounding).
    with jax.enable_x64(True):
        x_Nx2 = np.random.default_rng(0).uniform(-3, 3, (50, 2))
        lo, hi = jax.jit(lambda x: calculus.hessian_eigenvalues_2d(_poly, x))(x_Nx2)
        a, b = x_Nx2[:, 0], x_Nx2[:, 1]
        h = np.stack([np.stack([2 * b, 2 * a], -1), np.stack([2 * a, -np.sin(b)], -1)], -2)
        expected = np.linalg.eigvalsh(h)
        np.testing.assert_allclose(lo, expected[:, 0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(hi, expected[:, 1], rtol=1e-12, atol=1e-12)


def test_pure_functions_jit_in_float32():
    x = jnp.array([0.7, -1.3], dtype=jnp.float32)
    norm = jax.jit(lambda x: calculus.gradient_norm(_poly, x))(x)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(norm, np.hypot(2 * 0.7 * -1.3, 0.49 + np.cos(-1.3)), rtol=1e-5)


@pytest.mark.parametrize(
    "fn, x, expected",
    [
        (lambda x: x[0] ** 2 + x[1] ** 2, [0.0, 0.0], "minimum"),
        (lambda x: -(x[0] ** 2) - 3 * x[1] ** 2, [0.0, 0.0], "maximum"),
        (lambda x: x[0] ** 2 - x[1] ** 2, [0.0, 0.0], "saddle"),
        (lambda x: x[0] ** 2 + x[1] ** 2 - x[2] ** 2, [0.0, 0.0, 0.0], "saddle"),
        (lambda x: x[0] ** 3 - 3 * x[0] * x[1] ** 2, [0.0, 0.0], "degenerate"),
        (lambda x: x[0] ** 4 + x[1] ** 2, [0.0, 0.0], "degenerate"),
        (lambda x: jnp.cos(x[0]) * jnp.cos(x[1]), [np.pi, 0.0], "minimum"),
        (lambda x: jnp.cos(x[0]) * jnp.cos(x[1]), [np.pi / 2, np.pi / 2], "saddle"),
        (lambda x: x[0] ** 2 * jnp.sin(x[0]), [0.0], "degenerate"),
    ],
)
def test_critical_point_kind_known_cases(fn, x, expected):
    for point in (np.asarray(x), jnp.asarray(x, dtype=jnp.float32)):
        kind = calculus.critical_point_kind(fn, point)
        assert type(kind) is str
        assert kind == expected


def test_critical_point_kind_tol():
    def fn(x):
        return x[0] ** 2 + 1e-8 * x[1] ** 2

    assert calculus.critical_point_kind(fn, np.zeros(2)) == "degenerate"  # tol = 1e-6
    assert calculus.critical_point_kind(fn, np.zeros(2), tol=1e-10) == "minimum"


def test_critical_point_kind_rejects_batches():
    with pytest.raises(ValueError, match="`x`"):
        calculus.critical_point_kind(lambda x: jnp.sum(x**2), np.zeros((3, 2)))


def _smooth(x):
    return jnp.sum(jnp.sin(x) * jnp.exp(0.3 * x)) + jnp.log1p(x @ x)


def _himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


@pytest.mark.parametrize("fn", [_smooth, _himmelblau, _poly])
def test_check_grad_small_for_smooth_functions(fn):
    rng = np.random.default_rng(0)
    for x in rng.uniform(-2.0, 2.0, size=(5, 2)):
        assert calculus.check_grad(fn, x) < 1e-7


@jax.custom_jvp
def _bad_sin(x):
    return jnp.sin(x)


@_bad_sin.defjvp
def _bad_sin_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.sin(x), 2 * jnp.cos(x) * t  # wrong on purpose: twice the derivative


def test_check_grad_catches_wrong_custom_jvp():
    def fn(x):
        return jnp.sum(_bad_sin(x))

    # The error is max |cos(x)| = cos(0.3) = 0.955.
    err = calculus.check_grad(fn, np.array([0.3, -0.7]))
    np.testing.assert_allclose(err, np.cos(0.3), rtol=1e-6)


A = np.array([[3.0, 1.0], [1.0, 2.0]])
B = np.array([1.0, -1.0])


def _quadratic(x):
    return 0.5 * x @ (A @ x) - B @ x


def test_newton_refine_quadratic_in_one_step():
    x_star = np.linalg.solve(A, B)
    x = calculus.newton_refine(_quadratic, np.array([5.0, -7.0]), steps=1)
    assert x.dtype == np.float64 and x.shape == (2,)
    np.testing.assert_allclose(x, x_star, rtol=1e-12, atol=1e-14)
    # A batch [N, d] refines row by row.
    starts = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32)
    x_Nd = calculus.newton_refine(_quadratic, starts, steps=1)
    assert x_Nd.dtype == np.float64 and x_Nd.shape == (4, 2)
    np.testing.assert_allclose(x_Nd, np.broadcast_to(x_star, (4, 2)), atol=1e-12)


def test_newton_refine_converges_quadratically_near_a_minimum():
    def double_well(x):
        return (x[0] ** 2 - 1) ** 2 + x[1] ** 2

    x = calculus.newton_refine(double_well, np.array([0.8, 0.3]))
    np.testing.assert_allclose(x, [1.0, 0.0], rtol=0, atol=1e-15)


def test_newton_refine_is_safe_at_a_degenerate_point():
    def monkey(x):
        return x[0] ** 3 - 3 * x[0] * x[1] ** 2

    # Zero gradient, zero Hessian: the pseudo-inverse step is 0, not NaN.
    np.testing.assert_array_equal(calculus.newton_refine(monkey, np.zeros(2)), [0, 0])


def test_newton_refine_rejects_bad_arguments():
    with pytest.raises(ValueError, match="`x`"):
        calculus.newton_refine(_quadratic, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="`steps`"):
        calculus.newton_refine(_quadratic, np.zeros(2), steps=-1)


def test_top_curvature_of_a_rotated_quadratic():
    # 0.5 x^T A x with A = R diag(1, 9) R^T: lambda_max 9 along R's second column.
    c, s = np.cos(0.3), np.sin(0.3)
    R = np.array([[c, -s], [s, c]])
    A = R @ np.diag([1.0, 9.0]) @ R.T

    def fn(x):
        return 0.5 * x @ jnp.asarray(A, x.dtype) @ x

    lam_K, v_Kx2 = calculus.top_curvature(fn, np.array([[0.0, 0.0], [1.0, -2.0]]))
    np.testing.assert_allclose(lam_K, [9.0, 9.0], rtol=1e-12)  # float64: to rounding
    np.testing.assert_allclose(np.abs(v_Kx2 @ R[:, 1]), [1.0, 1.0], rtol=1e-12)
