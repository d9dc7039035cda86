"""The explorer: a web server that computes basin maps and trainability tiles live, and its page.

Every view is computed on demand by the library: basin tiles and maps by `sweep.descend` (on
every device JAX has, through `engine.map_chunks`) and `basins.classify`, coloured as
`plotting` colours basins; trainability tiles by `fractal.score_grid` on the fractal study's
network. Nothing sent by the browser is run as code: the landscapes are the registry's 2-D
ones, plus the one function given with `--fn` at start-up.

Endpoints (README.md, "Explorer", lists every parameter): `/api/landscapes`, `/api/config`,
`/api/basins`, `/api/path`, `/tile/{z}/{x}/{y}.png`, `/view.png`, `/api/trainability`,
`/tile/trainability/{z}/{x}/{y}.png`, and the page at `/`. A bad request gets HTTP 400 with
`{"error": "..."}` naming the parameter.

Work: one compute thread takes jobs from a bounded queue (smallest first, so a coarse tile
comes before a fine one, a path before a tile); identical requests in flight share one job,
and queued basin tiles of the same settings are run as one `sweep.descend` call. Finished
tiles are kept in a memory cache and a disk cache, both bounded in bytes. Views whose pixel
spacing float32 cannot resolve are computed in float64.

Run: make explore   (python -m sandbox.explore [--host 127.0.0.1] [--port 8765]
[--fn MODULE:FUNCTION] [--cache DIR])
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import hashlib
import importlib
import inspect
import io
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sandbox import basins, calculus, checks, cli, fractal, landscapes, optim, sweep

STATIC = Path(__file__).with_name("static")
TILE = 256  # pixels per tile side
N_MAX = 1024  # /api/basins: at most N_MAX x N_MAX starts
VIEW_MAX = 2048  # /view.png: at most this many pixels per side
STEPS_MAX = 20_000  # descent steps per run
TRAIN_STEPS_MAX = 5_000  # fractal-network GD steps per run
QUEUE_MAX = 512  # jobs waiting or running; more gets HTTP 503
# Tiles of queued requests run together in one sweep.descend call, at most this many: on a
# CPU small batches, so that labelling and encoding one batch overlaps the descent of the
# next (measured: 4 tiles 0.89x-1.04x of sweep.descend alone, 16 tiles 0.74x-0.77x).
BATCH_TILES_CPU, BATCH_TILES = 4, 16
# A grid resolves in a dtype when its pixel spacing spans at least this many ulps of the
# largest coordinate: below it float32 switches to float64, below it in float64 it is refused.
RESOLVE_ULPS = 64
REACH_TOL = 1e-2  # an endpoint this close to a minimum reached it (as the local_minima study)
# The fractal study's network and window (studies/fractal.py, Config): width 8, seed 0,
# 500 steps, log10 lr1 in (-1, 7), log10 lr2 in (0, 3). sandbox/ does not import studies/.
TRAIN_WIDTH, TRAIN_SEED, TRAIN_STEPS = 8, 0, 500
TRAIN_BOUNDS = np.array([[-1.0, 7.0], [0.0, 3.0]])
TRAIN_PX = (16, 32, 64, 128, 256)  # computed pixels per trainability tile side
TRAIN_GAP = 0.12  # the study's colour gap between the two classes (studies/fractal.py)
LOSS_DECADES = (-8.0, 4.0)  # colour=loss: log10(loss - f_min) from blue to yellow
COLOURS = ("basin", "steps", "loss")
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


class BadRequest(ValueError):
    """A request parameter that is missing, malformed or out of range (HTTP 400)."""


class Busy(RuntimeError):
    """The queue of work is full (HTTP 503)."""


# ----------------------------------------------------------------------------- parameters


def _number(q: dict, name: str, default: float | None = None) -> float:
    """A finite float from the query; `default` when absent (None: required)."""
    raw = q.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"`{name}` is required")
        return default
    try:
        v = float(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be a number, got {raw!r}") from None
    if not math.isfinite(v):
        raise BadRequest(f"`{name}` must be finite, got {raw!r}")
    return v


def _int(q: dict, name: str, default: int | None, lo: int, hi: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"`{name}` is required")
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"`{name}` must be an integer in [{lo}, {hi}], got {v}")
    return v


@dataclasses.dataclass(frozen=True)
class Surface:
    """A 2-D function the explorer serves: a registry landscape or the `--fn` one."""

    name: str
    fn: Callable
    bounds: np.ndarray  # [2, 2]
    minima: np.ndarray  # [k, 2]
    saddles: np.ndarray
    maxima: np.ndarray
    formula: str
    f_min: float
    version: str  # part of every cache key: the function's source digest

    def info(self) -> dict:
        return {
            "name": self.name,
            "formula": self.formula,
            "bounds": self.bounds.tolist(),
            "minima": self.minima.tolist(),
            "saddles": self.saddles.tolist(),
            "maxima": self.maxima.tolist(),
            "f_min": self.f_min if math.isfinite(self.f_min) else None,
            # "#rrggbb" of diverged, not converged, then basin 0, 1, ... (plotting's colours)
            "colours": ["#" + bytes(c).hex() for c in basin_table(len(self.minima))],
            "max_zoom": max_zoom(self.bounds),
            "float32_zoom": max_zoom(self.bounds, np.float32),
        }


def _surface(lscape: landscapes.Landscape, version: str = "") -> Surface:
    minima = landscapes.local_minima(lscape)
    return Surface(
        lscape.name,
        lscape.fn,
        np.asarray(lscape.bounds, np.float64),
        np.asarray(minima, np.float64).reshape(-1, 2),
        np.asarray(lscape.saddles, np.float64).reshape(-1, 2),
        np.asarray(lscape.maxima, np.float64).reshape(-1, 2),
        lscape.formula,
        float(lscape.f_min),
        version,
    )


def load_fn(spec: str, bounds: Sequence[float] = (-5.0, 5.0, -5.0, 5.0)) -> Surface:
    """The `--fn MODULE:FUNCTION` surface: a `landscapes.Landscape` as it is, or a pure jnp
    function of x [2] over `bounds` (x_lo, x_hi, y_lo, y_hi), whose minima are found by
    Newton's method from a 12 x 12 grid of starts and kept if their Hessian is positive
    definite (`calculus`)."""
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"`--fn` must be MODULE:FUNCTION, got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"`--fn` {spec!r} cannot be imported ({e})") from None
    try:
        version = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        version = str(time.time())  # no source: never reuse a disk tile across restarts
    if isinstance(obj, landscapes.Landscape):
        if obj.dim != 2:
            raise ValueError(f"`--fn` must be a 2-D landscape, got {obj.dim}-D")
        return dataclasses.replace(_surface(obj, version), name=spec)
    if not callable(obj):
        raise ValueError(f"`--fn` {spec!r} must be a function of x [2] or a Landscape")
    b = np.asarray(bounds, np.float64).reshape(2, 2)
    if not np.all(np.isfinite(b)) or not np.all(b[:, 0] < b[:, 1]):
        raise ValueError(f"`--bounds` must be x_lo < x_hi, y_lo < y_hi, got {list(bounds)}")
    sweep._check_fn(obj, 2, np.float32)  # one line if it is not a scalar function of x [2]
    with jax.enable_x64(True):
        x = calculus.newton_refine(obj, sweep.grid(b, 12).astype(np.float64))
        ok = np.all(np.isfinite(x), axis=1) & np.all((x >= b[:, 0]) & (x <= b[:, 1]), axis=1)
        kinds = [
            calculus.critical_point_kind(obj, p) if g else "" for p, g in zip(x, ok, strict=True)
        ]
        minima, _, _ = basins.cluster(x[np.array(kinds) == "minimum"], 1e-6)
        values = [float(obj(np.asarray(m))) for m in minima]
    f_min = min(values) if values else -math.inf
    empty = np.zeros((0, 2))
    return Surface(spec, obj, b, minima, empty, empty, spec, f_min, version)


@dataclasses.dataclass(frozen=True)
class Descent:
    """What a basin request asks for: surface, optimizer and its hyperparameters, steps."""

    surface: str
    optimizer: str
    hyper: tuple[tuple[str, float], ...]  # every hyperparameter, defaults filled in
    steps: int
    colour: str
    tol: float

    def key(self) -> str:
        h = ",".join(f"{k}={v!r}" for k, v in self.hyper)
        return f"{self.surface}|{self.optimizer}|{h}|{self.steps}|{self.colour}|{self.tol!r}"


_COMMON = {"landscape", "optimizer", "steps", "colour", "tol"}
_BOX = {"x0", "x1", "y0", "y1"}


def parse_descent(q: dict, surfaces: dict[str, Surface], extra: set[str]) -> Descent:
    """The landscape, optimizer, hyperparameters, steps and colouring of a query."""
    name = q.get("landscape", "himmelblau")
    if name not in surfaces:
        raise BadRequest(f"unknown `landscape` {name!r}; known: {', '.join(sorted(surfaces))}")
    opt = q.get("optimizer", "sgd")
    if opt not in optim.names():
        raise BadRequest(f"unknown `optimizer` {opt!r}; known: {', '.join(optim.names())}")
    defaults = optim.hyperparameters(opt)
    unknown = sorted(set(q) - _COMMON - extra - set(defaults) - {"learning_rate"})
    if unknown:
        names = ", ".join(f"`{k}`" for k in unknown)
        raise BadRequest(
            f"unknown parameter(s) {names}; optimizer {opt!r} takes {sorted(defaults)}"
        )
    hyper = {}
    for k, default in defaults.items():
        if k in optim.INTEGER_HYPERS:
            hyper[k] = float(_int(q, k, default, 0, checks.INT32_MAX))
        else:
            hyper[k] = _number(q, k, default)
    try:
        resolved = optim.resolve(opt, hyper)
        for k, v in resolved.items():
            optim.check_scalar(k, v)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    colour = q.get("colour", "basin")
    if colour not in COLOURS:
        raise BadRequest(f"`colour` must be one of {', '.join(COLOURS)}, got {colour!r}")
    tol = _number(q, "tol", 1e-3)
    if tol <= 0:
        raise BadRequest(f"`tol` must be positive, got {tol}")
    steps = _int(q, "steps", 1000, 1, STEPS_MAX)
    return Descent(name, opt, tuple(sorted(resolved.items())), steps, colour, tol)


def parse_box(q: dict) -> np.ndarray:
    """(x0, x1, y0, y1) of the query as [[x0, x1], [y0, y1]], increasing."""
    x0, x1, y0, y1 = (_number(q, k) for k in ("x0", "x1", "y0", "y1"))
    if not x0 < x1:
        raise BadRequest(f"`x0` must be below `x1`, got x0={x0}, x1={x1}")
    if not y0 < y1:
        raise BadRequest(f"`y0` must be below `y1`, got y0={y0}, y1={y1}")
    return np.array([[x0, x1], [y0, y1]])


def precision(box: np.ndarray, nx: int, ny: int, what: str) -> bool:
    """Whether an nx x ny grid over `box` needs float64 (False: float32 resolves it).

    A grid resolves in a dtype when its pixel spacing is at least RESOLVE_ULPS ulps of the
    largest coordinate of the box; a grid float64 does not resolve is a BadRequest naming
    `what` (the zoom, or the bounds).
    """
    spacing = min((box[0, 1] - box[0, 0]) / nx, (box[1, 1] - box[1, 0]) / ny)
    scale = max(float(np.max(np.abs(box))), 1e-300)
    if spacing >= RESOLVE_ULPS * np.finfo(np.float32).eps * scale:
        return False
    if spacing >= RESOLVE_ULPS * np.finfo(np.float64).eps * scale:
        return True
    raise BadRequest(
        f"`{what}` is beyond what float64 resolves: a pixel spacing of {spacing:.3g} at "
        f"coordinates up to {scale:.3g} (at least {RESOLVE_ULPS} ulps are needed)"
    )


def max_zoom(bounds: np.ndarray, dtype=np.float64) -> int:
    """The deepest tile zoom over `bounds` that `dtype` resolves (`precision`)."""
    z = 0
    while z < 60:
        b = tile_box(bounds, z + 1, 0, 0)
        spacing = min(b[0, 1] - b[0, 0], b[1, 1] - b[1, 0]) / TILE
        if spacing < RESOLVE_ULPS * np.finfo(dtype).eps * float(np.max(np.abs(bounds))):
            break
        z += 1
    return z


def tile_box(bounds: np.ndarray, z: int, x: int, y: int) -> np.ndarray:
    """The box [[x_lo, x_hi], [y_lo, y_hi]] of slippy-map tile (z, x, y) over `bounds`:
    zoom 0 is one tile over the bounds, tile y = 0 at the top (largest y)."""
    w = (bounds[0, 1] - bounds[0, 0]) / 2.0**z
    h = (bounds[1, 1] - bounds[1, 0]) / 2.0**z
    xl = bounds[0, 0] + x * w
    yh = bounds[1, 1] - y * h
    return np.array([[xl, xl + w], [yh - h, yh]])


def parse_tile(z: str, x: str, y: str) -> tuple[int, int, int]:
    q = {"z": z, "x": x, "y": y}
    zi = _int(q, "z", None, 0, 60)
    return zi, _int(q, "x", None, 0, 2**zi - 1), _int(q, "y", None, 0, 2**zi - 1)


def centres(box: np.ndarray, nx: int, ny: int, x64: bool) -> np.ndarray:
    """Pixel-centre starts [ny * nx, 2], row i at y = y0 + (i + 0.5)(y1 - y0)/ny, column j
    at x = x0 + (j + 0.5)(x1 - x0)/nx (row 0 at y0), row-major."""
    xs = box[0, 0] + (np.arange(nx) + 0.5) * (box[0, 1] - box[0, 0]) / nx
    ys = box[1, 0] + (np.arange(ny) + 0.5) * (box[1, 1] - box[1, 0]) / ny
    xx, yy = np.meshgrid(xs, ys)
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64 if x64 else np.float32)


# ----------------------------------------------------------------------------- colours


def basin_table(k: int) -> np.ndarray:
    """uint8 RGB [k + 2, 3]: row 0 diverged, row 1 not converged, row 2 + i basin i, in the
    colours of `plotting.basin_image`."""
    from sandbox import plotting

    rgba = np.concatenate(
        [[plotting.DIVERGED_COLOR, plotting.NOT_CONVERGED_COLOR], plotting.basin_palette(k)]
    )
    return np.round(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)


def _png(index_HxW: np.ndarray, table_Cx3: np.ndarray) -> bytes:
    """A palette PNG: pixel (i, j) has colour table[index[i, j]] (row 0 at the top)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(index_HxW, np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(table_Cx3)] = table_Cx3
    img.putpalette(pal.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _cmap_table(name: str, n: int = 254) -> np.ndarray:
    import matplotlib as mpl

    return np.round(mpl.colormaps[name](np.linspace(0, 1, n))[:, :3] * 255).astype(np.uint8)


def render_basins(labels_HxW, k: int) -> bytes:
    """Labels (row 0 at the bottom) as a PNG in the basin colours (top row first)."""
    return _png(np.asarray(labels_HxW)[::-1] + 2, basin_table(k))


def render_scalar(v_HxW: np.ndarray, lo: float, hi: float, special_HxW, special_rgb) -> bytes:
    """Values in [lo, hi] on viridis (row 0 at the bottom); `special` pixels in one colour."""
    t = np.clip((np.asarray(v_HxW, np.float64) - lo) / (hi - lo), 0, 1)
    idx = 1 + np.round(np.nan_to_num(t) * 253).astype(np.int64)
    idx[np.asarray(special_HxW)] = 0
    table = np.concatenate([[special_rgb], _cmap_table("viridis")]).astype(np.uint8)
    return _png(idx[::-1], table)


def train_table() -> np.ndarray:
    """uint8 RGB [256, 3] for the trainability score: the study's RdBu colours with a gap
    between the classes (index 0..127 diverged, -1 to 0; 128..255 trainable, 0 to 1)."""
    s = np.concatenate([np.linspace(-1, -1e-9, 128), np.linspace(1e-9, 1, 128)])
    d = np.sign(s) * (TRAIN_GAP + (1 - TRAIN_GAP) * np.abs(s))
    import matplotlib as mpl

    rgb = mpl.colormaps["RdBu"]((d + 1) / 2)[:, :3]
    return np.round(rgb * 255).astype(np.uint8)


def score_index(score_HxW: np.ndarray) -> np.ndarray:
    """Score [-1, 1] -> index of `train_table` (< 128 exactly where the score is < 0)."""
    s = np.asarray(score_HxW, np.float64)
    neg = np.clip(np.round((s + 1) * 127).astype(np.int64), 0, 127)
    pos = np.clip(128 + np.round(s * 127).astype(np.int64), 128, 255)
    return np.where(s > 0, pos, neg)


# ----------------------------------------------------------------------------- caches


class MemoryCache:
    """Least recently used bytes, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self.items: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self.lock:
            v = self.items.get(key)
            if v is not None:
                self.items.move_to_end(key)
            return v

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        with self.lock:
            old = self.items.pop(key, None)
            self.size += len(value) - (len(old) if old is not None else 0)
            self.items[key] = value
            while self.size > self.max_bytes:
                _, v = self.items.popitem(last=False)
                self.size -= len(v)


class DiskCache:
    """Files named by the digest of their key in `root`, at most `max_bytes` in all: past
    it the least recently used go (atime is unreliable, so a hit touches the file)."""

    def __init__(self, root: Path, max_bytes: int):
        self.root, self.max_bytes = Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.size = sum(p.stat().st_size for p in self.root.glob("*.bin"))

    def _path(self, key: str) -> Path:
        return self.root / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".bin")

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            data = p.read_bytes()
            os.utime(p)
        except OSError:
            return None
        return data

    def put(self, key: str, value: bytes) -> None:
        if len(value) > self.max_bytes:
            return
        p = self._path(key)
        tmp = p.with_suffix(f".{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(value)
            os.replace(tmp, p)
        except OSError:  # a full or read-only disk costs the cache, not the request
            tmp.unlink(missing_ok=True)
            return
        with self.lock:
            self.size += len(value)
            if self.size > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        files = []
        for f in self.root.glob("*.bin"):
            try:
                st = f.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, f))
        files.sort()
        self.size = sum(s for _, s, _ in files)
        for _, s, f in files:
            if self.size <= self.max_bytes * 0.9:
                break
            f.unlink(missing_ok=True)
            self.size -= s


# ----------------------------------------------------------------------------- work


@dataclasses.dataclass(eq=False)
class Job:
    """One computation: `run(jobs)` computes a group of jobs with the same `group` (their
    results set on each job's future); smaller `priority` first."""

    key: str
    priority: float
    group: Any
    run: Callable[[list["Job"]], None]
    payload: Any
    size: int = 1
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    seq: int = 0
    waiters: int = 0  # requests waiting for it; a queued job nobody waits for is dropped


class Worker:
    """One compute thread over a bounded queue; identical keys in flight share one job."""

    def __init__(
        self, max_jobs: int = QUEUE_MAX, batch_max: int | None = None, batch_wait: float = 0.01
    ):
        if batch_max is None:
            cpu = jax.local_devices()[0].platform == "cpu"
            batch_max = TILE * TILE * (BATCH_TILES_CPU if cpu else BATCH_TILES)
        self.max_jobs, self.batch_max, self.batch_wait = max_jobs, batch_max, batch_wait
        self.pending: list[Job] = []
        self.inflight: dict[str, Job] = {}
        self.cond = threading.Condition()
        self.seq = 0
        self.computed = 0  # jobs computed (not shared, not cached): tests count them
        self.dropped = 0  # queued jobs dropped because every request for them went away
        self.stopped = False
        self.thread = threading.Thread(target=self._loop, name="explore-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Job:
        """Queues `job`, or returns the identical job already in flight; either way one
        more request waits for the returned job (`release` when it stops waiting)."""
        with self.cond:
            same = self.inflight.get(job.key)
            if same is not None:
                same.waiters += 1
                return same
            if len(self.inflight) >= self.max_jobs:
                raise Busy(f"{len(self.inflight)} computations queued; retry shortly")
            self.seq += 1
            job.seq, job.waiters = self.seq, 1
            self.inflight[job.key] = job
            self.pending.append(job)
            self.cond.notify()
        job.future.add_done_callback(lambda _, job=job: self._done(job))
        return job

    def _done(self, job: Job) -> None:
        """A job's result is set (or it failed or was dropped): no longer in flight."""
        with self.cond:
            if self.inflight.get(job.key) is job:
                del self.inflight[job.key]

    def release(self, job: Job) -> None:
        """One request stopped waiting (its client went away, e.g. a tile scrolled out of
        view): a job still queued that nobody waits for is dropped."""
        with self.cond:
            job.waiters -= 1
            if job.waiters <= 0 and job in self.pending:
                self.pending.remove(job)
                self.inflight.pop(job.key, None)
                self.dropped += 1
                job.future.cancel()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def _take(self) -> list[Job] | None:
        with self.cond:
            while not self.pending and not self.stopped:
                self.cond.wait()
            if len(self.pending) == 1 and self.pending[0].group is not None:
                # The other tiles of a screen arrive within milliseconds: wait for them,
                # so they run as one batch.
                deadline = time.monotonic() + self.batch_wait
                while (left := deadline - time.monotonic()) > 0 and not self.stopped:
                    self.cond.wait(left)
            if self.stopped:
                return None
            first = min(self.pending, key=lambda j: (j.priority, j.seq))
            group = [first]
            if first.group is not None:
                total = first.size
                for j in sorted(self.pending, key=lambda j: j.seq):
                    if j is not first and j.group == first.group:
                        if total + j.size > self.batch_max:
                            break
                        group.append(j)
                        total += j.size
            for j in group:
                self.pending.remove(j)
            self.computed += len(group)
            return group

    def _loop(self) -> None:
        while (group := self._take()) is not None:
            try:
                group[0].run(group)
            except Exception as e:  # the server keeps serving; the requests get a 500
                for j in group:
                    if not j.future.done():
                        j.future.set_exception(e)


# ----------------------------------------------------------------------------- the explorer


class Explorer:
    """The state behind the app: surfaces, caches, the worker and the fractal network."""

    def __init__(
        self,
        fn: str | None = None,
        *,
        bounds: Sequence[float] = (-5.0, 5.0, -5.0, 5.0),
        cache_dir: Path | str | None = None,
        memory_bytes: int = 64 << 20,
        disk_bytes: int = 512 << 20,
        queue_max: int = QUEUE_MAX,
    ):
        self.version = _code_version()
        self.surfaces = {
            n: _surface(landscapes.get(n), self.version)
            for n in landscapes.names()
            if landscapes.get(n).dim == 2
        }
        if fn is not None:
            s = load_fn(fn, bounds)
            self.surfaces[s.name] = s
        self.infos = [s.info() for s in self.surfaces.values()]  # (imports matplotlib now)
        self.memory = MemoryCache(memory_bytes)
        self.disk = DiskCache(Path(cache_dir), disk_bytes) if cache_dir else None
        self.worker = Worker(queue_max)  # basins, views, paths
        # Trainability tiles cost up to a minute each on a CPU: a queue of their own, so
        # that they never hold up the basin maps.
        self.train_worker = Worker(queue_max)
        self.finishers = concurrent.futures.ThreadPoolExecutor(
            os.cpu_count() or 1, thread_name_prefix="explore-finish"
        )
        self._train_problem = None
        self._train_lock = threading.Lock()

    # -- caching and dedup

    def cached(self, key: str) -> bytes | None:
        v = self.memory.get(key)
        if v is None and self.disk is not None:
            v = self.disk.get(key)
            if v is not None:
                self.memory.put(key, v)
        return v

    def store(self, key: str, value: bytes) -> None:
        self.memory.put(key, value)
        if self.disk is not None:
            self.disk.put(key, value)

    # -- basins

    def basin_job(self, d: Descent, box, nx, ny, out: str, key: str, priority: float) -> Job:
        """A job that labels an nx x ny grid over `box` and renders it as `out` ("json",
        "png"); tiles and views of the same settings and dtype are batched."""
        s = self.surfaces[d.surface]
        x64 = precision(box, nx, ny, "z" if out == "png" else "x0")
        starts = centres(box, nx, ny, x64)
        return Job(
            key,
            priority,
            (d, x64),
            lambda jobs: self._run_basins(jobs, s, d, x64),
            (starts, nx, ny, out),
            size=len(starts),
        )

    def _run_basins(self, jobs: list[Job], s: Surface, d: Descent, x64: bool) -> None:
        hyper = dict(d.hyper)
        if "seed" in hyper:
            hyper["seed"] = int(hyper["seed"])
        x0 = np.concatenate([j.payload[0] for j in jobs])
        # Batches of tiles in chunks of a fixed shape: one compilation whatever the number
        # of tiles, and a batch pads to a multiple of it, not to the next power of two.
        chunk = tile_chunk() if len(x0) > TILE * TILE else None
        with jax.enable_x64(x64):
            tol = d.tol if d.colour == "steps" else None
            run = sweep.descend(
                s.fn,
                x0,
                optimizer=d.optimizer,
                steps=d.steps,
                tol=tol,
                chunk_size=chunk,
                progress=False,
                **hyper,
            )
        bounds = np.cumsum([0] + [len(j.payload[0]) for j in jobs])
        # Labels and PNGs job by job on every core (NumPy and zlib release the GIL).
        # Not waited for: the worker starts the next batch meanwhile.
        for j, lo, hi in zip(jobs, bounds[:-1], bounds[1:], strict=True):
            self.finishers.submit(self._finish_or_fail, j, lo, hi, s, d, run)

    def _finish_or_fail(self, j: Job, *args) -> None:
        try:
            self._finish(j, *args)
        except Exception as e:  # the request gets a 500; the server keeps serving
            if not j.future.done():
                j.future.set_exception(e)

    def _finish(self, j: Job, lo: int, hi: int, s: Surface, d: Descent, run) -> None:
        """Labels (as `basins.classify`) and renders one job's runs [lo, hi) of a batch."""
        _, nx, ny, out = j.payload
        sl = slice(lo, hi)
        labels = basins.classify(run.x[sl], s.minima, REACH_TOL, run.diverged[sl])
        lab = labels.reshape(ny, nx)
        if out == "json":
            j.future.set_result(self._basins_json(s, lab))
            return
        if d.colour == "basin":
            png = render_basins(lab, len(s.minima))
        elif d.colour == "steps":
            st = run.steps_to_tol[sl].reshape(ny, nx).astype(np.float64)
            png = render_scalar(
                np.log10(np.maximum(st, 1)), 0, math.log10(d.steps), st < 0, (40, 40, 40)
            )
        else:
            gap = run.loss[sl].astype(np.float64) - (s.f_min if math.isfinite(s.f_min) else 0)
            v = np.log10(np.maximum(gap, 1e-300)).reshape(ny, nx)
            png = render_scalar(v, *LOSS_DECADES, lab == basins.DIVERGED, (0, 0, 0))
        self.store(j.key, png)
        j.future.set_result(png)

    def _basins_json(self, s: Surface, lab: np.ndarray) -> bytes:
        frac = basins.fractions(lab, len(s.minima))
        fr = {str(i): float(f) for i, f in enumerate(frac[:-2])}
        fr["not_converged"], fr["diverged"] = float(frac[-2]), float(frac[-1])
        return json.dumps(
            {"labels": lab.tolist(), "minima": s.minima.tolist(), "fractions": fr}
        ).encode()

    def path_job(self, d: Descent, x: float, y: float, z: int, key: str) -> Job:
        """A job that records the run from (x, y), in the dtype of its tile at zoom z."""
        s = self.surfaces[d.surface]
        b, n = s.bounds, 2**z
        tx = int(np.clip((x - b[0, 0]) / (b[0, 1] - b[0, 0]) * n, 0, n - 1))
        ty = int(np.clip((b[1, 1] - y) / (b[1, 1] - b[1, 0]) * n, 0, n - 1))
        x64 = precision(tile_box(b, z, tx, ty), TILE, TILE, "z")
        every = max(1, d.steps // 500)

        def run(jobs: list[Job]) -> None:
            hyper = dict(d.hyper)
            if "seed" in hyper:
                hyper["seed"] = int(hyper["seed"])
            with jax.enable_x64(x64):
                x0 = np.array([[x, y]], np.float64 if x64 else np.float32)
                r = sweep.descend(
                    s.fn,
                    x0,
                    optimizer=d.optimizer,
                    steps=d.steps,
                    record_every=every,
                    tol=d.tol,
                    progress=False,
                    **hyper,
                )
            label = int(basins.classify(r.x, s.minima, REACH_TOL, r.diverged)[0])
            path = r.path[0].astype(np.float64)  # the start, then every `every` updates
            losses = r.losses[0].astype(np.float64)
            steps_rec = np.arange(len(path)) * every
            finite = np.all(np.isfinite(path), axis=1) & np.isfinite(losses)
            body = {
                "start": [x, y],
                "path": path[finite].tolist(),
                "losses": losses[finite].tolist(),
                "steps": steps_rec[finite].tolist(),
                "label": label,
                "diverged": bool(r.diverged[0]),
                "diverged_step": int(r.diverged_step[0]),
                "steps_to_tol": int(r.steps_to_tol[0]),
                "final": r.x[0].astype(np.float64).tolist(),
                "final_loss": float(r.loss[0]),
                "x64": x64,
            }
            jobs[0].future.set_result(json.dumps(body).encode())

        return Job(key, 0.0, None, run, None)

    # -- trainability

    def train_problem(self, width: int, seed: int):
        with self._train_lock:
            if self._train_problem is None or self._train_problem[0] != (width, seed):
                with jax.enable_x64(True):
                    p = fractal.problem(jax.random.key(seed), width)
                self._train_problem = ((width, seed), p)
            return self._train_problem[1]

    def train_job(self, box, nx, ny, steps, width, seed, out, key, priority, what) -> Job:
        precision(box, nx, ny, what)  # float64 always (as the study); refuse what it cannot

        def run(jobs: list[Job]) -> None:
            params, data = self.train_problem(width, seed)
            lr1 = 10.0 ** (box[0, 0] + (np.arange(nx) + 0.5) * (box[0, 1] - box[0, 0]) / nx)
            lr2 = 10.0 ** (box[1, 0] + (np.arange(ny) + 0.5) * (box[1, 1] - box[1, 0]) / ny)
            batch = 64 if jax.devices()[0].platform == "cpu" else 16384
            # Rows in blocks of about fractal.GRID_CHUNK runs: a tile nobody waits for any
            # more (scrolled away while it ran) stops at the next block.
            rows = max(1, fractal.GRID_CHUNK // nx)
            blocks = []
            for r0 in range(0, ny, rows):
                if r0 and all(j.waiters <= 0 for j in jobs):
                    for j in jobs:
                        j.future.cancel()
                    return
                with jax.enable_x64(True):
                    blocks.append(
                        fractal.score_grid(
                            params,
                            data,
                            lr1,
                            lr2[r0 : r0 + rows],
                            steps=steps,
                            batch_size=min(batch, nx * ny),
                        )
                    )
            score = np.concatenate(blocks)
            for j in jobs:
                if out == "json":
                    body = {"score": score.tolist(), "trainable": (score > 0).tolist()}
                    j.future.set_result(json.dumps(body).encode())
                    continue
                idx = score_index(score)[::-1]
                rep = TILE // nx
                png = _png(np.repeat(np.repeat(idx, rep, 0), rep, 1), train_table())
                self.store(j.key, png)
                j.future.set_result(png)

        return Job(key, priority, None, run, None, size=nx * ny)


def tile_chunk() -> int:
    """Runs per compiled call for batches of basin tiles: one tile per CPU device (each
    advances them `sweep.CPU_INNER_BATCH` at a time), four tiles on an accelerator."""
    devices = jax.local_devices()
    return TILE * TILE * (len(devices) if devices[0].platform == "cpu" else 4)


def _code_version() -> str:
    """Digest of the library files a tile depends on: a disk tile of older code is not reused."""
    h = hashlib.sha256()
    for name in (
        "basins",
        "descent",
        "engine",
        "explore",
        "fractal",
        "landscapes",
        "optim",
        "plotting",
        "sweep",
    ):
        h.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the app


def app(explorer: Explorer):
    """The Starlette application over `explorer`."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    ex = explorer
    no_store = {"Cache-Control": "no-store"}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=no_store)

    async def answer(request, job: Job, media: str, keep: bool, worker=None) -> Response:
        """Waits for a job (shared with identical requests) off the event loop; a client
        that goes away stops waiting, so a job nobody wants any more is not computed."""
        worker = worker or ex.worker
        job = worker.submit(job)
        fut = asyncio.wrap_future(job.future)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    worker.release(job)
                    return Response(status_code=499)
        except asyncio.CancelledError:
            worker.release(job)
            raise
        body = fut.result()
        headers = {"Cache-Control": "public, max-age=86400"} if keep else no_store
        return Response(body, media_type=media, headers=headers)

    def guarded(handler):
        async def wrapped(request):
            try:
                return await handler(request)
            except ValueError as e:  # BadRequest, or a library check (names the argument)
                return error(400, str(e))
            except Busy as e:
                return error(503, str(e))
            except Exception as e:  # a bug: the request fails, the server keeps serving
                return error(500, f"{type(e).__name__}: {e}")

        return wrapped

    async def landscapes_(request):
        return JSONResponse(ex.infos)

    async def config(request):
        return JSONResponse(
            {
                "optimizers": {n: optim.hyperparameters(n) for n in optim.names()},
                "colours": list(COLOURS),
                "tile": TILE,
                "limits": {
                    "n": N_MAX,
                    "view": VIEW_MAX,
                    "steps": STEPS_MAX,
                    "train_steps": TRAIN_STEPS_MAX,
                    "queue": QUEUE_MAX,
                },
                "trainability": {
                    "bounds": TRAIN_BOUNDS.tolist(),
                    "steps": TRAIN_STEPS,
                    "width": TRAIN_WIDTH,
                    "seed": TRAIN_SEED,
                    "px": list(TRAIN_PX),
                    "max_zoom": max_zoom(TRAIN_BOUNDS),
                },
            }
        )

    def query(request) -> dict:
        return dict(request.query_params)

    async def basins_(request):
        q = query(request)
        d = parse_descent(q, ex.surfaces, _BOX | {"n"})
        box = parse_box(q)
        n = _int(q, "n", 64, 1, N_MAX)
        key = f"basins|{ex.version}|{d.key()}|{box.tolist()!r}|{n}"
        # After the tiles in the queue: the map comes first, the numbers of the view next.
        job = ex.basin_job(d, box, n, n, "json", key, float(TILE * TILE + n * n))
        return await answer(request, job, "application/json", False)

    async def tile(request):
        p = request.path_params
        z, x, y = parse_tile(p["z"], p["x"], p["y"])
        q = query(request)
        d = parse_descent(q, ex.surfaces, set())
        s = ex.surfaces[d.surface]
        key = f"tile|{ex.version}|{s.version}|{d.key()}|{z}/{x}/{y}"
        hit = ex.cached(key)
        if hit is not None:
            return Response(hit, media_type="image/png")
        box = tile_box(s.bounds, z, x, y)
        job = ex.basin_job(d, box, TILE, TILE, "png", key, float(TILE * TILE))
        return await answer(request, job, "image/png", True)

    async def view(request):
        q = query(request)
        d = parse_descent(q, ex.surfaces, _BOX | {"w", "h"})
        box = parse_box(q)
        w, h = _int(q, "w", 512, 1, VIEW_MAX), _int(q, "h", 512, 1, VIEW_MAX)
        key = f"view|{ex.version}|{d.key()}|{box.tolist()!r}|{w}x{h}"
        job = ex.basin_job(d, box, w, h, "png", key, float(w * h))
        return await answer(request, job, "image/png", False)

    async def path(request):
        q = query(request)
        d = parse_descent(q, ex.surfaces, {"x", "y", "z"})
        x, y = _number(q, "x"), _number(q, "y")
        z = _int(q, "z", 0, 0, 60)
        key = f"path|{ex.version}|{d.key()}|{x!r},{y!r},{z}"
        return await answer(request, ex.path_job(d, x, y, z, key), "application/json", False)

    def train_params(q: dict, extra: set[str]) -> tuple[int, int, int]:
        unknown = sorted(set(q) - {"steps", "width", "seed"} - extra)
        if unknown:
            names = ", ".join(f"`{k}`" for k in unknown)
            raise BadRequest(f"unknown parameter(s) {names}; takes steps, width, seed")
        steps = _int(q, "steps", TRAIN_STEPS, fractal.WINDOW, TRAIN_STEPS_MAX)
        return steps, _int(q, "width", TRAIN_WIDTH, 1, 64), _int(q, "seed", TRAIN_SEED, 0, 2**31)

    async def trainability(request):
        q = query(request)
        steps, width, seed = train_params(q, _BOX | {"n"})
        box = parse_box(q)
        n = _int(q, "n", 32, 1, N_MAX)
        key = f"train|{ex.version}|{steps},{width},{seed}|{box.tolist()!r}|{n}"
        job = ex.train_job(box, n, n, steps, width, seed, "json", key, float(n * n), "x0")
        return await answer(request, job, "application/json", False, ex.train_worker)

    async def train_tile(request):
        p = request.path_params
        z, x, y = parse_tile(p["z"], p["x"], p["y"])
        q = query(request)
        steps, width, seed = train_params(q, {"px"})
        px = _int(q, "px", TILE, 1, TILE)
        if px not in TRAIN_PX:
            raise BadRequest(f"`px` must be one of {list(TRAIN_PX)}, got {px}")
        key = f"ttile|{ex.version}|{steps},{width},{seed}|{px}|{z}/{x}/{y}"
        hit = ex.cached(key)
        if hit is not None:
            return Response(hit, media_type="image/png")
        box = tile_box(TRAIN_BOUNDS, z, x, y)
        job = ex.train_job(box, px, px, steps, width, seed, "png", key, float(px * px), "z")
        return await answer(request, job, "image/png", True, ex.train_worker)

    async def index(request):
        return FileResponse(STATIC / "index.html", headers=no_store)

    async def not_found(request, exc):
        return error(exc.status_code, exc.detail or "not found")

    routes = [
        Route("/", index),
        Route("/api/landscapes", guarded(landscapes_)),
        Route("/api/config", guarded(config)),
        Route("/api/basins", guarded(basins_)),
        Route("/api/path", guarded(path)),
        Route("/api/trainability", guarded(trainability)),
        Route("/view.png", guarded(view)),
        Route("/tile/trainability/{z}/{x}/{y}.png", guarded(train_tile)),
        Route("/tile/{z}/{x}/{y}.png", guarded(tile)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})


# ----------------------------------------------------------------------------- serving


class Server:
    """uvicorn serving `app(explorer)` in a thread: `start()` returns once it listens."""

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.explorer = explorer
        cfg = uvicorn.Config(app(explorer), host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, name="explore-http", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the explorer's server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.explorer.worker.stop()
        self.explorer.train_worker.stop()
        self.explorer.finishers.shutdown(wait=False)


def _default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gradient-sandbox" / "tiles"


@cli.command
def main(argv: Sequence[str] | None = None) -> None:
    p = cli.Parser(prog="python -m sandbox.explore", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    p.add_argument("--fn", default=None, metavar="MODULE:FUNCTION", help="one more surface")
    p.add_argument(
        "--bounds",
        type=float,
        nargs=4,
        default=(-5.0, 5.0, -5.0, 5.0),
        metavar=("X_LO", "X_HI", "Y_LO", "Y_HI"),
        help="domain of a --fn function (a Landscape brings its own)",
    )
    p.add_argument(
        "--cache",
        default=str(_default_cache()),
        metavar="DIR",
        help="disk cache of tiles ('none': memory only)",
    )
    p.add_argument("--cache-mb", type=int, default=512, help="disk cache size in MiB")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"`--port` must be in [0, 65535], got {args.port}")
    if args.cache_mb < 1:
        raise ValueError(f"`--cache-mb` must be >= 1, got {args.cache_mb}")
    cache = None if args.cache == "none" else Path(args.cache)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"`--cache` folder {str(cache)!r} cannot be made ({e})") from None
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars per tile on the console
    ex = Explorer(args.fn, bounds=args.bounds, cache_dir=cache, disk_bytes=args.cache_mb << 20)
    server = Server(ex, args.host, args.port)
    try:
        url = server.start()
    except RuntimeError:
        raise ValueError(f"`--port` {args.port} on {args.host} cannot be bound") from None
    print(f"explorer: {url}/  ({jax.device_count()} x {jax.devices()[0].device_kind})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # `kill`: the same clean stop as ^C
    try:
        while server.thread.is_alive() and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
