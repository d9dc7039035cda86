"""Run folders: config.json, arrays.npz, meta.json, summary.json and figures, written atomically."""

import argparse
import dataclasses
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_ROOT = Path("results")


# ----------------------------------------------------------------------------- writing


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Writes `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: Path | str, obj: Any) -> Path:
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=True)
    return atomic_write_bytes(path, (text + "\n").encode())


def write_arrays(path: Path | str, arrays: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | np.generic) or hasattr(obj, "__array__"):
        a = np.asarray(obj)
        return a.item() if a.ndim == 0 else a.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------- folders


def check_writable(path: Path | str, argument: str = "--out") -> Path:
    """Creates `path` if needed; ValueError naming `argument` if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(
            f"`{argument}` must be a writable folder, got {str(path)!r} ({e.strerror})"
        ) from None
    return path


def meta(wall_s: float, seed: int | None = None) -> dict[str, Any]:
    """Provenance: git commit, library versions, backend and devices, x64 flag, timing."""
    import flax
    import jax
    import matplotlib
    import optax

    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "flax": flax.__version__,
            "numpy": np.__version__,
            "matplotlib": matplotlib.__version__,
        },
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "num_devices": jax.device_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "seed": seed,
        "wall_s": round(wall_s, 3),
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def save(
    run_dir: Path | str,
    config: Any,
    arrays: dict[str, Any],
    summary: dict[str, Any],
    wall_s: float,
) -> None:
    """Writes config.json, arrays.npz, summary.json and meta.json into `run_dir`.

    Each file is replaced atomically, and only after everything was computed, so an
    interrupted or failed run never leaves a half-written file or loses an older result.
    """
    run_dir = Path(run_dir)
    write_arrays(run_dir / "arrays.npz", arrays)
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "summary.json", summary)
    write_json(run_dir / "meta.json", meta(wall_s, getattr(config, "seed", None)))


def load(run_dir: Path | str, config_cls: type | None = None):
    """Reads a run folder: returns (config, arrays, summary).

    `config` is an instance of `config_cls` when given (lists become tuples where the
    field's default is a tuple), else a dict.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "arrays.npz").exists():
        raise ValueError(
            f"no saved results in {str(run_dir)!r}: run the study without --plot-only first"
        )
    with np.load(run_dir / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    config = json.loads((run_dir / "config.json").read_text())
    if config_cls is not None:
        config = config_from_dict(config_cls, config)
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return config, arrays, summary


def config_from_dict(cls: type, data: dict[str, Any]):
    """Rebuilds a frozen dataclass config from its JSON form."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple) and isinstance(v, list):
            v = tuple(tuple(e) if isinstance(e, list) else e for e in v)
        kwargs[f.name] = v
    return cls(**kwargs)


# ----------------------------------------------------------------------------- command line


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2, no usage dump)."""

    def error(self, message: str):  # one line, exit status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def study_parser(name: str, doc: str | None = None, quick_help: str = "small sizes (seconds)"):
    """The common command line of every study (--quick, --out, --seed, --plot-only), for
    studies that add options of their own."""
    p = Parser(
        prog=f"python -m studies.{name}",
        description=(doc or "").strip().splitlines()[0] if doc else None,
    )
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    p.add_argument("--plot-only", action="store_true", help="redraw figures from saved arrays")
    return p


def parse_study_args(
    name: str, argv: Sequence[str] | None, doc: str | None = None
) -> argparse.Namespace:
    """The common command line of every study."""
    return study_parser(name, doc).parse_args(argv)


def run_dir(out: Path | None, name: str, quick: bool) -> Path:
    """The study's folder: `--out` as given, else results/<name> (results/<name>-quick)."""
    if out is None:
        out = RESULTS_ROOT / (f"{name}-quick" if quick else name)
    return check_writable(out)


def run_study(
    name: str,
    args: argparse.Namespace,
    cfg: Any,
    compute: Callable[[Any], tuple[dict, dict]],
    plot: Callable[[dict, Any, dict], dict],
    *,
    out: Path | None = None,
):
    """The body every study's `main` shares: compute and save (unless --plot-only), reload,
    draw each figure of `plot` to <out>/<figure>.png.

    Returns:
      (out, cfg, arrays, summary) as reloaded from the run folder, for extra outputs.
    """
    from sandbox import plotting  # matplotlib only where figures are drawn

    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if out is None:
        out = run_dir(args.out, name, args.quick)
    if not args.plot_only:
        start = time.perf_counter()
        arrays, summary = compute(cfg)
        save(out, cfg, arrays, summary, time.perf_counter() - start)
    cfg, arrays, summary = load(out, type(cfg))
    for fig_name, fig in plot(arrays, cfg, summary).items():
        plotting.save(fig, out / f"{fig_name}.png")
    return out, cfg, arrays, summary


def cli(main: Callable[[Sequence[str] | None], Any]) -> Callable:
    """Wraps a study's `main`: every CPU core in use (`devices.use_all_cores`), and bad input
    becomes one line on stderr and exit status 2."""

    def wrapped(argv: Sequence[str] | None = None):
        from sandbox import devices

        devices.use_all_cores()  # before the study's first computation starts JAX's backend
        try:
            return main(argv)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    wrapped.__doc__ = main.__doc__
    wrapped.__wrapped__ = main
    return wrapped
