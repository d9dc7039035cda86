"""Sharpness tracked during training: the edge of stability, inside one compiled loop.

Full-batch gradient descent on a loss with Hessian H is stable along H's top eigenvector
only while the sharpness lambda_max(H) stays below 2 / lr (the quadratic picture). Cohen et
al. (2021) found that on neural networks the sharpness first rises ("progressive
sharpening") until it reaches 2 / lr, then hovers at or just above it while the loss keeps
falling, non-monotonically: the edge of stability. The thresholds, for the updates written
in `track`:

    gd        theta <- theta - lr g                              2 / lr
    momentum  v <- beta v + g,  theta <- theta - lr v            (2 + 2 beta) / lr
    adam      theta <- theta - lr P^-1 m   (Cohen et al. 2022)   (2 + 2 b1) / ((1 - b1) lr)

For Adam the quantity that meets its threshold is the preconditioned sharpness
lambda_max(P^-1 H) with Adam's own preconditioner, bias corrections included: after t
updates with first and second moments m_t, v_t (exponential averages of g and g^2),

    P_t = (1 - b1^t) diag(sqrt(v_t / (1 - b2^t)) + eps),   theta_{t+1} = theta_t - lr P_t^-1 m_t

which is exactly `optax.scale_by_adam`'s update. P^-1 H is similar to the symmetric
P^-1/2 H P^-1/2, so `hessian.lanczos` runs on v -> P^-1/2 H P^-1/2 v. For b1 = 0.9 the
threshold is 38 / lr.

`track` trains for `steps` updates as one jitted program: an outer `lax.scan` over blocks of
`every` updates (an inner `lax.scan`), each block followed by a Lanczos run of `num_iters`
Hessian-vector products (`hessian.lanczos`, full reorthogonalization) on the current
parameters. Nothing is unrolled: the program's size does not depend on `steps`. The
optimizers are Optax transformations (`optax.identity`, `optax.trace`, `optax.scale_by_adam`)
scaled by a traced learning rate, so a vector of learning rates runs as one vmapped
computation.

    def loss(params):                      # full batch, closes over the data
        out = model(params, x)
        return 0.5 * jnp.mean(jnp.sum((out - y) ** 2, -1)), accuracy(out, y)

    trace = sharpness.track(loss, params, jnp.array([0.01, 0.02]), steps=2000, every=20,
                            key=jax.random.key(0), has_aux=True)
    trace.sharpness    # [2, 101]: lambda_max at trace.steps = 0, 20, ..., 2000
    sharpness.threshold("gd", 0.01)   # 200.0

`on_plane` maps the sharpness over a plane of parameter space, params + a d1 + b d2 (the
sharpness map beside a loss surface): one Lanczos run per point, the points batched through
`engine.map_chunks`.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from sandbox import checks, engine, hessian, network, surface
from sandbox.types import Array, Key, PyTree

OPTIMIZERS = ("gd", "momentum", "adam")
# Lanczos steps per check where the caller gives none: Cohen et al. use 20 for the top
# eigenvalue (scipy's eigsh); the top Ritz value of a 20-step run from a random start has
# converged to ~1e-6 on the networks of the study (tests/test_sharpness.py checks it
# against `eigh`).
DEFAULT_ITERS = 20


class Trace(NamedTuple):
    """One tracked training run (a leading [L] axis on every array for L learning rates).

    Attributes:
      losses: [T + 1] training loss at theta_0 .. theta_T.
      aux: [T + 1] the loss's auxiliary output (e.g. accuracy) at the same points, or None
        without `has_aux`.
      steps: [K] the updates after which the sharpness was measured: 0, every, 2 every, ..
        (<= T).
      sharpness: [K, E] the top E eigenvalues (descending) of H, or of P^-1 H for Adam, at
        those steps. Adam's entry at step 0 is NaN: no preconditioner exists before the first
        update.
      params: the parameters after the last update.
    """

    losses: Array
    aux: Any
    steps: Array
    sharpness: Array
    params: PyTree


def threshold(optimizer: str, lr: float, *, beta: float = 0.9, b1: float = 0.9) -> float:
    """The stability threshold of the (preconditioned) sharpness for `optimizer` at `lr`."""
    _check_optimizer(optimizer)
    lr = checks.positive("lr", lr)
    if optimizer == "gd":
        return 2.0 / lr
    if optimizer == "momentum":
        return (2.0 + 2.0 * beta) / lr
    return (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)


def track(
    loss: Callable,
    params: PyTree,
    lr: Any,
    *,
    steps: int,
    every: int,
    key: Key,
    optimizer: str = "gd",
    has_aux: bool = False,
    num_eigs: int = 1,
    num_iters: int | None = None,
    beta: float = 0.9,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> Trace:
    """Trains `params` on the full-batch `loss` and tracks the sharpness every `every` steps.

    Args:
      loss: params pytree -> scalar (or (scalar, aux) with `has_aux`), the full-batch
        training loss; it closes over its data. Pass the same function object to reuse the
        compiled program.
      params: the initial parameters (floating point); everything runs in their dtype.
      lr: the learning rate, a positive finite scalar, or a 1-D array of them: the runs for
        every learning rate are one vmapped computation, and each array of the result gains a
        leading [L] axis.
      steps: T >= 1 updates.
      every: k, 1 <= k <= T: the sharpness is measured at steps 0, k, 2k, .. <= T.
      key: draws each check's Lanczos start vector (check j uses fold_in(key, j); the same
        for every learning rate).
      optimizer: "gd", "momentum" (heavy ball, `beta`) or "adam" (`b1`, `b2`, `eps`; the
        preconditioned sharpness is tracked).
      has_aux: `loss` returns (loss, aux); aux is recorded at every step.
      num_eigs: E, how many of the top eigenvalues to record.
      num_iters: Lanczos steps per check, E <= num_iters <= n; default min(20, n), at
        least E.
      beta, b1, b2, eps: the optimizers' hyperparameters.

    Returns:
      A `Trace`.
    """
    _check_optimizer(optimizer)
    steps = checks.integer("steps", steps, minimum=1, maximum=checks.INT32_MAX)
    every = checks.integer("every", every, minimum=1, maximum=steps)
    n = check_loss(loss, params, has_aux=has_aux)
    num_eigs = checks.integer("num_eigs", num_eigs, minimum=1, maximum=n)
    num_iters = min(max(DEFAULT_ITERS, num_eigs), n) if num_iters is None else num_iters
    num_iters = checks.integer("num_iters", num_iters, minimum=num_eigs, maximum=n)
    lr_L = _check_lr(lr)
    hyper = _check_hyper(optimizer, beta=beta, b1=b1, b2=b2, eps=eps)
    dtype = ravel_pytree(params)[0].dtype
    static = (loss, optimizer, has_aux, steps, every, num_eigs, num_iters, hyper)
    run = _compiled(*static)
    trace = run(params, jnp.asarray(lr_L, dtype), key)
    if np.ndim(lr) == 0:
        trace = jax.tree.map(lambda a: a[0], trace)
    return trace


@functools.lru_cache(maxsize=8)  # each entry keeps its `loss` (and the data it closes over)
def _compiled(loss, optimizer, has_aux, steps, every, num_eigs, num_iters, hyper) -> Callable:
    def one(params, lr, key):
        return _run(
            loss,
            params,
            lr,
            key,
            optimizer,
            has_aux,
            steps,
            every,
            num_eigs,
            num_iters,
            dict(hyper),
        )

    return jax.jit(jax.vmap(one, in_axes=(None, 0, None)))


def _transform(optimizer: str, hyper: dict) -> optax.GradientTransformation:
    """The optimizer's direction before -lr: g, the heavy-ball trace, or Adam's P^-1 m."""
    if optimizer == "gd":
        return optax.identity()
    if optimizer == "momentum":
        return optax.trace(decay=hyper["beta"], nesterov=False)
    return optax.scale_by_adam(b1=hyper["b1"], b2=hyper["b2"], eps=hyper["eps"])


def _run(loss, params, lr, key, optimizer, has_aux, steps, every, num_eigs, num_iters, hyper):
    scalar = (lambda p: loss(p)[0]) if has_aux else loss
    tx = _transform(optimizer, hyper)
    value_and_grad = jax.value_and_grad(loss, has_aux=has_aux)

    def update(carry, _):
        p, state = carry
        out, g = value_and_grad(p)
        direction, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, d: a - lr * d, p, direction)
        return (p, state), out

    def check(p, state, j):
        scale = _inverse_sqrt_preconditioner(optimizer, state, hyper)
        flat_n = ravel_pytree(p)[0]
        v0_n = jax.random.normal(jax.random.fold_in(key, j), flat_n.shape, flat_n.dtype)
        return _top(scalar, p, scale, v0_n, num_eigs, num_iters)

    def block(carry, j):
        carry, outs = lax.scan(update, carry, None, length=every)
        return carry, (outs, check(*carry, j + 1))

    state = tx.init(params)
    first = check(params, state, 0)
    if optimizer == "adam":  # no preconditioner before the first update
        first = jnp.full_like(first, jnp.nan)
    num_blocks, rest = divmod(steps, every)
    carry, (outs, later) = lax.scan(block, (params, state), jnp.arange(num_blocks))
    outs = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), outs)
    if rest:
        carry, tail = lax.scan(update, carry, None, length=rest)
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outs, tail)
    final = loss(carry[0])
    outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), outs, final)
    losses, aux = outs if has_aux else (outs, None)
    sharp = jnp.concatenate([first[None], later])
    return Trace(losses, aux, jnp.arange(num_blocks + 1) * every, sharp, carry[0])


def _inverse_sqrt_preconditioner(optimizer: str, state, hyper: dict):
    """P^-1/2 as a pytree like params (Adam), or None (gd, momentum: P = I)."""
    if optimizer != "adam":
        return None
    t = state.count.astype(jax.tree.leaves(state.nu)[0].dtype)
    b1, b2, eps = hyper["b1"], hyper["b2"], hyper["eps"]
    return jax.tree.map(
        lambda nu: lax.rsqrt((1 - b1**t) * (jnp.sqrt(nu / (1 - b2**t)) + eps)), state.nu
    )


def _top(scalar: Callable, params: PyTree, scale, v0_n, num_eigs: int, num_iters: int):
    """The top `num_eigs` eigenvalues of S H S (S = diag(scale), or I), descending, by a
    Lanczos run from `v0_n`."""
    _, unravel = ravel_pytree(params)
    s_n = None if scale is None else ravel_pytree(scale)[0]

    def matvec(v_n):
        u_n = v_n if s_n is None else s_n * v_n
        Hu_n = ravel_pytree(hessian.hvp(scalar, params, unravel(u_n)))[0]
        return Hu_n if s_n is None else s_n * Hu_n

    tri = hessian.lanczos(matvec, v0_n, num_iters)
    return hessian.top_ritz_values(tri.alpha, tri.beta, num_eigs)


def check_loss(loss: Callable, params: PyTree, *, has_aux: bool = False) -> int:
    """The number of parameters; ValueError, before any work, unless `params` has floating
    leaves of one dtype and `loss(params)` is a real scalar (or a pair (scalar, aux) with
    `has_aux`); traced abstractly (`jax.eval_shape`), nothing computed."""
    n = hessian.dimension(params)
    dtypes = sorted({str(jnp.result_type(a)) for a in jax.tree.leaves(params)})
    if len(dtypes) > 1:
        raise ValueError(
            f"`params` must have leaves of one floating dtype (everything runs in it), got "
            f"{', '.join(dtypes)}"
        )
    if not callable(loss):
        raise ValueError(f"`loss` must be a function of the parameters, got {type(loss).__name__}")
    out = jax.eval_shape(loss, params)
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(
                "`loss` must return a pair (scalar loss, aux) with `has_aux=True`, got "
                f"{_describe(out)}"
            )
        out = out[0]
    if not (
        isinstance(out, jax.ShapeDtypeStruct)
        and out.shape == ()
        and jnp.issubdtype(out.dtype, jnp.floating)
    ):
        aux = " (with `has_aux=True`, the first of its pair)" if has_aux else ""
        raise ValueError(
            f"`loss` must return a real scalar{aux}, got {_describe(out)}"
            + ("" if has_aux or not isinstance(out, tuple) else "; a pair needs `has_aux=True`")
        )
    return n


def _describe(out) -> str:
    if isinstance(out, jax.ShapeDtypeStruct):
        return f"an array of shape {out.shape} and dtype {out.dtype}"
    if isinstance(out, tuple):
        return f"a tuple of {len(out)}"
    return type(out).__name__


def _check_optimizer(optimizer: Any) -> None:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")


def _check_lr(lr: Any) -> np.ndarray:
    try:
        lr_L = np.asarray(lr, dtype=np.float64)
    except (TypeError, ValueError):
        lr_L = np.asarray(np.nan)
    if lr_L.ndim > 1 or lr_L.size == 0 or not np.all(np.isfinite(lr_L) & (lr_L > 0)):
        raise ValueError(
            f"`lr` must be a positive finite number or a 1-D array of them, got {lr!r}"
        )
    return lr_L.reshape(-1)


def _check_hyper(optimizer: str, **hyper: float) -> tuple:
    """The optimizer's hyperparameters as a hashable, checked tuple of (name, value)."""
    used = {"gd": (), "momentum": ("beta",), "adam": ("b1", "b2", "eps")}[optimizer]
    for name in used:
        value = hyper[name]
        ok = np.isscalar(value) and not isinstance(value, bool) and np.isfinite(value)
        ok = ok and (0 < value if name == "eps" else 0 <= value < 1)
        if not ok:
            want = "positive and finite" if name == "eps" else "in [0, 1)"
            raise ValueError(f"`{name}` must be {want}, got {value!r}")
    return tuple((name, float(hyper[name])) for name in used)


def on_plane(
    loss: Callable,
    params: PyTree,
    d1: PyTree,
    d2: PyTree,
    coords: Any,
    *,
    key: Key,
    num_iters: int = DEFAULT_ITERS,
    chunk: int | None = None,
    batch: int | None = None,
    store=None,
    loop: str | None = None,
) -> np.ndarray:
    """lambda_max of the Hessian of `loss` at every point params + a d1 + b d2 of a plane.

    A sharpness map beside a loss surface (`surface.plane`): one Lanczos run of `num_iters`
    steps per point (the same start vector at every point). With `loop="lax"` the points
    are batched through `engine.map_chunks` (vmapped on each device, `chunk` points per
    compiled call, each run one `lax.fori_loop`); with "host" (the default on CPU, see
    `hessian.default_loop`: XLA:CPU runs a network's HVP about 8x slower inside a loop's
    body) the points run one after another, each Lanczos stepped from Python through one
    compiled step (ResNet-20 on 256 digits, 12 steps: 7.8 s per point against 64.6 s per
    point in the batched loop, same run, 2 busy cores).

    Args:
      loss: params -> scalar, closing over its data (the same object reuses the compilation).
      params: the plane's centre.
      d1, d2: the plane's directions (pytrees like `params`, e.g. filter-normalized).
      coords: [G, 2] the points (a, b).
      key: draws the Lanczos start vector.
      num_iters: Lanczos steps per point, 1 <= num_iters <= n.
      chunk: points per compiled call (memory: chunk Lanczos bases of num_iters x n).
      batch: points a device runs at once; None vmaps its whole share; 1 for convolutional
        networks (vmapped weights make grouped convolutions, slow on CPU).
      store: as in `engine.map_chunks` ("lax" only).
      loop: "lax", "host" or None (`hessian.default_loop()`).

    Returns:
      [G] lambda_max at each point (NumPy).
    """
    n = check_loss(loss, params)
    surface.check_like(d1, params, "d1")
    surface.check_like(d2, params, "d2")
    num_iters = checks.integer("num_iters", num_iters, minimum=1, maximum=n)
    flat, _ = ravel_pytree(params)
    xy_G = np.asarray(coords, dtype=flat.dtype)
    if xy_G.ndim != 2 or xy_G.shape[1] != 2 or len(xy_G) == 0 or not np.all(np.isfinite(xy_G)):
        raise ValueError(f"`coords` must have shape [G, 2] of finite values, got {xy_G.shape}")
    v0 = jax.random.normal(key, flat.shape, flat.dtype)
    if hessian.check_loop(loop) == "host":
        out = []
        for a, b in engine.bar(xy_G, desc="sharpness", unit="point"):
            p = network.point(params, (a, b), (d1, d2))
            alpha, beta = hessian.lanczos_host(loss, p, v0, num_iters)
            out.append(hessian.ritz_values(alpha, beta)[0])
        return np.asarray(out, xy_G.dtype)
    return engine.map_chunks(
        _plane_point(loss, num_iters),
        xy_G,
        (params, d1, d2, v0),
        chunk=chunk,
        batch=batch,
        store=store,
        desc="sharpness",
        unit="point",
    )


@functools.lru_cache(maxsize=8)  # each entry keeps its `loss`
def _plane_point(loss: Callable, num_iters: int) -> Callable:
    def one(ab, shared):
        params, d1, d2, v0 = shared
        return _top(loss, network.point(params, ab, (d1, d2)), None, v0, 1, num_iters)[0]

    return one
