"""The state behind the routes: the surfaces, the caches, the two workers, and the jobs that
compute basin maps, paths and trainability maps (each in blocks of about a second of work, so
a job nobody waits for stops at the next block), with the view's measures."""

import concurrent.futures
import dataclasses
import hashlib
import importlib
import inspect
import json
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from sandbox import basins, calculus, fractal, landscapes, sweep
from sandbox.explore import caches, jobs, params, tiles
from sandbox.explore.params import Descent, Training

REACH_TOL = 1e-2  # an endpoint this close to a minimum reached it (as the local_minima study)
# Blocks of a running job: a job whose clients all went away stops at the next block, so a
# block should take about BLOCK_S seconds. The first block of a setting holds about
# BLOCK_WORK run-steps (starts x steps; Adam on Himmelblau runs about 2.4e7 a second on 2
# CPU cores, plain GD about 2e9); then the size (a power of two: few compiled shapes) grows
# or shrinks, per setting, as blocks take under half or over twice BLOCK_S.
BLOCK_S = 0.5
BLOCK_WORK_CPU, BLOCK_WORK = 1 << 24, 1 << 30
BLOCK_MIN, BLOCK_MAX = 1024, 1 << 20
# Fractal-network runs per block: one run of 500 steps costs about 1 CPU-ms.
TRAIN_BLOCK_WORK_CPU, TRAIN_BLOCK_WORK = 1 << 19, 1 << 27
# Compiled programs kept: past this many distinct settings (steps, optimizer, landscape,
# block shape, dtype) since the last clear, JAX's compilation caches are cleared, so the
# server's memory stays bounded however many settings are asked for.
PROGRAMS_MAX = 24
CPU = jax.devices()[0].platform == "cpu"


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
    # How its runs are labelled: within basin_tol of a minimum, diverged past +-bound; a
    # stored sweep's surface takes its spec's, and float64 when its spec's dtype is float64.
    basin_tol: float = REACH_TOL
    bound: float = 1e6
    float64: bool = False

    def x64(self, box: np.ndarray, nx: int, ny: int, what: str) -> bool:
        """Whether descents from an nx x ny grid over `box` run in float64: where float32
        does not resolve the grid at the scale the iterates reach (the bounds' largest
        coordinate, `tiles.precision`), or where the surface asks for float64."""
        reach = float(np.max(np.abs(self.bounds)))
        return tiles.precision(box, nx, ny, what, reach) or self.float64

    def info(self) -> dict:
        return {
            "name": self.name,
            "formula": self.formula,
            "bounds": self.bounds.tolist(),
            "minima": self.minima.tolist(),
            "saddles": self.saddles.tolist(),
            "maxima": self.maxima.tolist(),
            "f_min": self.f_min if math.isfinite(self.f_min) else None,
            "basin_tol": self.basin_tol,
            # "#rrggbb" of diverged, not converged, then basin 0, 1, ... (plotting's colours)
            "colours": ["#" + bytes(c).hex() for c in tiles.basin_table(len(self.minima))],
            "max_zoom": tiles.max_zoom(self.bounds),
            "float32_zoom": tiles.max_zoom(self.bounds, np.float32),
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
        mod = importlib.import_module(module)
        obj = getattr(mod, attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"`--fn` {spec!r} cannot be imported ({e})") from None
    # Disk tiles are reused across restarts while the key holds: the whole module's source
    # (its constants and helpers too, not what it imports from elsewhere) and the bounds.
    b = np.asarray(bounds, np.float64).reshape(2, 2)
    try:
        source = inspect.getsource(mod)
    except (OSError, TypeError):
        source = str(time.time())  # no source: never reuse a disk tile across restarts
    version = hashlib.sha256(f"{source}\n{spec}\n{b.tolist()!r}".encode()).hexdigest()[:16]
    if isinstance(obj, landscapes.Landscape):
        if obj.dim != 2:
            raise ValueError(f"`--fn` must be a 2-D landscape, got {obj.dim}-D")
        return dataclasses.replace(_surface(obj, version), name=spec)
    if not callable(obj):
        raise ValueError(f"`--fn` {spec!r} must be a function of x [2] or a Landscape")
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


def box_sizes(n: int) -> list[int]:
    """The fit range of a view's box-counting dimension: powers of two from 1 to n / 8."""
    return [2**k for k in range(0, max(int(math.log2(max(n, 1))) - 2, 0))]


def dimension(mask_HxW: np.ndarray) -> dict:
    """`fractal.box_counting_dimension` of the boundary of a map's classes (bool or labels),
    over `box_sizes`: {dim, sizes, counts, residual} (dim None, with why, when it has none)."""
    edge = fractal.boundary(mask_HxW)
    sizes = box_sizes(min(edge.shape))
    if len(sizes) < 2:
        return {"dim": None, "why": "the view has too few pixels for two box sizes"}
    if not edge.any():
        return {"dim": None, "why": "no boundary in view (one class only)", "sizes": sizes}
    dim, fit = fractal.box_counting_dimension(edge, sizes)
    return {
        "dim": dim,
        "sizes": fit.sizes.tolist(),
        "counts": fit.counts.tolist(),
        "residual": fit.residual,
        "boundary_pixels": int(edge.sum()),
    }


def _finite(v) -> float | None:
    return float(v) if np.isfinite(v) else None


def _pow2_below(n: float) -> int:
    return 1 << max(int(math.floor(math.log2(max(n, 1)))), 0)


class Explorer:
    """The surfaces, caches, workers and the fractal network behind the app."""

    def __init__(
        self,
        fn: str | None = None,
        *,
        bounds: Sequence[float] = (-5.0, 5.0, -5.0, 5.0),
        cache_dir: Path | str | None = None,
        memory_bytes: int = 64 << 20,
        disk_bytes: int = 512 << 20,
        queue_max: int = jobs.QUEUE_MAX,
        version: str | None = None,
        sweep_dir: Path | str | None = None,
    ):
        self.version = version or caches.code_version()
        self.surfaces = {
            n: _surface(landscapes.get(n), self.version)
            for n in landscapes.names()
            if landscapes.get(n).dim == 2
        }
        if fn is not None:
            s = load_fn(fn, bounds)
            self.surfaces[s.name] = s
        # A stored sweep (`--sweep DIR`): its map, continued live by a surface of its own
        # (`stored.SURFACE`), labelled as the sweep labels; not listed among the landscapes.
        self.stored = None
        listed = list(self.surfaces)
        if sweep_dir is not None:
            from sandbox.explore import stored

            self.stored = stored.StoredSweep(sweep_dir)
            name = self.stored.spec["landscape"]
            if name not in self.surfaces:
                if ":" not in name:
                    raise ValueError(f"`--sweep`: landscape {name!r} is not 2-D")
                self.surfaces[name] = load_fn(name, np.ravel(self.stored.spec["bounds"]))
                listed.append(name)
            self.surfaces[stored.SURFACE] = self.stored.surface(self.surfaces[name])
        self.infos = [self.surfaces[n].info() for n in listed]  # (imports matplotlib now)
        # The page puts this in every tile URL (`v`): a browser keeps a tile for a day only
        # under the URL of the code and surfaces that drew it.
        self.tiles_version = hashlib.sha256(
            "|".join([self.version, *(s.version for s in self.surfaces.values())]).encode()
        ).hexdigest()[:16]
        self.memory = caches.MemoryCache(memory_bytes)
        self.disk = caches.DiskCache(Path(cache_dir), disk_bytes) if cache_dir else None
        # Tiles of queued requests run together in one sweep.descend call, at most this
        # many: on a CPU small batches, so that labelling and encoding one batch overlaps the
        # descent of the next (measured: 4 tiles 0.89x-1.04x of sweep.descend alone).
        per = 4 if CPU else 16
        self.worker = jobs.Worker(queue_max, tiles.TILE * tiles.TILE * per)  # basins, paths
        # Trainability tiles cost up to a minute each on a CPU: a queue of their own, so
        # that they never hold up the basin maps.
        self.train_worker = jobs.Worker(queue_max, name="-train")
        self.finishers = concurrent.futures.ThreadPoolExecutor(
            os.cpu_count() or 1, thread_name_prefix="explore-finish"
        )
        # One block at a time on the devices (the two workers alternate block by block);
        # the compilation caches are cleared under it.
        self.compute_lock = threading.Lock()
        self.programs: set = set()
        self.block_sizes: dict = {}  # (setting, dtype) -> runs per block, learned
        self.clears = 0  # times the compilation caches were cleared: tests count them
        self._problems: dict = {}
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

    def program(self, key: tuple) -> None:
        """Called (under `compute_lock`) before a computation compiled for `key`: a key
        beyond PROGRAMS_MAX distinct ones clears JAX's caches of compiled programs."""
        if key in self.programs:
            return
        if len(self.programs) >= PROGRAMS_MAX:
            jax.clear_caches()
            self.programs.clear()
            self.clears += 1
        self.programs.add(key)

    # -- basins

    def basin_job(self, d: Descent, box, nx, ny, out: str, key: str, priority: float):
        """A job that labels an nx x ny grid over `box` and renders it as `out` ("json",
        "png"); tiles and views of the same settings and dtype are batched."""
        s = self.surfaces[d.surface]
        x64 = s.x64(box, nx, ny, "z" if out == "png" else "x0")
        starts = tiles.centres(box, nx, ny, x64)
        return jobs.Job(
            key,
            priority,
            (d, x64),
            lambda js: self._run_basins(js, s, d, x64),
            (starts, nx, ny, out),
            size=len(starts),
        )

    def block_runs(self, steps: int) -> int:
        """Runs per block of a basin job at `steps` steps: about BLOCK_WORK run-steps."""
        work = BLOCK_WORK_CPU if CPU else BLOCK_WORK
        return max(BLOCK_MIN, _pow2_below(work / steps))

    def _run_basins(self, js: list[jobs.Job], s: Surface, d: Descent, x64: bool) -> None:
        hyper = dict(d.hyper)
        if "seed" in hyper:
            hyper["seed"] = int(hyper["seed"])
        x0 = np.concatenate([j.payload[0] for j in js])
        # Blocks of one compiled shape (the last one padded by descend): a client that
        # goes away stops the job at the next block.
        setting = (d.program(), x64)
        block = self.block_sizes.get(setting, self.block_runs(d.steps))
        block = min(block, 1 << max(len(x0) - 1, 0).bit_length())
        tol = d.tol if d.colour == "steps" else None
        parts = []
        lo = 0
        while lo < len(x0):
            jobs.Worker.check_wanted(js)
            with self.compute_lock, jax.enable_x64(x64):
                key = ("descend", d.program(), x64, block)
                compiles = key not in self.programs
                self.program(key)
                t = time.perf_counter()
                parts.append(
                    sweep.descend(
                        s.fn,
                        x0[lo : lo + block],
                        optimizer=d.optimizer,
                        steps=d.steps,
                        tol=tol,
                        bound=s.bound,
                        chunk_size=block,
                        progress=False,
                        **hyper,
                    )
                )
                took = time.perf_counter() - t
            lo += block
            if compiles:  # its time includes the compilation: says nothing of the size
                continue
            want = block
            if took < BLOCK_S / 2:  # up to 16x at once: few sizes, so few compilations
                want = min(block * min(_pow2_below(BLOCK_S / max(took, 1e-6)), 16), BLOCK_MAX)
            elif took > 2 * BLOCK_S:
                want = max(block // _pow2_below(took / BLOCK_S), BLOCK_MIN)
            self.block_sizes[setting] = want  # for the next job of this setting
            if want < block or lo + want <= len(x0):  # (not a larger shape for the rest)
                block = want
        run = sweep.Sweep(
            **{
                f: None if parts[0][i] is None else np.concatenate([p[i] for p in parts])
                for i, f in enumerate(sweep.Sweep._fields)
            }
        )
        bounds = np.cumsum([0] + [len(j.payload[0]) for j in js])
        # Labels and PNGs job by job on every core (NumPy and zlib release the GIL).
        # Not waited for: the worker starts the next batch meanwhile.
        for j, lo, hi in zip(js, bounds[:-1], bounds[1:], strict=True):
            self.finishers.submit(self._finish_or_fail, j, lo, hi, s, d, run)

    def _finish_or_fail(self, j: jobs.Job, *args) -> None:
        try:
            self._finish(j, *args)
        except Exception as e:  # the request gets a 500; the server keeps serving
            if not j.future.done():
                j.future.set_exception(e)

    def _finish(self, j: jobs.Job, lo: int, hi: int, s: Surface, d: Descent, run) -> None:
        """Labels (as `basins.classify`) and renders one job's runs [lo, hi) of a batch."""
        _, nx, ny, out = j.payload
        sl = slice(lo, hi)
        labels = basins.classify(run.x[sl], s.minima, s.basin_tol, run.diverged[sl])
        lab = labels.reshape(ny, nx)
        if out == "json":
            j.future.set_result(self._basins_json(s, lab))
            return
        if d.colour == "basin":
            png = tiles.render_basins(lab, len(s.minima))
        elif d.colour == "steps":
            st = run.steps_to_tol[sl].reshape(ny, nx).astype(np.float64)
            png = tiles.render_scalar(
                np.log10(np.maximum(st, 1)), 0, math.log10(d.steps), st < 0, tiles.STEPS_SPECIAL
            )
        else:
            gap = run.loss[sl].astype(np.float64) - (s.f_min if math.isfinite(s.f_min) else 0)
            v = np.log10(np.maximum(gap, 1e-300)).reshape(ny, nx)
            png = tiles.render_scalar(
                v, *tiles.LOSS_DECADES, lab == basins.DIVERGED, tiles.LOSS_SPECIAL
            )
        self.store(j.key, png)
        j.future.set_result(png)

    def _basins_json(self, s: Surface, lab: np.ndarray) -> bytes:
        fr = tiles.fractions(lab, len(s.minima))
        body = {
            "labels": lab.tolist(),
            "minima": s.minima.tolist(),
            "fractions": fr,
            "dimension": dimension(lab),
        }
        return json.dumps(body).encode()

    def path_job(self, d: Descent, x: float, y: float, z: int, key: str) -> jobs.Job:
        """A job that records the run from (x, y), in the dtype of its tile at zoom z."""
        s = self.surfaces[d.surface]
        b, n = s.bounds, 2**z
        tx = int(np.clip((x - b[0, 0]) / (b[0, 1] - b[0, 0]) * n, 0, n - 1))
        ty = int(np.clip((b[1, 1] - y) / (b[1, 1] - b[1, 0]) * n, 0, n - 1))
        x64 = s.x64(tiles.tile_box(b, z, tx, ty), tiles.TILE, tiles.TILE, "z")
        every = max(1, d.steps // 500)

        def run(js: list[jobs.Job]) -> None:
            hyper = dict(d.hyper)
            if "seed" in hyper:
                hyper["seed"] = int(hyper["seed"])
            with self.compute_lock, jax.enable_x64(x64):
                self.program(("path", d.program(), x64, every))
                x0 = np.array([[x, y]], np.float64 if x64 else np.float32)
                r = sweep.descend(
                    s.fn,
                    x0,
                    optimizer=d.optimizer,
                    steps=d.steps,
                    record_every=every,
                    tol=d.tol,
                    bound=s.bound,
                    progress=False,
                    **hyper,
                )
            label = int(basins.classify(r.x, s.minima, s.basin_tol, r.diverged)[0])
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
                # null where a diverged run's last point or loss is not finite (JSON has
                # no Infinity or NaN)
                "final": [_finite(v) for v in r.x[0].astype(np.float64)],
                "final_loss": _finite(r.loss[0]),
                "x64": x64,
            }
            js[0].future.set_result(json.dumps(body).encode())

        return jobs.Job(key, 0.0, None, run, None)

    # -- trainability

    def train_problem(self, width: int, seed: int):
        """The fractal study's network and data at this width and seed (float64)."""
        with self._train_lock:
            if (width, seed) not in self._problems:
                if len(self._problems) >= 4:
                    self._problems.pop(next(iter(self._problems)))
                with jax.enable_x64(True):
                    self._problems[width, seed] = fractal.problem(jax.random.key(seed), width)
            return self._problems[width, seed]

    def train_job(self, t: Training, box, nx, ny, out, key, priority, names) -> jobs.Job:
        """A job that scores an nx x ny grid over the log10 `box` of the phase space of `t`
        (`fractal.score_grid`, float64) and renders it as `out` ("json", "png")."""
        tiles.precision(box, nx, ny, names[0])  # float64 always (as the study)
        a_W, b_H = params.axis_values(box, nx, ny, names)
        phase = params.PHASES[t.phase][0]

        def run(js: list[jobs.Job]) -> None:
            p, data = self.train_problem(t.width, t.seed)
            batch = 64 if CPU else 16384
            work = TRAIN_BLOCK_WORK_CPU if CPU else TRAIN_BLOCK_WORK
            # Rows in blocks of about `work` run-steps: a tile nobody waits for any more
            # (scrolled away while it ran) stops at the next block.
            rows = max(1, int(work // (t.steps * nx)))
            blocks = []
            for r0 in range(0, ny, rows):
                jobs.Worker.check_wanted(js)
                b_rows = b_H[r0 : r0 + rows]
                with self.compute_lock, jax.enable_x64(True):
                    self.program(("train", t.program(), nx * len(b_rows)))
                    blocks.append(
                        fractal.score_grid(
                            p,
                            data,
                            a_W,
                            b_rows,
                            steps=t.steps,
                            batch_size=min(batch, nx * len(b_rows)),
                            phase_space=phase,
                        )
                    )
            score = np.concatenate(blocks)
            for j in js:
                if out == "json":
                    body = {
                        "score": score.tolist(),
                        "trainable": (score > 0).tolist(),
                        "trainable_share": float(np.mean(score > 0)),
                        "dimension": dimension(score > 0),
                    }
                    j.future.set_result(json.dumps(body).encode())
                    continue
                idx = tiles.score_index(score)[::-1]
                rep = tiles.TILE // nx
                png = tiles.png(np.repeat(np.repeat(idx, rep, 0), rep, 1), tiles.train_table())
                self.store(j.key, png)
                j.future.set_result(png)

        return jobs.Job(key, priority, None, run, None, size=nx * ny)
