"""Hessian spectra of a scalar loss of a parameter pytree: HVPs, Lanczos, Hutchinson, SLQ.

`loss` is always a scalar function of a parameter pytree (`loss(params) -> scalar`) that
closes over its data. H is its Hessian at `params`, n the number of parameters. Shape
suffixes: n parameters, m Lanczos iterations, P probes, G grid points.

The math, briefly:

- Hessian-vector product (`hvp`): H v = d/dt grad(loss)(params + t v) at t = 0, computed
  forward-over-reverse (`jax.jvp` of `jax.grad`) without ever forming H.
- Lanczos (`lanczos`): from a unit v_0, builds an orthonormal basis V = [v_0 .. v_{m-1}] of
  the Krylov space span{v_0, H v_0, .., H^{m-1} v_0} in which T = V H V^T is tridiagonal
  (diagonal alpha [m], off-diagonal beta [m-1]). Each new vector is orthogonalized against
  every stored one, twice (classical Gram-Schmidt twice is enough, Giraud et al. 2005):
  without it, rounding makes copies of converged eigenvalues ("ghosts") appear. When the
  Krylov space is exhausted (beta ~ 0: v_0 lies in an invariant subspace, e.g. H has
  repeated eigenvalues) the run restarts from a random vector orthogonal to V and records
  beta = 0, so T stays V H V^T and later steps find the missing eigenvalues and
  multiplicities.
- Ritz values (`ritz`): the eigenvalues theta of T, with weights w = (first components of
  T's eigenvectors)^2. The extreme ones converge first, roughly geometrically in m at a rate
  set by the gap to the rest of the spectrum: `top_eigenvalues`, `min_eigenvalue` and
  `extreme_eigenvalues` read them off one run.
- Hutchinson (`trace`): for Rademacher z (entries +-1), E[z^T H z] = tr H and
  Var[z^T H z] = 2 sum_{i != j} H_ij^2; the mean over P probes has standard error
  sqrt(Var / P), estimated by the sample standard deviation / sqrt(P).
- Stochastic Lanczos quadrature (`density`, Ghorbani et al. 2019, as in PyHessian): for a
  random unit v, the Ritz values and weights of the Lanczos run from v are the nodes and
  weights of the Gauss quadrature of the spectral measure sum_i (v . u_i)^2 delta(lambda_i):
  sum_j w_j theta_j^k = v^T H^k v exactly for k < 2m. Averaged over probes, and smoothed by
  a Gaussian (`density_curve`), this estimates the eigenvalue density of H.

Costs: one HVP costs about 2-3 forward+backward passes of the loss. `top_eigenvalues`,
`min_eigenvalue`, `extreme_eigenvalues` and `ritz` take num_iters HVPs, `trace` num_probes,
`density` num_probes x num_iters. Lanczos keeps its basis, m x n numbers (64 iterations of
ResNet-56's 0.85 M parameters: 220 MB in float32), and orthogonalizes in 4 m n
multiply-adds per step, small next to an HVP. `trace` holds `batch` HVPs at a time.
On CPU, XLA runs a network's HVP inside a loop body several times slower than outside one
(jax-ml/jax#12868): a ResNet-20 HVP took 8x its standalone time inside a `fori_loop`. The
functions therefore loop from Python on CPU (`default_loop`; `loop="lax"` forces the single
compiled loop): ResNet-20, 256 digits, 8 Lanczos steps: 4.7 s against 33 s, the same
eigenvalues to 1e-7. Each step calls two compiled programs: the HVP of `loss` (one per
`loss` object, shared by every Lanczos length, block mask, trace probe and SLQ probe) and
the Lanczos update, which does not depend on `loss`. Compiling a network's HVP costs
seconds, so the functions called on one `loss` compile it once.

Unlike most of `sandbox/`, the functions that take `loss` jit themselves: each runs its whole
loop as one compiled program (a `lax` loop, never unrolled in Python), except on CPU, where
they call the compiled HVP and update per iteration (`default_loop`). `loss` is a static
argument of those jits, so pass the same function object to reuse the compiled program; a
new lambda per call compiles again. Everything is computed in the dtype of `params`.

    def loss(params):
        logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    top_k = hessian.top_eigenvalues(loss, params, 5, key=jax.random.key(0))     # [5]
    lam_max, lam_min = hessian.extreme_eigenvalues(loss, params, key=key, num_iters=64)
    tr, tr_se = hessian.trace(loss, params, key=key, num_probes=100, batch=10)
    nodes_Pxm, weights_Pxm = hessian.density(loss, params, key=key)
    density_G = hessian.density_curve(nodes_Pxm, weights_Pxm, grid_G, sigma=0.01)

Blocks (per-layer Hessians): every function takes `mask=`, a pytree like `params` of bools
(`block_mask(params, select)` builds one from the leaves' paths), and then works on the
sub-matrix H_BB of the selected parameters: its Lanczos runs start, restart and stay in the
block's coordinates (the operator v -> M H M v, M the 0/1 diagonal), Hutchinson and SLQ
probes are zero outside it. `blocks` gives lambda_max, lambda_min and the trace of many
blocks at once.

    stage_1 = hessian.block_mask(params, lambda path: path.startswith("stage_1/"))
    lam_max, lam_min = hessian.extreme_eigenvalues(loss, params, key=key, mask=stage_1)
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from sandbox import checks
from sandbox.types import Array, Key, PyTree

Loss = Callable[[PyTree], Array]  # params pytree -> scalar
Matvec = Callable[[Array], Array]  # [n] -> [n]

# Default Lanczos iterations where the caller gives none (capped at the dimension); the
# basis is then 64 x n. Whether the values asked for have converged is for the caller to
# check, by a run with more.
DEFAULT_ITERS = 64
# The basis's dot products in full float32: on GPUs XLA's default precision may round
# float32 matmul inputs to TF32 (10-bit mantissa), which would leave the basis orthogonal
# only to ~1e-3.
_HIGHEST = lax.Precision.HIGHEST


class Tridiagonal(NamedTuple):
    """A Lanczos run: T = basis H basis^T is tridiagonal.

    Attributes:
      alpha: [m] diagonal of T.
      beta: [m-1] off-diagonal of T (0 where the run restarted after a breakdown).
      basis: [m, n] orthonormal rows v_0 .. v_{m-1}.
    """

    alpha: Array
    beta: Array
    basis: Array


class Ritz(NamedTuple):
    """Ritz values and weights of one Lanczos run.

    Attributes:
      values: [m] eigenvalues of T, descending.
      weights: [m] squared first components of T's eigenvectors, in the same order; they
        sum to 1.
    """

    values: Array
    weights: Array


def hvp(loss: Loss, params: PyTree, v: PyTree) -> PyTree:
    """H v: the Hessian of `loss` at `params` times `v`, a pytree like `params`.

    Forward-over-reverse: the JVP of the gradient, about 2-3 forward+backward passes.
    """
    return jax.jvp(jax.grad(loss), (params,), (v,))[1]


def dimension(params: PyTree, name: str = "params") -> int:
    """The number of parameters n of `params`; ValueError naming `name` (the caller's argument)
    for an empty pytree, a pytree of no parameters, or one with a leaf that is not floating
    point."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError(f"`{name}` must have at least one leaf, got an empty pytree")
    if not all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves):
        kinds = ", ".join(sorted({str(jnp.result_type(x)) for x in leaves}))
        raise ValueError(f"`{name}` must have floating-point leaves only, got {kinds}")
    n = sum(math.prod(jnp.shape(x)) for x in leaves)
    if n == 0:
        raise ValueError(f"`{name}` must have at least one parameter, got 0")
    return n


def block_mask(params: PyTree, select: Callable[[str], bool]) -> PyTree:
    """A block of parameters for the `mask=` of every function here: True on each leaf of
    `params` whose path `select` accepts, False elsewhere.

    Paths are the leaves' keys joined by "/", as `jax.tree_util.keystr` names them without
    brackets and quotes: "stage_1/block_0/conv_1/kernel" for a Flax parameter dict.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: bool(select(_path(path))), params)


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _block(params: PyTree, mask: PyTree | None) -> tuple[int, Array | None]:
    """(n, mask_n): the block's size and its 0/1 vector in `ravel_pytree` order (None and the
    parameter count without a mask). Refuses a mask of another structure, or an empty one."""
    n = dimension(params)
    if mask is None:
        return n, None
    p_leaves, p_tree = jax.tree.flatten(params)
    try:
        m_leaves = p_tree.flatten_up_to(mask)
    except (ValueError, TypeError) as e:
        raise ValueError(f"`mask` must have the structure of `params`: {e}") from None
    parts = []
    for p, m in zip(p_leaves, m_leaves, strict=True):
        m = np.asarray(m)
        if m.dtype != np.bool_ or (m.shape and m.shape != np.shape(p)):
            raise ValueError(
                f"`mask` leaves must be bools or bool arrays of their leaf's shape, got "
                f"{m.dtype} {m.shape} for a leaf of shape {np.shape(p)}"
            )
        parts.append(np.broadcast_to(m, np.shape(p)).ravel())
    mask_np = np.concatenate(parts)
    size = int(mask_np.sum())
    if size == 0:
        raise ValueError("`mask` selects no parameter: the block is empty")
    dtype = ravel_pytree(params)[0].dtype
    return size, jnp.asarray(mask_np, dtype)


def project_out(w: Array, V_mxn: Array) -> Array:
    """w minus its projection on the span of the rows of V (orthonormal, or zero rows), done
    twice: classical Gram-Schmidt twice is orthogonal to rounding. w is a vector [n] (the
    Lanczos steps) or a block of columns [n, b] (the block eigensolver of `flows`)."""
    for _ in range(2):
        coef = jnp.matmul(V_mxn, w, precision=_HIGHEST)  # [m] or [m, b]
        if w.ndim == 1:
            w = w - jnp.matmul(coef, V_mxn, precision=_HIGHEST)
        else:
            w = w - jnp.matmul(V_mxn.T, coef, precision=_HIGHEST)
    return w


def lanczos(
    matvec: Matvec,
    v0_n: Array,
    num_iters: int,
    *,
    tol: float | None = None,
    mask_n: Array | None = None,
) -> Tridiagonal:
    """Lanczos with full reorthogonalization, in one `lax.fori_loop`.

    On breakdown (the new residual has norm <= tol * the largest |H v| seen, so the Krylov
    space is invariant) the run continues from a random vector orthogonal to the basis and
    records beta = 0: T stays the projection of H on the basis, block tridiagonal.

    Args:
      matvec: v [n] -> H v [n], H symmetric.
      v0_n: the start [n], any nonzero norm (it is normalized).
      num_iters: m, the number of steps and basis vectors, 1 <= m <= n.
      tol: relative breakdown threshold; default 100 eps of v0's dtype.
      mask_n: optional 0/1 [n]: the run stays in these coordinates (v0 and matvec must
        too), so T is the projection of H's block; then num_iters <= the block's size.

    Returns:
      The tridiagonal T (alpha [m], beta [m-1]) and the basis [m, n].
    """
    if jnp.ndim(v0_n) != 1:
        raise ValueError(f"`v0_n` must have shape [n], got shape {jnp.shape(v0_n)}")
    n = v0_n.shape[0]
    checks.integer("num_iters", num_iters, minimum=1, maximum=n)
    dtype = v0_n.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"`v0_n` must be floating point, got {dtype}")
    tol = 100 * float(jnp.finfo(dtype).eps) if tol is None else tol
    body = _lanczos_body(matvec, num_iters, n, dtype, tol, mask_n)
    V_mxn, alpha_m, beta_m, _ = lax.fori_loop(0, num_iters, body, _lanczos_init(v0_n, num_iters))
    return Tridiagonal(alpha_m, beta_m[: num_iters - 1], V_mxn)


def _lanczos_init(v0_n: Array, m: int) -> tuple:
    """The loop state (basis [m, n], alpha [m], beta [m], largest |H v| so far)."""
    dtype = v0_n.dtype
    V_mxn = jnp.zeros((m, v0_n.shape[0]), dtype).at[0].set(v0_n / jnp.linalg.norm(v0_n))
    return V_mxn, jnp.zeros(m, dtype), jnp.zeros(m, dtype), jnp.zeros((), dtype)


def _lanczos_body(
    matvec: Matvec, m: int, n: int, dtype, tol: float, mask_n: Array | None = None
) -> Callable:
    """Step i of `lanczos`: (i, state) -> state. With `mask_n` (0/1 [n]) restarts stay in the
    block's coordinates, as the start and every H v do."""
    update = _lanczos_update(m, n, dtype, tol, mask_n)

    def body(i, state):
        return update(i, state, matvec(state[0][i]))

    return body


def _lanczos_update(m: int, n: int, dtype, tol: float, mask_n: Array | None = None) -> Callable:
    """Step i of `lanczos` given w = H v_i: (i, state, w [n]) -> state."""
    # Restart directions need only be generic, not secret: a fixed key keeps `lanczos`
    # a function of its arguments.
    restart_key = jax.random.key(0)

    def update(i, state, w_n):
        V_mxn, alpha_m, beta_m, scale = state
        v_n = V_mxn[i]
        alpha = jnp.vdot(v_n, w_n, precision=_HIGHEST)
        scale = jnp.maximum(scale, jnp.linalg.norm(w_n))
        # Removes alpha v_i and beta v_{i-1}, as the three-term recurrence would, and the
        # rounding-error components along all earlier vectors.
        w_n = project_out(w_n, V_mxn)
        beta = jnp.linalg.norm(w_n)

        def restart(_):
            r_n = jax.random.normal(jax.random.fold_in(restart_key, i), (n,), dtype)
            r_n = r_n if mask_n is None else r_n * mask_n
            r_n = project_out(r_n, V_mxn)
            norm = jnp.linalg.norm(r_n)
            return r_n / jnp.where(norm > 0, norm, 1), jnp.zeros((), dtype)

        def advance(_):
            return w_n / jnp.where(beta > 0, beta, 1), beta

        # After the last step there is no next vector to find: no restart.
        breakdown = (beta <= tol * scale) & (i + 1 < m)
        v_next_n, beta = lax.cond(breakdown, restart, advance, None)
        V_mxn = V_mxn.at[i + 1].set(v_next_n, mode="drop")  # dropped when i + 1 == m
        return V_mxn, alpha_m.at[i].set(alpha), beta_m.at[i].set(beta), scale

    return update


@functools.lru_cache(maxsize=4)  # each entry keeps its `loss` (and the data it closes over)
def _host_hvp(loss: Loss) -> Callable:
    """The compiled H v of `loss` on a block's coordinates: (params, mask_n, v_n) -> [n].

    The host loops (`default_loop`) call only this program and `_host_update`, which knows
    nothing of `loss`: one compilation of the network's HVP serves every Lanczos length,
    block, trace probe and SLQ probe of the same `loss` object.
    """

    def hv(params, mask_n, v_n):
        return _flat_matvec(loss, params, mask_n)[1](v_n)

    return jax.jit(hv)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def _host_update(tol: float, i, state, w_n, mask_n):
    """`_lanczos_update` as one compiled program (shapes from `state`)."""
    m, n = state[0].shape
    return _lanczos_update(m, n, state[0].dtype, tol, mask_n)(i, state, w_n)


def _host_args(params: PyTree, mask_n: Array | None, like_n: Array) -> tuple[Callable, Array]:
    """(put, mask_n) for a host loop: `put` commits an array to the device of `params`, and
    the mask is all ones for the whole Hessian (v * 1 is v). A jitted function compiles
    again for arguments that are committed to a device where they were not before (the
    loop's own outputs are), and for a mask where there was None: so every vector and the
    mask go in committed, and the masked and unmasked calls share one compiled HVP."""
    leaf = jax.tree.leaves(params)[0]
    device = next(iter(leaf.devices())) if hasattr(leaf, "devices") else jax.devices()[0]

    def put(x):
        return jax.device_put(x, device)

    return put, put(jnp.ones_like(like_n) if mask_n is None else mask_n)


def lanczos_host(loss: Loss, params: PyTree, v0_n: Array, num_iters: int, mask_n=None):
    """`lanczos` on the Hessian of `loss` at `params` from `v0_n` [n], with the loop over
    steps in Python: the compiled HVP and update called num_iters times (see
    `default_loop`). `mask_n`: an optional 0/1 [n] block. Returns (alpha [m], beta [m-1]).
    Unchecked: the callers (`ritz` and the like, `sharpness.on_plane`) check the sizes."""
    put, mask_n = _host_args(params, mask_n, v0_n)
    hv = _host_hvp(loss)
    tol = 100 * float(jnp.finfo(v0_n.dtype).eps)
    state = jax.tree.map(put, _lanczos_init(_masked(v0_n, mask_n), num_iters))
    for i in range(num_iters):
        w_n = hv(params, mask_n, state[0][i])
        state = _host_update(tol, jnp.int32(i), state, w_n, mask_n)
    _, alpha_m, beta_m, _ = state
    return alpha_m, beta_m[: num_iters - 1]


def _tri_host(loss: Loss, params: PyTree, key: Key, num_iters: int, mask_n=None):
    """`_tri_jit`'s numbers, stepped from Python."""
    flat_n, _ = ravel_pytree(params)
    v0_n = jax.random.normal(key, flat_n.shape, flat_n.dtype)
    return lanczos_host(loss, params, v0_n, num_iters, mask_n)


def check_loop(loop: str | None) -> str:
    """`loop` ("lax" or "host"), or `default_loop()` for None; ValueError otherwise."""
    loop = default_loop() if loop is None else loop
    if loop not in ("lax", "host"):
        raise ValueError(f"`loop` must be 'lax', 'host' or None, got {loop!r}")
    return loop


def default_loop() -> str:
    """ "lax" (the whole run in one `lax.fori_loop`), except "host" on CPU.

    XLA:CPU runs a network's Hessian-vector product about 8x slower inside a while loop's
    body than as a program of its own (ResNet-20, 256 digits: 0.46 s alone, 3.7 s per
    iteration in a `fori_loop`, 0.52 s unrolled; jax-ml/jax#12868), so on CPU the Ritz
    functions call one compiled Lanczos step from Python m times: one compilation, nothing
    unrolled, the same arithmetic.
    """
    return "host" if jax.default_backend() == "cpu" else "lax"


def _tri(
    loss: Loss, params: PyTree, key: Key, num_iters: int, loop: str | None, mask_n=None
) -> tuple[Array, Array]:
    if check_loop(loop) == "lax":
        return _tri_jit(loss, params, key, num_iters, mask_n)
    return _tri_host(loss, params, key, num_iters, mask_n)


def _ritz(loss, params, key, num_iters: int, loop: str | None, mask_n=None) -> Ritz:
    return _ritz_of(*_tri(loss, params, key, num_iters, loop, mask_n))


def tridiagonal(
    loss: Loss,
    params: PyTree,
    *,
    key: Key,
    num_iters: int | None = None,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> tuple[Array, Array]:
    """(alpha [m], beta [m-1]): the Lanczos tridiagonal of one run from a Gaussian start.

    The Ritz values after j < m steps are the eigenvalues of its leading j x j block, so
    one run shows how the values converge (`ritz_values(alpha[:j], beta[:j - 1])`).
    `mask` as in `ritz`.
    """
    n, mask_n = _block(params, mask)
    return _tri(loss, params, key, _default_iters(n, num_iters), loop, mask_n)


def tridiagonal_matrix(alpha_m, beta_m1, xp=jnp):
    """The symmetric tridiagonal [m, m] with diagonal `alpha_m` and off-diagonal `beta_m1`,
    built with `xp` (jax.numpy, traceable; or numpy)."""
    return xp.diag(alpha_m) + xp.diag(beta_m1, 1) + xp.diag(beta_m1, -1)


def ritz_values(alpha, beta) -> np.ndarray:
    """Eigenvalues of the tridiagonal (alpha, beta), descending (NumPy, float64)."""
    a = np.asarray(alpha, np.float64)
    b = np.asarray(beta, np.float64)
    if a.ndim != 1 or b.shape != (max(len(a) - 1, 0),):
        raise ValueError(f"`alpha` [m] and `beta` [m-1] expected, got {a.shape} and {b.shape}")
    return np.linalg.eigvalsh(tridiagonal_matrix(a, b, np))[::-1]


def top_ritz_values(alpha_m: Array, beta_m1: Array, k: int) -> Array:
    """The k largest eigenvalues of the tridiagonal (alpha, beta), descending, traceable
    (`ritz_values` is the NumPy float64 form)."""
    return jnp.linalg.eigvalsh(tridiagonal_matrix(alpha_m, beta_m1))[::-1][:k]


def _ritz_of(alpha_m: Array, beta_m1: Array) -> Ritz:
    theta_m, U_mxm = jnp.linalg.eigh(tridiagonal_matrix(alpha_m, beta_m1))  # ascending
    return Ritz(theta_m[::-1], U_mxm[0, ::-1] ** 2)


def _flat_matvec(loss: Loss, params: PyTree, mask_n: Array | None = None) -> tuple[Array, Matvec]:
    """The flat parameters [n] and v [n] -> H v [n]; with a 0/1 `mask_n`, v -> M H M v, the
    block H_BB on the block's coordinates (0 elsewhere)."""
    flat_n, unravel = ravel_pytree(params)

    def matvec(v_n):
        Hv_n = ravel_pytree(hvp(loss, params, unravel(_masked(v_n, mask_n))))[0]
        return _masked(Hv_n, mask_n)

    return flat_n, matvec


def _masked(v_n: Array, mask_n: Array | None) -> Array:
    return v_n if mask_n is None else v_n * mask_n


def _probes(key: Key, num_probes: int, n: int, dtype, mask_n=None) -> Array:
    """The SLQ probes of `density`: Rademacher vectors scaled to unit norm, [P, n] (zero
    outside the block with `mask_n`)."""
    z_Pxn = jax.random.rademacher(key, (num_probes, n), dtype=dtype)
    if mask_n is None:
        return z_Pxn / jnp.sqrt(jnp.asarray(n, dtype))
    return z_Pxn * mask_n[None] / jnp.sqrt(jnp.sum(mask_n))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _tri_jit(loss: Loss, params: PyTree, key: Key, num_iters: int, mask_n=None):
    flat_n, matvec = _flat_matvec(loss, params, mask_n)
    v0_n = _masked(jax.random.normal(key, flat_n.shape, flat_n.dtype), mask_n)
    tri = lanczos(matvec, v0_n, num_iters, mask_n=mask_n)
    return tri.alpha, tri.beta


def _default_iters(n: int, num_iters: int | None, lo: int = 1) -> int:
    num_iters = min(DEFAULT_ITERS, n) if num_iters is None else num_iters
    checks.integer("num_iters", num_iters, minimum=lo, maximum=n)
    return num_iters


def ritz(
    loss: Loss,
    params: PyTree,
    *,
    key: Key,
    num_iters: int | None = None,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> Ritz:
    """Ritz values (descending) and weights of one Lanczos run from a Gaussian start.

    Args:
      loss: params pytree -> scalar.
      params: the point.
      key: draws the start vector.
      num_iters: Lanczos steps m, 1 <= m <= n; default min(64, n).
      loop: "lax" (one compiled loop), "host" (one compiled step, looped in Python) or
        None for `default_loop()`.
      mask: optional block, a pytree like `params` of bools (a leaf or an array of the
        leaf's shape): the spectrum of the sub-matrix H_BB of those parameters (`block_mask`).

    Returns:
      `Ritz(values [m], weights [m])`.
    """
    n, mask_n = _block(params, mask)
    return _ritz(loss, params, key, _default_iters(n, num_iters), loop, mask_n)


def top_eigenvalues(
    loss: Loss,
    params: PyTree,
    k: int,
    *,
    key: Key,
    num_iters: int | None = None,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> Array:
    """The k largest eigenvalues of the Hessian of `loss` at `params`, descending, [k].

    Args:
      loss: params pytree -> scalar.
      params: the point.
      k: how many, 1 <= k <= n.
      key: draws the Lanczos start vector.
      num_iters: Lanczos steps, k <= num_iters <= n; default max(2k + 10, 20) capped at n.
      loop, mask: as in `ritz` (n is then the block's size).
    """
    n, mask_n = _block(params, mask)
    checks.integer("k", k, minimum=1, maximum=n)
    if num_iters is None:
        num_iters = min(max(2 * k + 10, 20), n)
    checks.integer("num_iters", num_iters, minimum=k, maximum=n)
    return _ritz(loss, params, key, num_iters, loop, mask_n).values[:k]


def min_eigenvalue(
    loss: Loss,
    params: PyTree,
    *,
    key: Key,
    num_iters: int | None = None,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> Array:
    """The smallest (most negative) Hessian eigenvalue, a scalar (of the block with `mask`).

    Small negative eigenvalues next to a large bulk near 0 converge slowly: check that the
    value is stable in `num_iters` (default min(64, n)).
    """
    n, mask_n = _block(params, mask)
    return _ritz(loss, params, key, _default_iters(n, num_iters), loop, mask_n).values[-1]


def extreme_eigenvalues(
    loss: Loss,
    params: PyTree,
    *,
    key: Key,
    num_iters: int | None = None,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> tuple[Array, Array]:
    """(lambda_max, lambda_min) of the Hessian (of the block with `mask`) from one Lanczos run
    (default min(64, n))."""
    n, mask_n = _block(params, mask)
    values_m = _ritz(loss, params, key, _default_iters(n, num_iters), loop, mask_n).values
    return values_m[0], values_m[-1]


def converged_extremes(
    loss: Loss,
    params: PyTree,
    *,
    key: Key,
    num_iters: int,
    tol: float = 0.1,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> dict:
    """lambda_max and lambda_min with a convergence check, from one Lanczos run.

    The run takes 2 * `num_iters` steps; the Ritz values of its leading `num_iters` block
    (what a run of `num_iters` steps gives) beside those of the whole say whether each end
    has converged: it moved by less than `tol` (relative) when the steps doubled.

    Returns:
      {"lambda_max", "lambda_min", "half": {"lambda_max", "lambda_min"} (after `num_iters`
      steps), "relative_change": {...}, "converged": {...} (both keyed by end),
      "lanczos_iters": 2 * num_iters}.
    """
    if not num_iters >= 1:
        raise ValueError(f"`num_iters` must be a positive integer, got {num_iters!r}")
    n, _ = _block(params, mask)
    if not 2 * num_iters <= n:
        raise ValueError(f"`num_iters` ({num_iters}) doubled exceeds the parameter count {n}")
    alpha, beta = tridiagonal(loss, params, key=key, num_iters=2 * num_iters, loop=loop, mask=mask)
    half = ritz_values(alpha[:num_iters], beta[: num_iters - 1])
    full = ritz_values(alpha, beta)
    ends = {"lambda_max": (half[0], full[0]), "lambda_min": (half[-1], full[-1])}
    change = {k: abs(a - b) / max(abs(b), 1e-30) for k, (a, b) in ends.items()}
    return {
        "lambda_max": float(full[0]),
        "lambda_min": float(full[-1]),
        "half": {k: float(a) for k, (a, _) in ends.items()},
        "relative_change": {k: float(v) for k, v in change.items()},
        "converged": {k: bool(v < tol) for k, v in change.items()},
        "lanczos_iters": 2 * num_iters,
    }


def blocks(
    loss: Loss,
    params: PyTree,
    masks: dict[str, PyTree],
    *,
    key: Key,
    num_iters: int = 20,
    num_probes: int = 20,
    loop: str | None = None,
    max_bytes: int = 2**30,
) -> dict[str, dict]:
    """lambda_max, lambda_min and trace of each block's sub-Hessian H_BB (a layer, a stage, all
    batch-norm scales, ... given as `block_mask`s).

    With `loop="lax"` (accelerators) the blocks run batched where they fit: one Lanczos run
    and one Hutchinson estimate vmapped over as many blocks' 0/1 vectors as have their
    bases (num_iters x n each) within `max_bytes`, the groups one after another
    (`lax.map`). On CPU (`default_loop`) the blocks run one after another through the
    shared compiled HVP, the mask being an argument of it.

    Args:
      loss, params, key, loop: as in `ritz` (every block uses the same key).
      masks: name -> mask pytree like `params`.
      num_iters: Lanczos steps per block, at most the smallest block's size.
      num_probes: Hutchinson probes per block, >= 2.
      max_bytes: memory for the Lanczos bases of the blocks batched at once ("lax").

    Returns:
      name -> {"size", "lambda_max", "lambda_min", "trace", "trace_se"}.
    """
    if not isinstance(masks, dict) or not masks:
        raise ValueError("`masks` must be a non-empty dict of name -> mask pytree")
    sized = {name: _block(params, m) for name, m in masks.items()}
    smallest = min(n for n, _ in sized.values())
    checks.integer("num_iters", num_iters, minimum=1, maximum=smallest)
    checks.integer("num_probes", num_probes, minimum=2)
    batch = min(10, num_probes)
    checks.integer("max_bytes", max_bytes, minimum=1)
    if check_loop(loop) == "lax":
        masks_Bxn = jnp.stack([m for _, m in sized.values()])
        basis_bytes = num_iters * masks_Bxn.shape[1] * masks_Bxn.dtype.itemsize
        group = int(min(len(masks_Bxn), max(1, max_bytes // basis_bytes)))
        alpha_Bxm, beta_Bxm1 = lax.map(
            lambda m: _tri_jit(loss, params, key, num_iters, m), masks_Bxn, batch_size=group
        )
        tr_B, se_B = lax.map(
            lambda m: _trace_jit(loss, params, key, num_probes, batch, m),
            masks_Bxn,
            batch_size=group,
        )
        per = list(zip(alpha_Bxm, beta_Bxm1, tr_B, se_B, strict=True))
    else:
        per = [
            (
                *_tri_host(loss, params, key, num_iters, m),
                *_trace_host(loss, params, key, num_probes, batch, m),
            )
            for _, m in sized.values()
        ]
    out = {}
    for (name, (size, _)), (alpha, beta, tr, se) in zip(sized.items(), per, strict=True):
        values = ritz_values(alpha, beta)
        out[name] = {
            "size": size,
            "lambda_max": float(values[0]),
            "lambda_min": float(values[-1]),
            "trace": float(tr),
            "trace_se": float(se),
        }
    return out


def _probe_group(loss: Loss, params: PyTree, keys_b: Array, mask_n=None) -> Array:
    """z^T H z for the Rademacher probes z drawn from each key of `keys_b`, vmapped: [b]
    (z zero outside the block with `mask_n`: z^T H_BB z)."""
    flat_n, matvec = _flat_matvec(loss, params, mask_n)
    z_bxn = _rademacher(keys_b, flat_n.shape[0], flat_n.dtype, mask_n)
    Hz_bxn = jax.vmap(matvec, in_axes=0)(z_bxn)
    return jnp.sum(z_bxn * Hz_bxn, axis=1)


def _probe_keys(key: Key, num_probes: int, batch: int) -> Array:
    """[G, batch] keys: probe p comes from fold_in(key, p), so the estimate does not depend
    on `batch`; the last group's surplus probes are computed and dropped."""
    num_groups = -(-num_probes // batch)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(
        key, jnp.arange(num_groups * batch)
    ).reshape(num_groups, batch)


def _mean_and_error(samples_P: Array) -> tuple[Array, Array]:
    return jnp.mean(samples_P), jnp.std(samples_P, ddof=1) / jnp.sqrt(samples_P.shape[0])


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _trace_jit(
    loss: Loss, params: PyTree, key: Key, num_probes: int, batch: int, mask_n=None
) -> tuple[Array, Array]:
    keys_Gxb = _probe_keys(key, num_probes, batch)
    samples_P = lax.map(lambda k: _probe_group(loss, params, k, mask_n), keys_Gxb).reshape(-1)
    return _mean_and_error(samples_P[:num_probes])


def _rademacher(keys_b: Array, n: int, dtype, mask_n: Array | None = None) -> Array:
    """[b, n]: a Rademacher probe from each key of `keys_b`, zero outside the block."""
    z_bxn = jax.vmap(lambda k: jax.random.rademacher(k, (n,), dtype=dtype), in_axes=0)(keys_b)
    return z_bxn if mask_n is None else z_bxn * mask_n[None]


# The host loop's probes, drawn a group at a time in one compiled call.
_rademacher_group = jax.jit(_rademacher, static_argnums=(1, 2))


def _trace_host(loss, params, key, num_probes, batch, mask_n=None) -> tuple[Array, Array]:
    """`_trace_jit`'s numbers (the same probes) with the probes stepped from Python through
    the shared compiled HVP (`_host_hvp`, see `default_loop`), `batch` drawn at a time."""
    flat_n, _ = ravel_pytree(params)
    _, mask_n = _host_args(params, mask_n, flat_n)
    hv = _host_hvp(loss)
    samples = []
    for keys_b in _probe_keys(key, num_probes, batch):
        z_bxn = _rademacher_group(keys_b, flat_n.shape[0], flat_n.dtype, mask_n)
        Hz_bxn = jnp.stack([hv(params, mask_n, z_n) for z_n in z_bxn])
        samples.append(jnp.sum(z_bxn * Hz_bxn, axis=1))
    return _mean_and_error(jnp.concatenate(samples)[:num_probes])


def trace(
    loss: Loss,
    params: PyTree,
    *,
    key: Key,
    num_probes: int = 100,
    batch: int = 10,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> tuple[Array, Array]:
    """Hutchinson estimate of tr H (tr H_BB with `mask`) with Rademacher probes.

    Args:
      loss: params pytree -> scalar.
      params: the point.
      key: draws the probes.
      num_probes: P >= 2 probes.
      batch: probes per vmapped group of HVPs (memory grows with it); groups run in a
        `lax.map` (from Python on CPU, see `default_loop`). The probes, and so the
        estimate, do not depend on it.
      loop, mask: as in `ritz`.

    Returns:
      (estimate, standard error): the mean of z^T H z and its sample std / sqrt(P).
    """
    _, mask_n = _block(params, mask)
    checks.integer("num_probes", num_probes, minimum=2)
    checks.integer("batch", batch, minimum=1)
    batch = min(batch, num_probes)
    if check_loop(loop) == "lax":
        return _trace_jit(loss, params, key, num_probes, batch, mask_n)
    return _trace_host(loss, params, key, num_probes, batch, mask_n)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _density_jit(
    loss: Loss, params: PyTree, key: Key, num_probes: int, num_iters: int, mask_n=None
) -> tuple[Array, Array]:
    flat_n, matvec = _flat_matvec(loss, params, mask_n)
    probes_Pxn = _probes(key, num_probes, flat_n.shape[0], flat_n.dtype, mask_n)

    def one(v_n):
        tri = lanczos(matvec, v_n, num_iters, mask_n=mask_n)
        return _ritz_of(tri.alpha, tri.beta)

    # One probe at a time: the memory of one basis, m x n.
    nodes_Pxm, weights_Pxm = lax.map(one, probes_Pxn)
    return nodes_Pxm, weights_Pxm


def density(
    loss: Loss,
    params: PyTree,
    *,
    key: Key,
    num_probes: int = 4,
    num_iters: int | None = None,
    loop: str | None = None,
    mask: PyTree | None = None,
) -> tuple[Array, Array]:
    """Stochastic Lanczos quadrature of the Hessian's spectral density (of H_BB with `mask`).

    Args:
      loss: params pytree -> scalar.
      params: the point.
      key: draws the probes (`_probes`: Rademacher, unit norm).
      num_probes: P >= 1 Lanczos runs.
      num_iters: steps per run m, 1 <= m <= n; default min(64, n).
      loop, mask: as in `ritz` (probes one after another in both).

    Returns:
      (nodes [P, m], weights [P, m]): each probe's Ritz values (descending) and weights;
      each row of weights sums to 1.
    """
    n, mask_n = _block(params, mask)
    checks.integer("num_probes", num_probes, minimum=1)
    m = _default_iters(n, num_iters)
    if check_loop(loop) == "lax":
        return _density_jit(loss, params, key, num_probes, m, mask_n)
    flat_n, _ = ravel_pytree(params)
    runs = [
        _ritz_of(*lanczos_host(loss, params, v_n, m, mask_n))
        for v_n in _probes(key, num_probes, flat_n.shape[0], flat_n.dtype, mask_n)
    ]
    return jnp.stack([r.values for r in runs]), jnp.stack([r.weights for r in runs])


def density_curve(nodes, weights, grid, sigma: float) -> np.ndarray:
    """The SLQ density smoothed by a Gaussian of width `sigma`, on `grid`.

    Args:
      nodes: [P, m] Ritz values from `density`.
      weights: [P, m] their weights.
      grid: [G] eigenvalues at which to evaluate.
      sigma: standard deviation of the Gaussian, > 0.

    Returns:
      [G] float64: mean over probes of sum_j w_j N(grid; theta_j, sigma^2); integrates to 1
      when the grid covers every node by a few sigma.
    """
    nodes_Pxm = np.asarray(nodes, dtype=np.float64)
    weights_Pxm = np.asarray(weights, dtype=np.float64)
    grid_G = np.asarray(grid, dtype=np.float64)
    if nodes_Pxm.ndim != 2 or weights_Pxm.shape != nodes_Pxm.shape:
        raise ValueError(
            f"`nodes` and `weights` must have the same shape [P, m], got {nodes_Pxm.shape} "
            f"and {weights_Pxm.shape}"
        )
    if grid_G.ndim != 1:
        raise ValueError(f"`grid` must have shape [G], got shape {grid_G.shape}")
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"`sigma` must be positive and finite, got {sigma!r}")
    z_GxPxm = (grid_G[:, None, None] - nodes_Pxm[None]) / sigma
    gauss_GxPxm = np.exp(-0.5 * z_GxPxm**2) / (sigma * np.sqrt(2 * np.pi))
    return np.sum(gauss_GxPxm * weights_Pxm[None], axis=(1, 2)) / nodes_Pxm.shape[0]


# The SLQ nodes that carry at least this share of the spectral measure stand for the bulk
# (with n parameters, a node of weight w stands for about w n eigenvalues: 1e-3 of 0.85 M
# is about 850, far more than a handful of outliers).
BULK_WEIGHT = 1e-3


def bulk_edge(nodes, weights, *, min_weight: float = BULK_WEIGHT) -> float:
    """The top of the bulk of the spectrum: the largest SLQ node (`density`) whose weight is
    at least `min_weight`. Outlier eigenvalues (Papyan 2019) lie above it; their own SLQ
    weights are about 1/n each, far below `min_weight`."""
    nodes_Pxm = np.asarray(nodes, np.float64)
    weights_Pxm = np.asarray(weights, np.float64)
    if nodes_Pxm.shape != weights_Pxm.shape or nodes_Pxm.ndim != 2:
        raise ValueError(
            f"`nodes` and `weights` must have the same shape [P, m], got {nodes_Pxm.shape} "
            f"and {weights_Pxm.shape}"
        )
    if nodes_Pxm.size == 0:
        raise ValueError(
            f"`nodes` and `weights` must hold at least one probe and one node, got shape "
            f"{nodes_Pxm.shape}"
        )
    if not (np.all(np.isfinite(nodes_Pxm)) and np.all(np.isfinite(weights_Pxm))):
        raise ValueError("`nodes` and `weights` must be finite (an SLQ run that overflowed?)")
    if not 0 < min_weight < 1:
        raise ValueError(f"`min_weight` must be in (0, 1), got {min_weight!r}")
    heavy = nodes_Pxm[weights_Pxm >= min_weight]
    if not len(heavy):
        raise ValueError(
            f"`min_weight` ({min_weight:g}) is above every SLQ weight (largest "
            f"{np.max(weights_Pxm, initial=0):.3g}): no node marks the bulk"
        )
    return float(np.max(heavy))


def outliers(top_values, nodes, weights, num_classes: int, *, min_weight: float = BULK_WEIGHT):
    """The outlier spectrum of a classifier's Hessian (Papyan 2019; Ghorbani et al. 2019).

    Args:
      top_values: the top eigenvalues, descending (e.g. `top_eigenvalues` with k >= 2C).
      nodes, weights: an SLQ run (`density`) of the same Hessian, for the bulk's edge.
      num_classes: C; theory: about C outliers above the bulk.
      min_weight: see `bulk_edge`.

    Returns:
      {"bulk_edge", "count" (top values above the edge; at most len(top_values)),
      "count_capped" (all of top_values lie above the edge), "gap_ratio_C" (lambda_C /
      lambda_{C+1}, None when fewer than C + 1 values), "top": the values}.
    """
    top = np.asarray(top_values, np.float64)
    if top.ndim != 1 or not len(top) or not np.all(np.isfinite(top)):
        raise ValueError(f"`top_values` must be a non-empty 1-D array of finite values, got {top}")
    if np.any(np.diff(top) > 0):
        raise ValueError(f"`top_values` must be descending, got {top}")
    checks.integer("num_classes", num_classes, minimum=1)
    edge = bulk_edge(nodes, weights, min_weight=min_weight)
    count = int(np.sum(top > edge))
    c = num_classes
    gap = float(top[c - 1] / top[c]) if len(top) > c and top[c] > 0 else None
    return {
        "bulk_edge": edge,
        "count": count,
        "count_capped": count == len(top),
        "gap_ratio_C": gap,
        "top": [float(v) for v in top],
    }
