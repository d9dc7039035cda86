"""One descent run: a `lax.scan` of an Optax update on a scalar function, divergence-safe.

Pure and unbatched: each function follows one start `x0` of shape [d]; `sweep.descend` vmaps
them over many starts and hyperparameters, chunks and shards them.

Inside a run the point is a tuple of d scalars rather than a [d] vector. Batched by vmap,
each coordinate becomes its own contiguous [N] array, every operation of a step is
elementwise across runs, and XLA compiles a step into a few fused loops that keep their
values in vector registers. The gradient is taken in forward mode, one coordinate at a
time, for the same reason: reverse mode through the `x[i]` of a user function turns each
index into a pad, and pads split the fused loop (see docs/performance.md).
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sandbox import checks, optim
from sandbox.types import Array, ScalarFn

# Up to this dimension the gradient is d forward-mode derivatives (fused, cheap for the
# 2-D landscapes); above it, one reverse-mode pass.
FORWARD_MODE_MAX_DIM = 8

Point = tuple[Array, ...]  # d scalars


class Run(NamedTuple):
    """The outcome of one run (shapes for one run; `sweep.descend` adds a leading N).

    Attributes:
      x: [d] final point; a diverged run is frozen at its last finite, in-bound point.
      loss: [] f(x).
      grad_norm: [] |grad f(x)|.
      diverged: [] bool, True once an update left the finite, in-bound region.
      diverged_step: [] int32 index of the update that diverged (-1 if none).
      steps_to_tol: [] int32 updates taken before |grad f| first fell to `tol` or below
        (0: the start already was; -1: never within `steps`), or None without `tol`.
      path: [T', d] points after 0, k, 2k, ... updates (k = record_every), or None.
      losses: [T'] f along `path`, or None.
    """

    x: Array
    loss: Array
    grad_norm: Array
    diverged: Array
    diverged_step: Array
    steps_to_tol: Array | None = None
    path: Array | None = None
    losses: Array | None = None


def value_and_grad(fn: ScalarFn, d: int) -> Callable[[Point], tuple[Array, Point]]:
    """p (d scalars) -> (fn(p), d partial derivatives)."""
    if d <= FORWARD_MODE_MAX_DIM:

        def vg(p: Point) -> tuple[Array, Point]:
            def along(i):  # fn as a function of coordinate i alone: one tangent, no zeros
                return lambda xi: fn(jnp.stack(p[:i] + (xi,) + p[i + 1 :]))

            outs = [jax.jvp(along(i), (p[i],), (jnp.ones_like(p[i]),)) for i in range(d)]
            return outs[0][0], tuple(o[1] for o in outs)

        return vg

    def vg_reverse(p: Point) -> tuple[Array, Point]:
        f, g = jax.value_and_grad(fn)(jnp.stack(p))
        return f, tuple(g[i] for i in range(d))

    return vg_reverse


def num_records(steps: int, record_every: int) -> int:
    """Length T' of a recorded path: the start, then one point every `record_every` updates."""
    return steps // record_every + 1 if record_every > 0 else 0


def _in_bound(p: Point, bound) -> Array:
    ok = jnp.abs(p[0]) <= bound  # False for NaN: non-finite points fail too
    for a in p[1:]:
        ok = ok & (jnp.abs(a) <= bound)
    return ok


def _sq_norm(g: Point) -> Array:
    out = g[0] * g[0]
    for a in g[1:]:
        out = out + a * a
    return out


def _split(x0: Array) -> Point:
    return tuple(x0[i] for i in range(x0.shape[0]))


def _reached(g: Point, tol, steps_to_tol: Array) -> Array:
    return (_sq_norm(g) <= tol * tol) & (steps_to_tol < 0)


class _State(NamedTuple):
    p: Point
    opt_state: optax.OptState
    diverged_step: Array
    steps_to_tol: Array


def run(
    fn: ScalarFn,
    x0: Array,
    hyper: dict[str, Array],
    *,
    optimizer: str = "sgd",
    steps: int,
    record_every: int = 0,
    tol: Array | float | None = None,
    bound: Array | float = 1e6,
    pack: bool | None = None,
) -> Run:
    """Runs `steps` updates of `optimizer` on `fn` from `x0`, checking every update.

    Args:
      fn: x of shape [d] -> scalar, pure jnp.
      x0: [d] start.
      hyper: hyperparameters of `optimizer` (see `optim.hyperparameters`), scalars that
        may be traced.
      optimizer: a name of `optim.names()`.
      steps: number of updates (static).
      record_every: record the point and loss every this many updates (0: no recording).
      tol: gradient-norm tolerance that defines `steps_to_tol` (None: not tracked).
      bound: an update diverges when a coordinate becomes non-finite or exceeds `bound` in
        absolute value; the run then stays at its last good point.
      pack: carry the floats in pairs as complex numbers (see `run_fast`; default: unless
        the update takes a square root).

    Returns:
      A `Run`.
    """
    opt = optim.make(optimizer, **hyper)
    vg = value_and_grad(fn, x0.shape[0])
    track = tol is not None

    def step(state: _State, t: Array) -> tuple[_State, None]:
        _, g = vg(state.p)
        steps_to_tol = state.steps_to_tol
        if track:
            reached = _reached(g, tol, steps_to_tol) & (state.diverged_step < 0)
            steps_to_tol = jnp.where(reached, t, steps_to_tol)
        updates, opt_state = opt.update(g, state.opt_state, state.p)
        q = optax.apply_updates(state.p, updates)
        alive = state.diverged_step < 0
        ok = _in_bound(q, bound)
        diverged_step = jnp.where(alive & ~ok, t, state.diverged_step)
        keep = alive & ok
        p = tuple(jnp.where(keep, a, b) for a, b in zip(q, state.p, strict=True))
        # The optimizer state of a diverged run is not frozen: its point no longer moves.
        return _State(p, opt_state, diverged_step, steps_to_tol), None

    p0 = _split(x0)
    minus_one = jnp.array(-1, jnp.int32)
    state = _State(p0, opt.init(p0), minus_one, minus_one)
    # Carried floats packed in pairs as in `run_fast` (the same values, half the loops).
    if pack is None:
        pack = not _uses(lambda c: step(c, jnp.int32(0)), state, _NO_PACK_PRIMITIVES)
    spec = _pairs(state) if pack else None

    def steps_from(state: _State, t0, k: int) -> _State:
        for j in range(k):
            state = step(state, t0 + j)[0]
        return state

    def advance(state: _State, t0, n: int) -> _State:
        """n updates from update t0, `FUSED_UPDATES` per loop step (as in `run_fast`)."""
        if n == 0:
            return state
        fuse = min(FUSED_UPDATES if pack else FUSED_UPDATES_UNPACKED, n)
        blocks = n // fuse

        def block(packed, b):
            return _packed(steps_from(_unpacked(packed, spec), t0 + b * fuse, fuse), spec), None

        packed, _ = jax.lax.scan(block, _packed(state, spec), jnp.arange(blocks, dtype=jnp.int32))
        return steps_from(_unpacked(packed, spec), t0 + blocks * fuse, n - blocks * fuse)

    path = losses = None
    if record_every > 0:
        blocks = steps // record_every

        def block(state: _State, b: Array) -> tuple[_State, tuple[Array, Array]]:
            state = advance(state, b * record_every, record_every)
            return state, (jnp.stack(state.p), fn(jnp.stack(state.p)))

        state, (path, losses) = jax.lax.scan(block, state, jnp.arange(blocks, dtype=jnp.int32))
        path = jnp.concatenate([x0[None], path])
        losses = jnp.concatenate([fn(x0)[None], losses])
        if steps > blocks * record_every:
            state = advance(state, jnp.int32(blocks * record_every), steps - blocks * record_every)
    else:
        state = advance(state, jnp.int32(0), steps)

    loss, g = vg(state.p)
    steps_to_tol = None
    if track:
        reached = _reached(g, tol, state.steps_to_tol) & (state.diverged_step < 0)
        steps_to_tol = jnp.where(reached, steps, state.steps_to_tol)
    return Run(
        x=jnp.stack(state.p),
        loss=loss,
        grad_norm=jnp.sqrt(_sq_norm(g)),
        diverged=state.diverged_step >= 0,
        diverged_step=state.diverged_step,
        steps_to_tol=steps_to_tol,
        path=path,
        losses=losses,
    )


def run_batched(fn: ScalarFn, x0_Nxd: Array, hyper: dict[str, Array], **kw) -> Run:
    """`run` for N starts at once: vmapped over the starts and over each hyperparameter given
    as an [N] array (scalars are shared), in one jitted call, without the engine's chunks.

    For a few thousand runs whose every update must be checked and that mostly diverge
    (escape times, exact step counts): `sweep.descend` runs them through its fast path
    first and then again through `run`. `kw` are `run`'s keyword arguments (optimizer,
    steps, record_every, tol, bound). Compiles once per call: pass the arrays in the dtype
    wanted (float64 under `jax.enable_x64`).

    Returns:
      A `Run` with a leading [N] axis on every array.
    """
    in_axes = {k: 0 if jnp.ndim(v) else None for k, v in hyper.items()}
    batched = jax.jit(jax.vmap(functools.partial(run, fn, **kw), in_axes=(0, in_axes)))
    return batched(x0_Nxd, hyper)


class FastRun(NamedTuple):
    """`run_fast`'s outcome: x is NaN where the run diverged (re-run those with `run`)."""

    x: Array
    loss: Array
    grad_norm: Array
    steps_to_tol: Array | None


# Updates fused into one pass of the loop (a `lax.scan` step), measured best of 1, 2, 4, 8
# (docs/performance.md): 4 with the carry packed (GD, momentum), 2 without (Adam: 1.2x
# faster than 4).
FUSED_UPDATES = 4
FUSED_UPDATES_UNPACKED = 2
# Primitives after which packing the carry into complex numbers made XLA:CPU's loops
# slower (Adam and RMSprop divide by a square root: 0.7x to 0.9x packed; GD, momentum and
# Lion 1.3x to 2x faster packed; docs/performance.md).
_NO_PACK_PRIMITIVES = frozenset({"sqrt", "rsqrt"})


def run_fast(
    fn: ScalarFn,
    x0: Array,
    hyper: dict[str, Array],
    *,
    optimizer: str = "sgd",
    steps: int,
    tol: Array | float | None = None,
    bound: Array | float = 1e6,
    check_every: int | None = None,
    pack: bool | None = None,
) -> FastRun:
    """The same updates as `run`, with a cheaper divergence check and no recording.

    Every `check_every` updates (default: once, after the last), a point out of bound (or
    non-finite) is replaced by NaN, which then stays NaN. Between checks nothing is tested:
    an update adds to the point, and inf + finite = inf, inf - inf = NaN, NaN + anything =
    NaN, so a run that overflowed or turned NaN at any update is still non-finite at the
    next check. A run that ends finite here took exactly the updates that `run` takes; a
    run that ends as NaN diverged and is re-run with `run` for its last good point and the
    step it diverged at. (A run that leaves the bound and comes back inside it, finite,
    between two checks is not flagged here; `run` would flag it.)

    The loop carries only the point, the optimizer state and the optional tolerance
    counter; `FUSED_UPDATES` whole updates (`FUSED_UPDATES_UNPACKED` without `pack`) are
    fused into one pass over memory. XLA:CPU
    computes each loop-carried array in a loop of its own, and each such loop recomputes
    everything its array depends on (the whole fused update of every coordinate); with
    `pack` (default: unless the update takes a square root, see `_NO_PACK_PRIMITIVES`) the
    carried floats are paired into complex numbers, two per array, which halves the loops
    and the recomputation. The arithmetic is the same: real and imaginary parts are the
    floats themselves.
    """
    opt = optim.make(optimizer, **hyper)
    vg = value_and_grad(fn, x0.shape[0])
    track = tol is not None
    nan = jnp.array(jnp.nan, x0.dtype)
    check_every = steps if check_every is None else min(check_every, steps)

    def updates(carry, t0, n: int):
        p, opt_state, steps_to_tol = carry
        for j in range(n):
            _, g = vg(p)
            if track:
                steps_to_tol = jnp.where(_reached(g, tol, steps_to_tol), t0 + j, steps_to_tol)
            u, opt_state = opt.update(g, opt_state, p)
            p = optax.apply_updates(p, u)
        return p, opt_state, steps_to_tol

    def checked(carry):
        p, opt_state, steps_to_tol = carry
        ok = _in_bound(p, bound)
        return tuple(jnp.where(ok, a, nan) for a in p), opt_state, steps_to_tol

    p0 = _split(x0)
    carry = (p0, opt.init(p0), jnp.array(-1, jnp.int32) if track else None)
    if pack is None:
        pack = not _uses(lambda c: updates(c, jnp.int32(0), 1), carry, _NO_PACK_PRIMITIVES)
    spec = _pairs(carry) if pack else None
    fuse = min(FUSED_UPDATES if pack else FUSED_UPDATES_UNPACKED, check_every)

    def segment(carry, t0, n: int):
        """n updates from update t0 in blocks of `fuse` (one loop step each), then a check."""
        blocks = n // fuse

        def block(packed, b):
            c = updates(_unpacked(packed, spec), t0 + b * fuse, fuse)
            return _packed(c, spec), None

        if blocks:
            packed, _ = jax.lax.scan(
                block, _packed(carry, spec), jnp.arange(blocks, dtype=jnp.int32)
            )
            carry = _unpacked(packed, spec)
        if n > blocks * fuse:
            carry = updates(carry, t0 + blocks * fuse, n - blocks * fuse)
        return checked(carry)

    segments = steps // check_every
    if segments > 1:

        def outer(packed, s):
            c = segment(_unpacked(packed, spec), s * check_every, check_every)
            return _packed(c, spec), None

        packed, _ = jax.lax.scan(outer, _packed(carry, spec), jnp.arange(segments, dtype=jnp.int32))
        carry = _unpacked(packed, spec)
    elif segments == 1:
        carry = segment(carry, jnp.int32(0), check_every)
    if steps > segments * check_every:
        carry = segment(carry, jnp.int32(segments * check_every), steps - segments * check_every)
    p, _, steps_to_tol = carry
    loss, g = vg(p)
    if track:
        steps_to_tol = jnp.where(_reached(g, tol, steps_to_tol), steps, steps_to_tol)
    return FastRun(jnp.stack(p), loss, jnp.sqrt(_sq_norm(g)), steps_to_tol)


def _uses(f: Callable, arg, primitives: frozenset) -> bool:
    """Whether the jaxpr of f(arg) (nested jaxprs included) applies any of `primitives`."""

    def walk(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in primitives:
                return True
            for v in eqn.params.values():
                for sub in v if isinstance(v, tuple | list) else (v,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns") and walk(inner):
                        return True
        return False

    return walk(jax.make_jaxpr(f)(arg).jaxpr)


_COMPLEX = {jnp.dtype(jnp.float32): jnp.complex64, jnp.dtype(jnp.float64): jnp.complex128}


def _pairs(tree) -> tuple:
    """Which leaves of `tree` are packed together: pairs of scalar float32 (or float64)
    leaves of the same dtype, in leaf order."""
    leaves, treedef = jax.tree.flatten(tree)
    by_dtype: dict = {}
    for i, a in enumerate(leaves):
        dt = jnp.dtype(jnp.result_type(a))
        if jnp.shape(a) == () and dt in _COMPLEX:
            by_dtype.setdefault(dt, []).append(i)
    pairs = tuple(pr for idx in by_dtype.values() for pr in zip(idx[0::2], idx[1::2], strict=False))
    return treedef, len(leaves), pairs


def _packed(tree, spec):
    """`tree` as (complex numbers of the paired leaves, the other leaves); spec None: tree."""
    if spec is None:
        return tree
    _, n, pairs = spec
    leaves = jax.tree.leaves(tree)
    paired = {i for pr in pairs for i in pr}
    return (
        tuple(jax.lax.complex(leaves[a], leaves[b]) for a, b in pairs),
        tuple(leaves[i] for i in range(n) if i not in paired),
    )


def _unpacked(packed, spec):
    """The inverse of `_packed`: the floats are the real and imaginary parts, bit for bit."""
    if spec is None:
        return packed
    treedef, n, pairs = spec
    complex_parts, rest = packed
    leaves = [None] * n
    for (a, b), z in zip(pairs, complex_parts, strict=True):
        leaves[a], leaves[b] = jnp.real(z), jnp.imag(z)
    others = iter(rest)
    for i in range(n):
        if leaves[i] is None:
            leaves[i] = next(others)
    return jax.tree.unflatten(treedef, leaves)


# ----------------------------------------------------------------------------- measurements
# Host-side NumPy, on finished runs: how fast a run contracted, where a learning-rate sweep
# stopped converging, and the exact step count of gradient descent on a quadratic.


def geometric_rate(norm_T, *, from_half: bool = False) -> float:
    """The geometric-mean ratio |x_t+1| / |x_t| of a run's norms while they are representable.

    The window is the prefix of norms that are finite and above 1e-30 (n of them): the whole
    prefix, or with `from_half` its second half (from (n - 1) // 2, once the fast modes have
    died out and the slowest mode sets the rate). 0.0 when the prefix is too short to hold
    a ratio (n < 2; n < 3 with `from_half`): the run reached 0 at once.

    Args:
      norm_T: [T] norms of a run's state (or of its distance to the minimum).

    Returns:
      (norm[n - 1] / norm[a]) ** (1 / (n - 1 - a)), a = 0 or (n - 1) // 2.
    """
    norm_T = np.asarray(norm_T)
    if norm_T.ndim != 1:
        raise ValueError(f"`norm_T` must have shape [T], got {norm_T.shape}")
    ok = (norm_T > 1e-30) & np.isfinite(norm_T)
    n = int(np.argmin(ok)) if not ok.all() else len(norm_T)
    if n < (3 if from_half else 2):
        return 0.0
    a = (n - 1) // 2 if from_half else 0
    return float((norm_T[n - 1] / norm_T[a]) ** (1.0 / (n - 1 - a)))


def fitted_rate(norm_NxT, valid_NxT) -> np.ndarray:
    """exp(least-squares slope of log norm against t) over the second half of each run's
    valid prefix: a rate that averages over oscillations (momentum's complex modes).

    Args:
      norm_NxT: [N, T] positive norms.
      valid_NxT: [N, T] bool; a run's fit stops at its first invalid step.

    Returns:
      [N] rates (NaN where fewer than 4 steps are in the window).
    """
    norm_NxT = np.asarray(norm_NxT)
    valid_NxT = np.asarray(valid_NxT, bool)
    if norm_NxT.ndim != 2 or valid_NxT.shape != norm_NxT.shape:
        raise ValueError(
            f"`norm_NxT` and `valid_NxT` must have one shape [N, T], got {norm_NxT.shape} "
            f"and {valid_NxT.shape}"
        )
    t_T = np.arange(norm_NxT.shape[1], dtype=np.float64)
    end_N = np.where(valid_NxT.all(axis=1), norm_NxT.shape[1], np.argmin(valid_NxT, axis=1))
    w_NxT = (t_T >= end_N[:, None] // 2) & (t_T < end_N[:, None])
    y_NxT = np.log(np.where(w_NxT, norm_NxT, 1.0))
    n_N = w_NxT.sum(axis=1)
    safe_N = np.maximum(n_N, 1)
    tm_N = (w_NxT * t_T).sum(axis=1) / safe_N
    ym_N = (w_NxT * y_NxT).sum(axis=1) / safe_N
    dt_NxT = np.where(w_NxT, t_T - tm_N[:, None], 0.0)
    slope_N = (dt_NxT * (y_NxT - ym_N[:, None])).sum(axis=1) / np.maximum(
        (dt_NxT**2).sum(axis=1), 1e-300
    )
    return np.where(n_N >= 4, np.exp(slope_N), np.nan)


def divergence_bracket(lr_L, converged_L) -> tuple[float, float]:
    """Where a learning-rate sweep stops converging: (the largest lr that converged, the
    smallest lr above it that did not).

    NaN for the first when no lr converged (the second is then the smallest lr of the sweep),
    NaN for the second when every lr above the first converged. The threshold lies in
    (first, second] wherever convergence is monotone in the lr.
    """
    lr_L = np.asarray(lr_L)
    ok_L = np.asarray(converged_L, bool)
    if lr_L.ndim != 1 or ok_L.shape != lr_L.shape or not len(lr_L):
        raise ValueError(
            f"`lr_L` and `converged_L` must have one shape [L], L >= 1, got {lr_L.shape} and "
            f"{ok_L.shape}"
        )
    if not ok_L.any():
        return float("nan"), float(lr_L.min())
    last_ok = float(lr_L[ok_L].max())
    above = lr_L[~ok_L & (lr_L > last_ok)]
    return last_ok, float(above.min()) if above.size else float("nan")


def steps_to_tol(a0_NxD, f_NxD, tol: float, budget: int) -> np.ndarray:
    """The exact step count of gradient descent on a quadratic: the first t in [0, budget]
    with sum_i (a0_i f_i^t)^2 <= tol^2, or -1 where there is none; [N] int64.

    GD on a quadratic multiplies each eigencomponent of the gradient (or of the distance to
    the minimum) by f_i = 1 - lr lambda_i per step, so with a0 the start's components this
    is the count `descent.run(..., tol=)` measures (`Run.steps_to_tol`). The sum is a sum of
    exponentials in t, so convex: it falls to its lowest point and rises after it (a mode
    with |f_i| > 1). Two binary searches find the lowest point and the first t before it
    that meets `tol`, about 2 log2(budget) evaluations per run whatever the budget.

    Args:
      a0_NxD: [N, D] the components at t = 0.
      f_NxD: [N, D] the factors per step.
      tol: the tolerance on the norm, >= 0.
      budget: the largest t, >= 0.
    """
    a0 = np.asarray(a0_NxD, np.float64)
    f = np.abs(np.asarray(f_NxD, np.float64))
    if a0.ndim != 2 or f.shape != a0.shape:
        raise ValueError(
            f"`a0_NxD` and `f_NxD` must have one shape [N, D], got {a0.shape} and {f.shape}"
        )
    checks.integer("budget", budget, minimum=0)
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}")

    def g(t):
        with np.errstate(over="ignore"):  # a growing mode's inf is "not reached", as it is
            return np.sum((a0 * f ** t[:, None]) ** 2, axis=1)

    def first(pred, lo, hi):
        """Per row, the first t in (lo, hi] where `pred` holds (monotone there), else hi."""
        while np.any(hi - lo > 1):
            mid = np.floor((lo + hi) / 2)
            ok = pred(np.maximum(mid, 0))
            hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
        return hi

    n = len(a0)
    # The lowest point: the first t whose next step does not go down (budget if none).
    bottom = first(
        lambda t: (g(t + 1) >= g(t)) | (t >= budget), np.full(n, -1.0), np.full(n, float(budget))
    )
    bottom = np.maximum(bottom, 0)
    hit = first(lambda t: g(t) <= tol * tol, np.full(n, -1.0), bottom)
    reached = g(bottom) <= tol * tol
    return np.where(reached, np.maximum(hit, 0), -1).astype(np.int64)
