"""Sweeps as jobs: a spec (`spec.py`) computed into a store folder by any number of workers.

A sweep store DIR holds:

    sweep.json   the checked spec, with the versions of the sandbox store format and of JAX
    spec.toml    the spec file as given (for people)
    runs/        the engine's chunk store of the runs (`engine.map_chunks`: leases, checksums)

`run(SPEC, DIR)` computes what is missing with every local device and returns the whole
sweep; any number of `run`s on the same DIR (processes on any hosts that share the folder)
share the chunks through the engine's leases and return the same arrays, bit for bit.
`load(DIR)` reads a finished sweep, `status(DIR)` says how far it is, `show(DIR)` sums it
up per combination of the axes, `submit(SPEC, DIR, workers=N)` launches N workers through
submitit (Slurm job arrays, or local processes).
"""

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from sandbox import checks, engine, optim, results
from sandbox.sweep import spec as specs

FORMAT = "sandbox.sweep/1"


class Loaded(NamedTuple):
    """A finished sweep: `Sweep`'s fields with the leading run axis N = S x A (run
    i = s * A + a: start s, combination a of the axes, row-major in the spec's order), the
    starts, each axis's own values and the checked spec."""

    x: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    diverged: np.ndarray
    diverged_step: np.ndarray
    steps_to_tol: np.ndarray | None
    path: np.ndarray | None
    losses: np.ndarray | None
    starts: np.ndarray  # [S, d]
    axes: dict[str, np.ndarray]  # name -> [A_i], in the spec's order
    spec: dict

    def by_axes(self, a: np.ndarray) -> np.ndarray:
        """A field [N, ...] as [S, A_1, ..., A_k, ...]."""
        shape = (len(self.starts), *(len(v) for v in self.axes.values()))
        return np.asarray(a).reshape(*shape, *np.shape(a)[1:])


def _versions() -> dict:
    return {"store": engine.STORE_FORMAT, "jax": jax.__version__}


def _flat(d: Any, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def _open(store: Path, spec: dict | None, text: str | None = None) -> dict:
    """The sweep.json of a store: made (atomically) when `spec` is given and DIR is new or
    empty, else checked against `spec`: a store of another spec or another code version is
    refused, untouched, naming what differs. Without `spec` (reading) only its format."""
    where = f"sweep store {str(store)!r}"
    if store.exists() and not store.is_dir():
        raise ValueError(f"{where} is a file, not a folder")
    if spec is None and not store.exists():
        raise ValueError(f"{where} does not exist")
    meta_path = store / "sweep.json"
    if spec is not None and not meta_path.exists():
        # Hidden files are other jobs' sweep.json or spec.toml being written (or left by a
        # job killed meanwhile); anything else is refused unless a job made the store since.
        foreign = store.exists() and any(
            p.name != "spec.toml" and not p.name.startswith(".") for p in store.iterdir()
        )
        if foreign and not meta_path.exists():
            raise ValueError(f"{where} is a folder that is not a sweep store (no sweep.json)")
        try:
            store.mkdir(parents=True, exist_ok=True)
            meta = {"format": FORMAT, "versions": _versions(), "spec": spec}
            # Of several jobs starting at once, one makes it; the others compare below.
            results.create_new(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
            if text is not None and not (store / "spec.toml").exists():
                results.atomic_write_bytes(store / "spec.toml", text.encode())
        except OSError as e:
            raise ValueError(f"{where} cannot be written: {e.strerror or e}") from None
    try:
        meta = json.loads(meta_path.read_text())
        saved = meta["spec"]
    except FileNotFoundError:
        raise ValueError(f"{where} is not a sweep store (no sweep.json)") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{where} has a damaged sweep.json") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where} is not a {FORMAT} store (format {meta.get('format')!r})")
    if spec is not None:
        a, b = _flat(saved), _flat(spec)
        differ = sorted(k for k in {*a, *b} if a.get(k) != b.get(k))
        if differ:
            k = differ[0]
            raise ValueError(
                f"{where} holds another sweep (spec key `{k}`: {a.get(k)!r} there, "
                f"{b.get(k)!r} here"
                + (f", and {len(differ) - 1} more" if len(differ) > 1 else "")
                + "); use another folder"
            )
    if spec is not None and meta.get("versions") != _versions():  # (reading needs no match)
        had, has = _flat(meta.get("versions")), _flat(_versions())
        k = next(k for k in sorted({*had, *has}) if had.get(k) != has.get(k))
        raise ValueError(
            f"{where} was made by another code version ({k} {had.get(k)!r} there, "
            f"{has.get(k)!r} here); use another folder"
        )
    return meta


def _compute(spec: dict, store: Path, *, lease: float | None, progress: bool | None) -> Loaded:
    """The sweep through `sweep.descend` with the store DIR/runs."""
    from sandbox import sweep

    dtype = np.dtype(spec["dtype"])
    with jax.enable_x64(dtype == np.float64):
        starts = specs.starts(spec).astype(dtype)
        grid = specs.axis_grid(spec)
        combos = specs.combinations(spec)
        x0 = np.repeat(starts, combos, axis=0)

        def typed(k):  # integer hyperparameters (a noise seed) stay integers
            return np.int32 if k in optim.INTEGER_HYPERS else dtype

        hyper: dict[str, Any] = {k: np.asarray(v, typed(k)) for k, v in spec["hyper"].items()}
        hyper.update({k: np.tile(v.astype(typed(k)), len(starts)) for k, v in grid.items()})
        name = spec["landscape"]
        fn = specs.function(name) if ":" in name else name
        r = sweep.descend(
            fn,
            x0,
            optimizer=spec["optimizer"],
            steps=spec["steps"],
            record_every=spec["record_every"],
            chunk_size=spec["chunk"],
            tol=spec["tol"],
            bound=spec["bound"],
            store=store / "runs",
            progress=progress,
            lease=lease,
            **hyper,
        )
    axes = {k: np.asarray(v) for k, v in spec["axes"].items()}
    return Loaded(*r, starts=starts, axes=axes, spec=spec)


def run(
    spec_path: Path | str, store: Path | str, *, lease: float | None = None, progress=None
) -> Loaded:
    """Computes the sweep of the spec file into `store` with every local device, with any
    number of other jobs on the same store, and returns it whole when every chunk is done.

    Args:
      spec_path: a TOML spec (see `sandbox.sweep.spec`).
      store: the sweep's folder (new, empty, or this spec's store).
      lease: seconds a claim on a chunk lasts unless renewed (`engine.LEASE_S`).
      progress: a progress bar (chunks, runs/s, time left); None: after a few seconds.
    """
    spec_path, store = Path(spec_path), Path(store)
    spec = specs.read(spec_path)
    if lease is not None:
        lease = _lease(lease)
    _open(store, spec, spec_path.read_text())
    return _compute(spec, store, lease=lease, progress=progress)


def _lease(lease) -> float:
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not 0 < lease < 1e6:
        raise ValueError(f"`lease` must be a number of seconds in (0, 1e6), got {lease!r}")
    return float(lease)


def load(store: Path | str) -> Loaded:
    """A finished sweep, on any devices (nothing is computed): every chunk is checked
    against its checksums first. ValueError if it is not finished (saying how far it is) or
    a chunk is damaged (`run` computes it again)."""
    from sandbox import sweep

    store = Path(store)
    spec = _open(store, None)["spec"]
    p = _progress(store)
    if len(p["done"]) < p["chunks"]:
        raise ValueError(
            f"sweep store {str(store)!r} is not finished ({len(p['done'])} of {p['chunks']} "
            "chunks done); finish it with `python -m sandbox.sweep run SPEC --store DIR`"
        )
    arrays = engine.read(store / "runs")
    dtype = np.dtype(spec["dtype"])
    with jax.enable_x64(dtype == np.float64):
        starts = specs.starts(spec).astype(dtype)
    axes = {k: np.asarray(v) for k, v in spec["axes"].items()}
    fields = {f: arrays.get(f) for f in sweep.Sweep._fields}
    return Loaded(**fields, starts=starts, axes=axes, spec=spec)


def _progress(store: Path) -> dict:
    try:
        return engine.progress(store / "runs")
    except ValueError:
        if not (store / "runs" / "engine.json").exists():  # made, nothing computed yet
            return {"n": 0, "chunk": 0, "chunks": 1, "done": [], "done_times": []}
        raise


def status(store: Path | str) -> str:
    """Chunks done / total, chunks leased now and by whom, runs/s and time left."""
    store = Path(store)
    meta = _open(store, None)
    spec = meta["spec"]
    p = _progress(store)
    done, chunks = len(p["done"]), p["chunks"]
    starts, combinations = _num_starts(spec), specs.combinations(spec)
    lines = [
        f"sweep {str(store)!r}: {spec['landscape']}, {spec['optimizer']}, "
        f"{starts * combinations} runs ({starts} starts x {combinations} combinations)",
        f"chunks: {done} / {chunks} done" + (" (finished)" if done == chunks else "")
        if p["n"]
        else "chunks: none yet (no job has started computing)",
    ]
    finished = set(p["done"])
    held = [lease for lease in engine.leases(store / "runs") if lease["chunk"] not in finished]
    lines.append(f"leased now: {len(held)}")
    for lease in held:
        lines.append(
            f"  chunk {lease['chunk']} by {lease.get('owner')} "
            f"(renewed {lease['age_s']:.0f} s ago, lease {lease.get('lease_s')} s)"
        )
    times = p["done_times"]
    if done >= 2 and done < chunks:
        k = min(done, 20)  # the last 20 chunks: a resumed sweep's old ones do not count
        span = times[-1] - times[-k]
        rate = (k - 1) * p["chunk"] / span if span > 0 else float("inf")
        left = (chunks - done) * p["chunk"] / rate
        lines.append(f"rate: {rate:,.0f} runs/s; time left: about {_duration(left)}")
    elif done < 2 and done < chunks and p["n"]:
        lines.append("rate: not known until two chunks are done")
    return "\n".join(lines)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _num_starts(spec: dict) -> int:
    st = spec["starts"]
    return st["grid"][0] * st["grid"][1] if "grid" in st else st["random"]


def _combinations(r: Loaded) -> list[dict]:
    """Per combination of the axes: its values and the indices of its runs [S]."""
    grid = specs.axis_grid(r.spec)
    combos = specs.combinations(r.spec)
    s = len(r.starts)
    return [
        {"values": {k: v[a] for k, v in grid.items()}, "runs": np.arange(s) * combos + a}
        for a in range(combos)
    ]


def summary(r: Loaded) -> list[dict]:
    """Per combination: axis values, basin fractions (one per minimum), shares diverged and
    not converged, and the quartiles of steps to tol of the runs that reached tol."""
    from sandbox import basins

    minima = np.asarray(r.spec["minima"], np.float64).reshape(-1, r.starts.shape[1])
    out = []
    for combo in _combinations(r):
        i = combo["runs"]
        labels = basins.classify(r.x[i], minima, r.spec["basin_tol"], r.diverged[i])
        f = basins.fractions(labels, len(minima))
        row = {
            **combo["values"],
            "basins": f[: len(minima)].tolist(),
            "not_converged": float(f[-2]),
            "diverged": float(f[-1]),
            "steps_to_tol": None,
        }
        if r.steps_to_tol is not None:
            st = r.steps_to_tol[i]
            st = st[st >= 0]
            row["steps_to_tol"] = np.percentile(st, [25, 50, 75]).tolist() if st.size else None
        out.append(row)
    return out


def show(store: Path | str, *, plot: bool = False) -> str:
    """A table of `summary` (and with `plot`, DIR/basins.png and DIR/fractions.png)."""
    store = Path(store)
    r = load(store)
    rows = summary(r)
    names = list(r.axes)
    k = len(r.spec["minima"])
    head = [*names, *(f"basin {j}" for j in range(k)), "not conv.", "diverged", "steps q25/50/75"]
    table = [head]
    for row in rows:
        st = row["steps_to_tol"]
        table.append(
            [
                *(f"{row[n]:.4g}" for n in names),
                *(f"{v:.4f}" for v in row["basins"]),
                f"{row['not_converged']:.4f}",
                f"{row['diverged']:.4f}",
                "-" if st is None else "/".join(f"{v:.0f}" for v in st),
            ]
        )
    widths = [max(len(str(line[j])) for line in table) for j in range(len(head))]
    text = [
        f"sweep {str(store)!r}: {r.spec['landscape']}, {r.spec['optimizer']}, "
        f"{len(r.starts)} starts per combination; basins: "
        + ", ".join(
            f"{j} = ({', '.join(f'{v:.4g}' for v in p)})" for j, p in enumerate(r.spec["minima"])
        )
    ]
    for line in table:
        text.append("  ".join(str(c).rjust(w) for c, w in zip(line, widths, strict=True)))
    if plot:
        text += [f"wrote {p}" for p in _plot(r, rows, store)]
    return "\n".join(text)


MAX_PANELS = 64


def _plot(r: Loaded, rows: list[dict], store: Path) -> list[Path]:
    """The basin map of each combination (a grid of panels; grid starts only) and the
    fractions against each axis (averaged over the other axes)."""
    import matplotlib.pyplot as plt

    from sandbox import basins, plotting

    written = []
    minima = np.asarray(r.spec["minima"], np.float64).reshape(-1, r.starts.shape[1])
    combos = _combinations(r)
    if "grid" in r.spec["starts"] and len(combos) <= MAX_PANELS:
        h, w = r.spec["starts"]["grid"]
        cols = int(np.ceil(np.sqrt(len(combos))))
        rows_n = -(-len(combos) // cols)
        fig, axs = plt.subplots(
            rows_n, cols, figsize=(2.2 * cols, 2.2 * rows_n), squeeze=False, layout="constrained"
        )
        for ax, combo in zip(axs.ravel(), combos, strict=False):
            i = combo["runs"]
            labels = basins.classify(r.x[i], minima, r.spec["basin_tol"], r.diverged[i])
            plotting.basin_image(
                ax,
                labels.reshape(h, w),
                r.spec["starts"]["box"],
                points=minima if len(minima) else None,
                legend=False,
            )
            ax.set_title(", ".join(f"{k}={v:.3g}" for k, v in combo["values"].items()), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axs.ravel()[len(combos) :]:
            ax.set_axis_off()
        written.append(plotting.save(fig, store / "basins.png"))
    if r.axes:
        fig, axs = plt.subplots(
            1, len(r.axes), figsize=(3.2 * len(r.axes), 2.6), squeeze=False, layout="constrained"
        )
        for ax, (name, values) in zip(axs[0], r.axes.items(), strict=True):
            series = {f"basin {j}": [row["basins"][j] for row in rows] for j in range(len(minima))}
            series["not converged"] = [row["not_converged"] for row in rows]
            series["diverged"] = [row["diverged"] for row in rows]
            for label, ys in series.items():
                ys = np.asarray(ys).reshape(*(len(v) for v in r.axes.values()))
                other = tuple(j for j, k in enumerate(r.axes) if k != name)
                ax.plot(values, ys.mean(axis=other) if other else ys, marker=".", label=label)
            if np.all(values > 0) and values.max() / values.min() > 20:
                ax.set_xscale("log")
            ax.set_xlabel(name + (" (mean over the other axes)" if len(r.axes) > 1 else ""))
            ax.set_ylabel("share of runs")
        axs[0][0].legend(fontsize=6)
        written.append(plotting.save(fig, store / "fractions.png"))
    return written


def _worker(spec_path: str, store: str, lease: float | None) -> str:
    """One submitted worker: `run` on every device it was given; returns a line."""
    from sandbox import devices

    devices.use_all_cores()
    t = time.perf_counter()
    r = run(spec_path, store, lease=lease, progress=False)
    return f"{len(r.x)} runs in {store} ({time.perf_counter() - t:.1f} s in this worker)"


def submit(
    spec_path: Path | str,
    store: Path | str,
    *,
    workers: int,
    executor: str = "slurm",
    lease: float | None = None,
    wait: bool = False,
    **slurm: Any,
) -> list:
    """Submits `workers` jobs that each `run` the spec on `store`, through submitit: a Slurm
    job array (`executor="slurm"`, `slurm` keyword arguments go to submitit's
    `update_parameters`, e.g. slurm_partition, timeout_min, gpus_per_node) or local
    processes (`executor="local"`). The spec is checked and the store made first, so a bad
    spec never reaches the queue. Returns submitit's jobs (waited for with `wait`)."""
    import submitit

    checks.integer("workers", workers, minimum=1)
    if executor not in ("slurm", "local"):
        raise ValueError(f"`executor` must be 'slurm' or 'local', got {executor!r}")
    spec_path, store = Path(spec_path).resolve(), Path(store).resolve()
    spec = specs.read(spec_path)
    if lease is not None:
        lease = _lease(lease)
    _open(store, spec, spec_path.read_text())
    folder = store / "submitit"
    ex = submitit.AutoExecutor(folder=folder, cluster=None if executor == "slurm" else "local")
    if executor == "slurm" and ex.cluster != "slurm":
        raise ValueError("no Slurm here (sbatch not found); use --executor local to test")
    params = {"timeout_min": 60, "name": f"sweep-{store.name}"} | slurm
    if executor == "slurm":
        params.setdefault("slurm_array_parallelism", workers)
    ex.update_parameters(**params)
    args = [str(spec_path)] * workers
    jobs = ex.map_array(_worker, args, [str(store)] * workers, [lease] * workers)
    if wait:
        for job in jobs:
            job.result()
    return jobs
