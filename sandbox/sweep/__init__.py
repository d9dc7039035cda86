"""Many descent runs at once: vmap over starts x hyperparameters, chunked, sharded; and
sweeps as jobs.

`descend` is the engine behind every 2-D study: one compiled computation runs a whole chunk of
runs, each with its own start and hyperparameters; chunks of a fixed shape keep memory
bounded for any N and compile once; the run axis of a chunk is split over all JAX devices.

A sweep can also be a file (a TOML spec, `sandbox.sweep.spec`; examples/sweep.toml explains
every key) computed into a store folder by any number of jobs (`sandbox.sweep.jobs`):

    python -m sandbox.sweep run SPEC --store DIR [--lease S]   # any number of these at once
    python -m sandbox.sweep status DIR
    python -m sandbox.sweep show DIR [--plot]
    python -m sandbox.sweep submit SPEC --store DIR --workers N [--executor slurm|local]

`load(DIR)` returns a finished sweep like `descend` does, with the starts and the axes.
"""

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sandbox import checks, descent, engine, landscapes, optim

# On CPU, runs advanced together by one device: large enough to amortize the per-step cost
# of XLA's loop (a dozen small kernels for Adam), small enough for the state to stay in L2.
CPU_INNER_BATCH = 16384
# Every device gets a multiple of this many runs per call, so every run goes through the same
# vectorized loop body whatever the chunk size or device count: a run never lands in a
# scalar remainder loop that rounds differently, and results are bitwise independent of
# both.
LANE_BLOCK = 64
# Diverged runs are re-run for this many steps first, then those still alive for the next
# horizon, and the rest for all steps (on Himmelblau GD half diverge within 3 steps, 90%
# within 11), in chunks of a few fixed sizes: a few compilations whatever their number.
# Horizons are multiples of descent.FUSED_UPDATES with loops of several steps: a loop of
# one step is compiled as straight code, which may round differently (a horizon of 4 gave
# other last good points than the full run). (16, 128) and 16384 measured 1.1x to 1.5x
# faster overall than (64,) and 4096 (docs/performance.md).
REDO_HORIZONS = (16, 128)
REDO_CHUNK_PER_DEVICE = 16384
REDO_FITS = (64, 16, 4, 1)  # chunk shapes tried: REDO_CHUNK_PER_DEVICE x devices / each


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
    check_every: int | None = None,
    exact: bool = False,
    store: Path | str | None = None,
    lazy: bool = False,
    progress: bool | None = None,
    lease: float | None = None,
    **hyper: Any,
) -> Sweep:
    """Runs N descents of `fn`, one per row of `x0`, each with its own hyperparameters.

    Runs without recording (and without `exact`) go through `descent.run_fast`, which checks
    for divergence every `check_every` updates (by default once, at the end: NaN and
    overflow propagate by themselves); the few runs it flags are run again through
    `descent.run`, which checks every update and keeps the last good point (chunk by chunk,
    as each chunk comes back). Recorded runs use `descent.run`. All of it runs through
    `engine.map_chunks`.

    Args:
      fn: a landscape name (`landscapes.names()`) or any pure jnp function of x [d].
      x0: [N, d] starts (float32 unless given as float64 with x64 enabled).
      optimizer: a name of `optim.names()`.
      steps: updates per run, in [1, 2^31 - 1].
      record_every: record points and losses every this many updates (0: none); at most
        `steps`.
      chunk_size: runs per compiled call; default: chosen from the device kind and the
        memory each run needs. Results do not depend on it.
      tol: gradient-norm tolerance for `steps_to_tol` (None: not tracked, a little faster).
      bound: a coordinate beyond +-bound (or non-finite) marks a run as diverged.
      check_every: updates between two divergence checks of the fast path (>= 1; default
        None: one check after the last update, since non-finite points stay non-finite).
      exact: send every run through `descent.run` (checks every update). The same results,
        faster when most runs are expected to diverge or leave the bound (escape-time
        studies), since the fast path would re-run those.
      store: a folder where finished chunks are kept (`engine.map_chunks`): the same call
        after an interruption computes only what is missing, and any number of processes
        making the same call with a shared folder share the work, each returning the whole
        result.
      lazy: with `store`, return zarr arrays read on demand (for sweeps larger than memory).
      progress: show a progress bar (default: when the sweep runs more than a few seconds).
      lease: with `store`, seconds a claim on a chunk lasts unless renewed
        (`engine.LEASE_S` by default).
      **hyper: hyperparameters of the optimizer (`lr` required), each a scalar (shared by
        all runs) or an [N] array (one value per run).

    Returns:
      A `Sweep` of arrays with a leading run axis N (NumPy; zarr arrays if `lazy`).
    """
    fn, x0, per_run, shared, scalars = _checked(
        fn, x0, optimizer, steps, record_every, check_every, bound, tol, hyper
    )
    n, d = x0.shape
    chunk, inner = _layout(n, d, descent.num_records(steps, record_every), chunk_size)
    static = (fn, optimizer, tuple(sorted(per_run)), tuple(sorted(shared)), tol is not None)
    items = {"x0": x0, **per_run}
    run_shared = {"hyper": shared, "scalars": scalars}
    kw = dict(
        lane=LANE_BLOCK,
        batch=inner,
        store=store,
        lazy=lazy,
        progress=progress,
        desc="descend",
        unit="run",
        lease=lease,
    )
    if record_every or exact:
        one = _one("exact", *static, steps, record_every)
        out = engine.map_chunks(one, items, run_shared, chunk=chunk, **kw)
        return Sweep(**{f: out.get(f) for f in Sweep._fields})

    def finish(out: dict, start: int) -> dict:
        return _redo(out, start, items, run_shared, static, steps, chunk)

    one = _one("fast", *static, steps, check_every)
    out = engine.map_chunks(
        one,
        items,
        run_shared,
        chunk=chunk,
        finish=finish,
        identity={"redo": f"horizons {list(REDO_HORIZONS)}"},
        **kw,
    )
    return Sweep(**{f: out.get(f) for f in Sweep._fields})


def _layout(n: int, d: int, t_rec: int, chunk_size: int | None) -> tuple[int, int | None]:
    """(runs per compiled call, runs a device advances together) of a sweep of n runs."""
    devices = jax.local_devices()
    if chunk_size is None:
        chunk_size = default_chunk_size(n, d, t_rec, devices)
    else:
        checks.integer("chunk_size", chunk_size, minimum=1)
    # Sweeps of many different small sizes share a few compiled shapes.
    return (_pow2(n) if n < chunk_size else chunk_size), _inner_batch(devices)


def _checked(fn, x0, optimizer, steps, record_every, check_every, bound, tol, hyper) -> tuple:
    """`descend`'s arguments checked, one ValueError naming the argument; returns (fn, x0,
    per-run hyperparameters, shared hyperparameters, shared scalars)."""
    name = fn if isinstance(fn, str) else None
    fn = landscapes.as_fn(fn)
    hyper = optim.resolve(optimizer, hyper)
    x0 = _check_starts(x0)
    n, d = x0.shape
    if name is not None and landscapes.get(name).bounds.shape[0] != d:
        dim = landscapes.get(name).bounds.shape[0]
        raise ValueError(
            f"`x0` must have shape [N, {dim}] for the {dim}-D landscape {name!r}, got {x0.shape}"
        )
    _check_fn(fn, d, x0.dtype)
    checks.integer("steps", steps, minimum=1, maximum=checks.INT32_MAX)
    checks.integer("record_every", record_every, minimum=0)
    if record_every > steps:
        raise ValueError(f"`record_every` must be at most `steps` ({steps}), got {record_every}")
    if check_every is not None:
        checks.integer("check_every", check_every, minimum=1)
    checks.positive("bound", bound)
    if tol is not None:
        checks.positive("tol", tol)
    per_run, shared = {}, {}
    for k, v in hyper.items():
        a = _check_hyper(k, v, n, x0.dtype)
        (shared if a.ndim == 0 else per_run)[k] = a
    # A bound beyond the largest float of the runs' dtype means "only non-finite diverges".
    scalars = {"bound": np.asarray(min(float(bound), float(np.finfo(x0.dtype).max)), x0.dtype)}
    if tol is not None:
        scalars["tol"] = np.asarray(tol, x0.dtype)
    return fn, x0, per_run, shared, scalars


def _redo(
    out: dict, start: int, items: dict, shared: dict, static: tuple, steps: int, chunk: int
) -> dict:
    """Runs the diverged runs of one chunk (NaN in the fast path) again through the path that
    checks every update, for their last good point and divergence step.

    Most diverge within a few steps, so a short horizon settles them; only the rest run all
    `steps` again. A run that diverged within the horizon ends exactly as it would after all
    `steps`: it stays frozen.
    """
    redo = np.flatnonzero(~np.all(np.isfinite(out["x"]), axis=1))
    devices = jax.local_devices()
    # On accelerators a device takes all its runs at once: far larger re-run chunks.
    per_device = REDO_CHUNK_PER_DEVICE if devices[0].platform == "cpu" else 1 << 20
    chunk2 = min(chunk, per_device * len(devices))
    for horizon in sorted({*(min(steps, h) for h in REDO_HORIZONS), steps}):
        if not redo.size:
            break
        one = _one("exact", *static, horizon, 0)
        sub_items = {k: v[start + redo] for k, v in items.items()}
        # The checked path costs several fast steps per step: pad the runs that need it to
        # the smallest of a few chunk shapes (one compilation each), not to a full one.
        fits = [max(1, chunk2 // f) for f in REDO_FITS]
        fit = next(c for c in fits if c >= min(redo.size, chunk2))
        sub = engine.map_chunks(
            one,
            sub_items,
            shared,
            chunk=fit,
            lane=LANE_BLOCK,
            batch=_inner_batch(jax.local_devices()),
            store=False,  # part of the chunk being finished, which is stored as a whole
            progress=False,
        )
        done = sub["diverged"] | (horizon == steps)
        for name, a in out.items():
            if a is not None:
                out[name] = a = a if a.flags.writeable else a.copy()
                a[redo[done]] = sub[name][done]
        redo = redo[~done]
    return out


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _inner_batch(devices: list) -> int | None:
    """Runs that one device advances together on CPU: a few cache-sized vectors' worth."""
    return CPU_INNER_BATCH if devices[0].platform == "cpu" else None


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


@functools.lru_cache(maxsize=128)
def _one(
    mode: str,
    fn: Callable,
    optimizer: str,
    per_run_names: tuple[str, ...],
    shared_names: tuple[str, ...],
    track_tol: bool,
    steps: int,
    option: int | None,
) -> Callable:
    """One run as the engine maps it, one closure per static configuration (so the engine's
    compilation cache hits). `option` is `check_every` (fast) or `record_every` (exact).

    Hyperparameters shared by all runs stay unbatched scalars, so work that depends only on
    them (Adam's bias corrections) is done once per step, not once per run.
    """
    del per_run_names, shared_names  # cache key only: the dicts passed in have these keys

    def one(item, shared):
        scalars = shared["scalars"]
        kw = dict(optimizer=optimizer, steps=steps, bound=scalars["bound"])
        kw["tol"] = scalars["tol"] if track_tol else None
        x0 = item["x0"]
        hyper = {**{k: v for k, v in item.items() if k != "x0"}, **shared["hyper"]}
        if mode == "exact":
            return descent.run(fn, x0, hyper, record_every=option, **kw)._asdict()
        r = descent.run_fast(fn, x0, hyper, check_every=option, **kw)
        # The full set of fields; `_redo` fills in the divergence of the NaN runs.
        return {
            **r._asdict(),
            "diverged": jnp.zeros((), bool),
            "diverged_step": jnp.full((), -1, jnp.int32),
        }

    return one


def _check_fn(fn: Callable, d: int, dtype) -> None:
    """`fn` must map one point [d] to a scalar, traceable (no Python control flow on x)."""
    _check_fn_traced(fn, d, np.dtype(dtype).str)


@functools.lru_cache(maxsize=256)
def _check_fn_traced(fn: Callable, d: int, dtype: str) -> None:
    try:
        out = jax.eval_shape(fn, jax.ShapeDtypeStruct((d,), dtype))
    except jax.errors.ConcretizationTypeError:
        raise ValueError(
            "`fn` must be traceable by JAX: it uses Python control flow (if/while/bool) on the "
            "point; use jnp.where or lax.cond"
        ) from None
    except TypeError as e:
        raise ValueError(f"`fn` must take one point x of shape [{d}] ({e})") from None
    if not (hasattr(out, "shape") and out.shape == ()):
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`fn` must return a scalar for x of shape [{d}], got {shape}")


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


# Sweeps as jobs (after `descend`, which they call).
from sandbox.sweep.jobs import Loaded, load, run, show, status, submit  # noqa: E402

__all__ = [
    "Loaded",
    "Sweep",
    "default_chunk_size",
    "descend",
    "grid",
    "load",
    "log_uniform",
    "run",
    "show",
    "status",
    "submit",
]
