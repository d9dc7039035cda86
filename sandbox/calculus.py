"""Derivatives of scalar functions: gradients, Hessians and critical points.

`fn` is always a scalar function of a point x of shape [d], as in `landscapes`.
`gradient`, `hessian`, `gradient_norm`, `hessian_eigenvalues` and `hessian_eigenvalues_2d`
are pure and unjitted (callers jit). `critical_point_kind`, `newton_refine`, `check_grad`
and `top_curvature` are host-side checks that return Python or numpy values and compute in
float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sandbox.types import Array, ScalarFn

KINDS = ("minimum", "maximum", "saddle", "degenerate")


def gradient(fn: ScalarFn) -> ScalarFn:
    """x [d] -> gradient [d]."""
    return jax.grad(fn)


def hessian(fn: ScalarFn) -> ScalarFn:
    """x [d] -> Hessian [d, d]."""
    return jax.hessian(fn)


def gradient_norm(fn: ScalarFn, x: Array) -> Array:
    """Euclidean norm of the gradient of `fn` at x [d]; a scalar."""
    return jnp.linalg.norm(jax.grad(fn)(x))


def hessian_eigenvalues(fn: ScalarFn, x: Array) -> Array:
    """Eigenvalues of the Hessian of `fn` at x [d], ascending, [d]."""
    return jnp.linalg.eigvalsh(jax.hessian(fn)(x))


def hessian_eigenvalues_2d(fn: ScalarFn, x_Nx2: Array) -> tuple[Array, Array]:
    """(lambda_min [N], lambda_max [N]) of the Hessian of a 2-D `fn` at each of N points, in
    closed form: for [[a, b], [b, c]], (a + c) / 2 -+ hypot((a - c) / 2, b). Batched (one
    vmapped Hessian, no eigensolver), for maps of the Hessian over a box."""
    h_Nx2x2 = jax.vmap(jax.hessian(fn))(x_Nx2)
    a, b, c = h_Nx2x2[:, 0, 0], h_Nx2x2[:, 0, 1], h_Nx2x2[:, 1, 1]
    r = jnp.hypot(0.5 * (a - c), b)
    return 0.5 * (a + c) - r, 0.5 * (a + c) + r


def _as_point(x, name: str = "x") -> np.ndarray:
    x = np.asarray(jax.device_get(x), dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be a point of shape [d], got shape {x.shape}")
    return x


# Host-side checks below jit their work: op-by-op Hessians are slow, and each `fn` is
# compiled once (per shape and dtype) when the same function object is passed again.
_hessian_eigenvalues_jit = jax.jit(hessian_eigenvalues, static_argnums=0)


def critical_point_kind(fn: ScalarFn, x: Array, *, tol: float = 1e-6) -> str:
    """The kind of critical point x is, from the signs of the Hessian's eigenvalues.

    Computed in float64: near `tol` the verdict is sensitive to float32 rounding.
    It does not check that the gradient vanishes at x.

    Args:
        fn: scalar function of x [d].
        x: the point, [d] (numpy or jax).
        tol: an eigenvalue with |eig| <= tol * max(1, max |eig|) counts as zero.

    Returns:
        "minimum", "maximum", "saddle", or "degenerate" when any eigenvalue is zero.
    """
    x = _as_point(x)
    with jax.enable_x64(True):
        eig = np.asarray(jax.device_get(_hessian_eigenvalues_jit(fn, jnp.asarray(x))))
    if not np.all(np.isfinite(eig)):
        raise ValueError(f"the Hessian of `fn` at `x` = {x} is not finite: {eig}")
    if np.any(np.abs(eig) <= tol * max(1.0, np.abs(eig).max())):
        return "degenerate"
    if np.all(eig > 0):
        return "minimum"
    if np.all(eig < 0):
        return "maximum"
    return "saddle"


def _newton(fn: ScalarFn, x: Array, steps: int, tol: float) -> Array:
    """Newton's method on the gradient from x [d]; returns the last finite point [d]."""
    grad, hess = jax.grad(fn), jax.hessian(fn)

    def cond(state):
        i, x, step = state
        return (i < steps) & (step > tol * (1 + jnp.max(jnp.abs(x))))

    def body(state):
        i, x, _ = state
        # Pseudo-inverse: at a degenerate point (singular Hessian, zero gradient) the
        # step is 0 rather than NaN.
        dx = -jnp.linalg.pinv(hess(x)) @ grad(x)
        finite = jnp.all(jnp.isfinite(dx))
        # A non-finite step ends the loop (step 0) at the last finite point.
        return (
            i + 1,
            jnp.where(finite, x + dx, x),
            jnp.where(finite, jnp.max(jnp.abs(dx)), 0.0),
        )

    _, x, _ = jax.lax.while_loop(cond, body, (0, x, jnp.asarray(jnp.inf, x.dtype)))
    return x


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _newton_N(fn: ScalarFn, x_Nd: Array, steps: int, tol: float) -> Array:
    return jax.vmap(lambda x: _newton(fn, x, steps, tol), in_axes=0)(x_Nd)


def newton_refine(fn: ScalarFn, x: Array, *, steps: int = 50, tol: float = 1e-14) -> np.ndarray:
    """Refine an approximate critical point with Newton's method in float64.

    Each step solves H dx = -g (least squares, so a singular Hessian is safe). It stops
    when max |dx| <= tol * (1 + max |x|) or after `steps` steps, and does not report
    failure: check the gradient at the result.

    Args:
        fn: scalar function of x [d].
        x: a start [d], or a batch of starts [N, d].
        steps: most Newton steps.
        tol: relative step size at which to stop.

    Returns:
        The refined points, float64 numpy, same shape as `x`.
    """
    x = np.asarray(jax.device_get(x), dtype=np.float64)
    if x.ndim not in (1, 2):
        raise ValueError(f"`x` must have shape [d] or [N, d], got shape {x.shape}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"`steps` must be an integer >= 0, got {steps!r}")
    with jax.enable_x64(True):
        out_Nd = _newton_N(fn, jnp.asarray(x.reshape(-1, x.shape[-1])), steps, tol)
        out_Nd = np.asarray(jax.device_get(out_Nd))
    return out_Nd.reshape(x.shape)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _grad_error(fn: ScalarFn, x: Array, eps: float) -> Array:
    fd = jax.vmap(lambda e: (fn(x + e) - fn(x - e)) / (2 * eps), in_axes=0)(
        eps * jnp.eye(x.shape[0], dtype=x.dtype)
    )
    return jnp.max(jnp.abs(jax.grad(fn)(x) - fd))


def check_grad(fn: ScalarFn, x: Array, *, eps: float = 1e-6) -> float:
    """Max abs difference between `jax.grad(fn)` and central differences at x [d].

    Computed in float64. With eps = 1e-6 the difference error is about
    eps^2 |f'''| + 1e-16 |f| / eps, so expect ~1e-9 for a correct gradient of a
    function of moderate size.
    """
    x = _as_point(x)
    with jax.enable_x64(True):
        return float(_grad_error(fn, jnp.asarray(x), float(eps)))


def top_curvature(fn: ScalarFn, x_Kxd) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_max [K], its unit eigenvector [K, d]) of the Hessian at each of K points, float64."""
    with jax.enable_x64(True):
        hess = jax.jit(jax.vmap(jax.hessian(fn)))
        h_Kxdxd = np.asarray(hess(jnp.asarray(x_Kxd, jnp.float64)))
    eig_Kxd, vec_Kxdxd = np.linalg.eigh(h_Kxdxd)
    return eig_Kxd[:, -1], vec_Kxdxd[:, :, -1]
