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

# Progress bars appear once a sweep is expected to run longer than this many seconds.
PROGRESS_AFTER_S = 3.0


class Sweep(NamedTuple):
    """Results of N runs, as NumPy arrays (see `descent.Run` for each field).

    Attributes:
      x: [N, d] final points.
      loss: [N] final losses.
      grad_norm: [N] final gradient norms.
      diverged: [N] bool.
      diverged_step: [N] int32, -1 where a run did not diverge.
      steps_to_tol: [N] int32, -1 where |grad| never fell to `tol`.
      path: [N, T', d] or None.
      losses: [N, T'] or None.
    """

    x: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    steps_to_tol: np.ndarray
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
    tol: float = 1e-4,
    bound: float = 1e6,
    progress: bool | None = None,
    **hyper: Any,
) -> Sweep:
    """Runs N descents of `fn`, one per row of `x0`, each with its own hyperparameters.

    Args:
      fn: a landscape name (`landscapes.names()`) or any pure jnp function of x [d].
      x0: [N, d] starts (float32 unless given as float64 with x64 enabled).
      optimizer: a name of `optim.names()`.
      steps: updates per run, >= 1.
      record_every: record points and losses every this many updates (0: none); at most
        `steps`.
      chunk_size: runs per compiled call; default: chosen from the device kind and the
        memory each run needs. Results do not depend on it.
      tol: gradient-norm tolerance for `steps_to_tol`.
      bound: a coordinate beyond +-bound (or non-finite) marks a run as diverged.
      progress: show a progress bar (default: when the sweep takes more than a few
        seconds).
      **hyper: hyperparameters of the optimizer (`lr` required), each a scalar or an [N]
        array.

    Returns:
      A `Sweep` of NumPy arrays with a leading run axis N.
    """
    fn = landscapes.as_fn(fn)
    hyper = optim.resolve(optimizer, hyper)
    x0 = _check_starts(x0)
    n, d = x0.shape
    _check_int("steps", steps, minimum=1)
    _check_int("record_every", record_every, minimum=0)
    if record_every > steps:
        raise ValueError(f"`record_every` must be at most `steps` ({steps}), got {record_every}")
    for name, value in (("tol", tol), ("bound", bound)):
        if not (np.isscalar(value) and np.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    hyper_N = {k: _broadcast_hyper(k, v, n, x0.dtype) for k, v in hyper.items()}

    devices = jax.devices()
    t_rec = descent.num_records(steps, record_every)
    if chunk_size is None:
        chunk_size = default_chunk_size(n, d, t_rec, devices)
    else:
        _check_int("chunk_size", chunk_size, minimum=1)
    # Every chunk has the same shape (the last one is padded), so one compilation serves
    # all; the shape is a multiple of the device count so the run axis splits evenly.
    nd = len(devices)
    chunk = min(chunk_size, n)
    chunk = -(-chunk // nd) * nd
    num_chunks = -(-n // chunk)

    compiled = _compiled(fn, optimizer, steps, record_every, tuple(sorted(hyper_N)), nd)
    sharding = NamedSharding(_mesh(nd), P("runs"))
    scalars = (np.asarray(tol, x0.dtype), np.asarray(bound, x0.dtype))

    def put(a: np.ndarray, lo: int) -> jax.Array:
        part = a[lo : lo + chunk]
        if len(part) < chunk:  # pad with copies of the first run; dropped afterwards
            part = np.concatenate([part, np.repeat(a[:1], chunk - len(part), axis=0)])
        return jax.device_put(part, sharding)

    outputs = []
    with tqdm(
        total=n,
        unit="run",
        desc="descend",
        file=sys.stderr,
        leave=False,
        # None: appear only once the sweep has run for a few seconds.
        disable=not progress if progress is not None else num_chunks < 2,
        delay=0 if progress else PROGRESS_AFTER_S,
    ) as bar:
        for c in range(num_chunks):
            lo = c * chunk
            x_chunk = put(x0, lo)
            hyper_chunk = {k: put(v, lo) for k, v in hyper_N.items()}
            outputs.append(jax.device_get(compiled(x_chunk, hyper_chunk, *scalars)))
            bar.update(min(chunk, n - lo))

    fields = {}
    for name in descent.Run._fields:
        parts = [getattr(o, name) for o in outputs]
        fields[name] = None if parts[0] is None else np.concatenate(parts)[:n]
    return Sweep(**fields)


def default_chunk_size(n: int, d: int, t_rec: int, devices: list) -> int:
    """Runs per compiled call: small enough to bound memory, large enough to be fast.

    On CPU each device's share stays cache-sized, since a step streams the whole chunk's
    state; on accelerators chunks are large (the state of 2^20 runs is a few MB) and only
    recording, which keeps T' points per run on the device, limits them.
    """
    nd = len(devices)
    run_bytes = 4 * (8 * d + 16) + 4 * t_rec * (d + 1)
    if devices[0].platform == "cpu":
        per_device = max(1024, min(16384, (1 << 20) // run_bytes))
        memory_cap = (1 << 28) // run_bytes  # 256 MiB of recorded paths per call
    else:
        per_device = 1 << 20
        memory_cap = (1 << 31) // run_bytes  # 2 GiB per call
    return max(nd, min(per_device * nd, memory_cap, max(n, 1)))


@functools.lru_cache(maxsize=64)
def _mesh(num_devices: int) -> jax.sharding.Mesh:
    return jax.make_mesh((num_devices,), ("runs",), devices=jax.devices()[:num_devices])


@functools.lru_cache(maxsize=64)
def _compiled(
    fn: Callable,
    optimizer: str,
    steps: int,
    record_every: int,
    hyper_names: tuple[str, ...],
    num_devices: int,
) -> Callable:
    """One jitted, sharded, vmapped chunk runner per static configuration (no retrace)."""
    del hyper_names  # part of the cache key only: the pytree of hypers has these keys

    def one(x0, hyper, tol, bound):
        return descent.run(
            fn,
            x0,
            hyper,
            optimizer=optimizer,
            steps=steps,
            record_every=record_every,
            tol=tol,
            bound=bound,
        )

    batched = jax.vmap(one, in_axes=(0, 0, None, None))
    sharded = jax.shard_map(
        batched,
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


def _broadcast_hyper(name: str, value: Any, n: int, dtype) -> np.ndarray:
    a = np.asarray(value, dtype=dtype)
    if a.ndim == 0:
        optim.check_scalar(name, a)
        return np.full((n,), a)
    if a.shape != (n,):
        raise ValueError(f"`{name}` must be a scalar or have shape [{n}], got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` must be finite everywhere")
    lo = float(a.min())
    optim.check_scalar(name, lo)
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
