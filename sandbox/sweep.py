"""Many descent runs at once: vmap over starts x hyperparameters, chunked, sharded.

`descend` is the engine behind every 2-D study: one compiled computation runs a whole chunk of
runs, each with its own start and hyperparameters; chunks of a fixed shape keep memory
bounded for any N and compile once; the run axis of a chunk is split over all JAX devices.
"""

import functools
import math
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from sandbox import descent, landscapes, optim

# Progress bars appear once a sweep has run this many seconds.
PROGRESS_AFTER_S = 3.0
# On CPU, runs advanced together by one device: large enough to amortize the per-step cost
# of XLA's loop (a dozen small kernels for Adam), small enough for the state to stay in L2.
CPU_INNER_BATCH = 16384
# Every device gets a multiple of this many runs per call, so every run goes through the same
# vectorized loop body whatever the chunk size or device count: a run never lands in a
# scalar remainder loop that rounds differently, and results are bitwise independent of
# both.
LANE_BLOCK = 64
# Diverged runs are first re-run for this many steps (most diverge within ten), in chunks of
# a fixed size: one compilation whatever their number.
REDO_HORIZON = 64
REDO_CHUNK_PER_DEVICE = 4096


class Sweep(NamedTuple):
    """Results of N runs, as NumPy arrays (see `descent.Run` for each field).

    Attributes:
      x: [N, d] final points (a diverged run: its last finite, in-bound point).
      loss: [N] final losses.
      grad_norm: [N] final gradient norms.
      diverged: [N] bool.
      diverged_step: [N] int32, -1 where a run did not diverge.
      steps_to_tol: [N] int32, -1 where |grad| never fell to `tol`; None without `tol`.
      path: [N, T', d] or None.
      losses: [N, T'] or None.
    """

    x: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    steps_to_tol: np.ndarray | None = None
    path: np.ndarray | None = None
    losses: np.ndarray | None = None


def descend(
    fn: Callable | str,
    x0: Any,
    *,
    optimizer: str = "sgd",
    steps: int,
    record_every: int = 0,
    chunk_size: int | None = None,
    tol: float | None = None,
    bound: float = 1e6,
    check_every: int = 4,
    exact: bool = False,
    progress: bool | None = None,
    **hyper: Any,
) -> Sweep:
    """Runs N descents of `fn`, one per row of `x0`, each with its own hyperparameters.

    Runs without recording (and without `exact`) go through `descent.run_fast`, which checks
    for divergence every `check_every` updates; the few runs it flags are run again through
    `descent.run`, which checks every update and keeps the last good point. Recorded runs
    use `descent.run`.

    Args:
      fn: a landscape name (`landscapes.names()`) or any pure jnp function of x [d].
      x0: [N, d] starts (float32 unless given as float64 with x64 enabled).
      optimizer: a name of `optim.names()`.
      steps: updates per run, >= 1.
      record_every: record points and losses every this many updates (0: none); at most
        `steps`.
      chunk_size: runs per compiled call; default: chosen from the device kind and the
        memory each run needs. Results do not depend on it.
      tol: gradient-norm tolerance for `steps_to_tol` (None: not tracked, a little faster).
      bound: a coordinate beyond +-bound (or non-finite) marks a run as diverged.
      check_every: updates between two divergence checks of the fast path (>= 1).
      exact: send every run through `descent.run` (checks every update). The same results,
        faster when most runs are expected to diverge or leave the bound (escape-time
        studies), since the fast path would re-run those.
      progress: show a progress bar (default: when the sweep runs more than a few seconds).
      **hyper: hyperparameters of the optimizer (`lr` required), each a scalar (shared by
        all runs) or an [N] array (one value per run).

    Returns:
      A `Sweep` of NumPy arrays with a leading run axis N.
    """
    fn = landscapes.as_fn(fn)
    hyper = optim.resolve(optimizer, hyper)
    x0 = _check_starts(x0)
    n, d = x0.shape
    _check_int("steps", steps, minimum=1)
    _check_int("record_every", record_every, minimum=0)
    _check_int("check_every", check_every, minimum=1)
    if record_every > steps:
        raise ValueError(f"`record_every` must be at most `steps` ({steps}), got {record_every}")
    _check_positive("bound", bound)
    if tol is not None:
        _check_positive("tol", tol)
    per_run, shared = {}, {}
    for k, v in hyper.items():
        a = _check_hyper(k, v, n, x0.dtype)
        (shared if a.ndim == 0 else per_run)[k] = a
    # A bound beyond the largest float of the runs' dtype means "only non-finite diverges".
    bound = min(float(bound), float(np.finfo(x0.dtype).max))
    scalars = {k: np.asarray(v, x0.dtype) for k, v in (("tol", tol), ("bound", bound))}
    scalars = {k: v for k, v in scalars.items() if v.ndim == 0 and not np.isnan(v)}
    if tol is None:
        scalars.pop("tol", None)

    devices = jax.devices()
    nd = len(devices)
    t_rec = descent.num_records(steps, record_every)
    if chunk_size is None:
        chunk_size = default_chunk_size(n, d, t_rec, devices)
    else:
        _check_int("chunk_size", chunk_size, minimum=1)
    inner = _inner_batch(devices)
    key = (fn, optimizer, steps, tuple(sorted(per_run)), tuple(sorted(shared)), tol is not None)

    if record_every == 0 and not exact:
        chunk = _round_chunk(min(chunk_size, n), nd, inner, pow2=n < chunk_size)
        fast = _compiled("fast", *key, check_every, nd, inner)
        outs = _map_chunks(fast, x0, per_run, shared, scalars, chunk, progress, "descend")
        x = outs["x"]
        fields = {
            "x": x,
            "loss": outs["loss"],
            "grad_norm": outs["grad_norm"],
            "diverged": np.zeros(n, bool),
            "diverged_step": np.full(n, -1, np.int32),
            "steps_to_tol": outs["steps_to_tol"],
        }
        redo = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
        # The diverged runs go again through the path that checks every update, for their
        # last good point and divergence step. Most diverge within a few steps, so a short
        # horizon settles them; only the rest run all `steps` again. A run that diverged
        # within the horizon ends exactly as it would after all `steps`: it stays frozen.
        for horizon in sorted({min(steps, REDO_HORIZON), steps}):
            if not redo.size:
                break
            exact_fn = _compiled("exact", fn, optimizer, horizon, *key[3:], 0, nd, inner)
            chunk2 = _round_chunk(min(chunk, REDO_CHUNK_PER_DEVICE * nd), nd, inner)
            sub = _map_chunks(
                exact_fn,
                x0[redo],
                {k: v[redo] for k, v in per_run.items()},
                shared,
                scalars,
                chunk2,
                False,
                "",
            )
            done = sub["diverged"] | (horizon == steps)
            for name in fields:
                if fields[name] is not None:
                    fields[name][redo[done]] = sub[name][done]
            redo = redo[~done]
        return Sweep(**fields)

    chunk = _round_chunk(min(chunk_size, n), nd, inner, pow2=n < chunk_size)
    exact_fn = _compiled("exact", *key, record_every, nd, inner)
    outs = _map_chunks(exact_fn, x0, per_run, shared, scalars, chunk, progress, "descend")
    return Sweep(**{name: outs.get(name) for name in Sweep._fields})


def _map_chunks(compiled, x0, per_run, shared, scalars, chunk, progress, desc) -> dict:
    """Calls `compiled` on fixed-size chunks (the last one padded); concatenates on host."""
    n = len(x0)
    sharding = NamedSharding(_mesh(len(jax.devices())), P("runs"))
    num_chunks = -(-n // chunk)

    def put(a: np.ndarray, lo: int) -> jax.Array:
        part = a[lo : lo + chunk]
        if len(part) < chunk:  # pad with copies of the first run; dropped afterwards
            part = np.concatenate([part, np.repeat(a[:1], chunk - len(part), axis=0)])
        return jax.device_put(part, sharding)

    outputs = []
    with tqdm(
        total=n,
        unit="run",
        desc=desc,
        file=sys.stderr,
        leave=False,
        # None: appear only once the sweep has run for a few seconds.
        disable=not progress if progress is not None else num_chunks < 2,
        delay=0 if progress else PROGRESS_AFTER_S,
    ) as bar:
        pending = None
        for c in range(num_chunks):
            lo = c * chunk
            chunk_per_run = {k: put(v, lo) for k, v in per_run.items()}
            out = compiled(put(x0, lo), chunk_per_run, shared, scalars)
            # Dispatch is asynchronous: copy the previous chunk back while this one runs.
            if pending is not None:
                outputs.append(jax.device_get(pending))
                bar.update(chunk)
            pending = out
        outputs.append(jax.device_get(pending))
        bar.update(n - bar.n)
    return {
        name: None if outputs[0][name] is None else np.concatenate([o[name] for o in outputs])[:n]
        for name in outputs[0]
    }


def _inner_batch(devices: list) -> int | None:
    """Runs that one device advances together on CPU: a few cache-sized vectors' worth."""
    return CPU_INNER_BATCH if devices[0].platform == "cpu" else None


def _round_chunk(chunk: int, nd: int, inner: int | None, pow2: bool = False) -> int:
    """Runs per call: a multiple of `LANE_BLOCK` per device (and of `inner` above it).

    `pow2` rounds up to a power of two first, so sweeps of many different small sizes share
    a few compiled shapes.
    """
    if pow2:
        chunk = 1 << max(0, (chunk - 1).bit_length())
    per_device = -(-chunk // nd)
    per_device = -(-per_device // LANE_BLOCK) * LANE_BLOCK
    if inner and per_device > inner:
        per_device = -(-per_device // inner) * inner
    return per_device * nd


def default_chunk_size(n: int, d: int, t_rec: int, devices: list) -> int:
    """Runs per compiled call: large enough to hide dispatch, small enough to bound memory.

    Without recording a run holds a few dozen bytes, so a call takes up to 2^17 runs per
    device (on CPU these are advanced `CPU_INNER_BATCH` at a time, so their state stays in
    cache); recording keeps T' points per run on the device, which caps the chunk.
    """
    nd = len(devices)
    run_bytes = 4 * (8 * d + 16) + 4 * t_rec * (d + 1)
    cap = (1 << 28 if devices[0].platform == "cpu" else 1 << 31) // run_bytes
    per_device = 1 << 17 if devices[0].platform == "cpu" else 1 << 21
    return max(nd, min(per_device * nd, cap, max(n, 1)))


@functools.lru_cache(maxsize=64)
def _mesh(num_devices: int) -> jax.sharding.Mesh:
    return jax.make_mesh((num_devices,), ("runs",), devices=jax.devices()[:num_devices])


@functools.lru_cache(maxsize=128)
def _compiled(
    mode: str,
    fn: Callable,
    optimizer: str,
    steps: int,
    per_run_names: tuple[str, ...],
    shared_names: tuple[str, ...],
    track_tol: bool,
    option: int,
    num_devices: int,
    inner: int | None,
) -> Callable:
    """One jitted, sharded, vmapped chunk runner per static configuration (no retrace).

    `option` is `check_every` for the fast path and `record_every` for the exact one.
    Hyperparameters shared by all runs stay unbatched scalars, so work that depends only on
    them (Adam's bias corrections) is done once per step, not once per run.
    """
    del per_run_names, shared_names  # cache key only: the dicts passed in have these keys

    def one(x0, per_run, shared, scalars):
        kw = dict(optimizer=optimizer, steps=steps, bound=scalars["bound"])
        kw["tol"] = scalars["tol"] if track_tol else None
        hyper = {**per_run, **shared}
        if mode == "fast":
            r = descent.run_fast(fn, x0, hyper, check_every=option, **kw)
        else:
            r = descent.run(fn, x0, hyper, record_every=option, **kw)
        return r._asdict()

    def per_device(x0, per_run, shared, scalars):
        if inner is None or x0.shape[0] <= inner:
            return jax.vmap(one, in_axes=(0, 0, None, None))(x0, per_run, shared, scalars)
        # lax.map vmaps `one` over `inner` runs at a time: their whole state stays in cache
        # for every step.
        return jax.lax.map(lambda a: one(*a, shared, scalars), (x0, per_run), batch_size=inner)

    sharded = jax.shard_map(
        per_device,
        mesh=_mesh(num_devices),
        in_specs=(P("runs"), P("runs"), P(), P()),
        out_specs=P("runs"),
        # Runs are independent: nothing is communicated, and carries created inside the
        # run (flags, counters) need not be marked as varying over the run axis.
        check_vma=False,
    )
    return jax.jit(sharded)


def _check_starts(x0: Any) -> np.ndarray:
    x0 = np.asarray(x0)
    if x0.ndim != 2 or x0.shape[0] == 0 or x0.shape[1] == 0:
        raise ValueError(f"`x0` must have shape [N, d] with N, d >= 1, got {x0.shape}")
    if not np.issubdtype(x0.dtype, np.floating):
        x0 = x0.astype(np.float32)
    if x0.dtype == np.float64 and not jax.config.jax_enable_x64:
        x0 = x0.astype(np.float32)
    if not np.all(np.isfinite(x0)):
        bad = int(np.argmax(~np.all(np.isfinite(x0), axis=1)))
        raise ValueError(f"`x0` must be finite; row {bad} is {x0[bad]}")
    return np.ascontiguousarray(x0)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")


def _check_positive(name: str, value: Any) -> None:
    if not (np.isscalar(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")


def _check_hyper(name: str, value: Any, n: int, dtype) -> np.ndarray:
    """A scalar (shared) or an [N] array (per run), checked against the hyperparameter's range."""
    if name in optim.INTEGER_HYPERS:
        raw = np.asarray(value)
        if not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"`{name}` must be an integer or an integer array, got {raw.dtype}")
        dtype = np.int32
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 0:
        optim.check_scalar(name, a)
        return a
    if a.shape != (n,):
        raise ValueError(f"`{name}` must be a scalar or have shape [{n}], got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` must be finite everywhere")
    optim.check_scalar(name, float(a.min()))
    optim.check_scalar(name, float(a.max()))
    return a


def grid(bounds: Any, n: int | tuple[int, int]) -> np.ndarray:
    """Starts on a regular grid: [H * W, 2], row-major with y along rows (index i * W + j).

    Args:
      bounds: [2, 2] ((x_lo, x_hi), (y_lo, y_hi)).
      n: points per side, or (H, W).
    """
    h, w = (n, n) if np.isscalar(n) else n
    if h < 1 or w < 1:
        raise ValueError(f"`n` must be >= 1 per side, got {n}")
    b = np.asarray(bounds, dtype=np.float64)
    if b.shape != (2, 2) or not np.all(b[:, 0] < b[:, 1]):
        raise ValueError(f"`bounds` must be [[x_lo, x_hi], [y_lo, y_hi]] increasing, got {b}")
    xs = np.linspace(b[0, 0], b[0, 1], w)
    ys = np.linspace(b[1, 0], b[1, 1], h)
    xx, yy = np.meshgrid(xs, ys)
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)


def log_uniform(key: jax.Array, n: int, lo: float, hi: float) -> np.ndarray:
    """n values log-uniform in [lo, hi] (for learning rates)."""
    if not 0 < lo < hi:
        raise ValueError(f"log-uniform range must satisfy 0 < lo < hi, got ({lo}, {hi})")
    u = jax.random.uniform(key, (n,), minval=math.log(lo), maxval=math.log(hi))
    return np.asarray(jnp.exp(u))
