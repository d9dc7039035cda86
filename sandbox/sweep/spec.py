"""A sweep described by a TOML file: parsing and checking, one ValueError naming the key.

The keys (every one is explained in examples/sweep.toml):

    landscape     a name of `landscapes.names()`, or "module:function" (then `bounds`)
    bounds        [[x_lo, x_hi], [y_lo, y_hi], ...]: default the landscape's own
    minima        [[x, y], ...]: points that label basins (default: the landscape's minima)
    optimizer     a name of `optim.names()` (default "sgd")
    steps         updates per run
    tol           gradient-norm tolerance for steps to tol (optional)
    basin_tol     distance from a minimum that counts as reaching it (default 0.01)
    bound         a coordinate beyond it marks a run diverged (default 1e6)
    dtype         "float32" (default) or "float64"
    record_every  record the path every this many updates (default 0: none)
    chunk         runs per chunk (optional; default chosen by `sweep.descend`)
    [starts]      grid = n or [H, W] (over `box`, default `bounds`), or random = n with seed
    [hyper]       hyperparameters shared by every run: name = value
    [axes]        swept hyperparameters: name = { values = [...] } or
                  { linspace = [lo, hi], num = n } or { logspace = [lo, hi], num = n }

The sweep is every start for every combination of the axes: run i = s * A + a, for start s
(row-major over the grid: y along rows) and combination a (row-major over the axes in the
order the spec lists them), A the number of combinations.
"""

import importlib
import itertools
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from sandbox import landscapes, optim

TOP = {
    "landscape",
    "bounds",
    "minima",
    "optimizer",
    "steps",
    "tol",
    "basin_tol",
    "bound",
    "dtype",
    "record_every",
    "chunk",
    "starts",
    "hyper",
    "axes",
}
STARTS = {"grid", "box", "random", "seed"}
AXIS_KINDS = ("values", "linspace", "logspace")
# Runs in one sweep: what a store's engine can index (and a grid of 46341^2 starts).
MAX_RUNS = 1 << 31
MAX_SIDE = 1 << 16


def read(path: Path | str) -> dict:
    """The spec in a TOML file, checked and normalized (`check`)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"spec {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"spec {str(path)!r} cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"spec {str(path)!r} is not valid TOML ({e})") from None
    return check(raw)


def _err(key: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"spec key `{key}` must be {expected}, got {value!r}")


def _int(key, value, lo, hi=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _err(key, f"an integer >= {lo}" + (f" and <= {hi}" if hi else ""), value)
    if hi is not None and value > hi:
        raise _err(key, f"an integer >= {lo} and <= {hi}", value)
    return value


def _float(key, value, positive=False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or (positive and value <= 0):
        raise _err(key, "a positive number" if positive else "a finite number", value)
    return float(value)


def _box(key, value, d=None) -> list[list[float]]:
    what = "[[lo, hi], ...] with lo < hi" + (f" for {d} dimensions" if d else "")
    if not isinstance(value, list) or not value or (d is not None and len(value) != d):
        raise _err(key, what, value)
    out = []
    for row in value:
        if not (isinstance(row, list) and len(row) == 2):
            raise _err(key, what, value)
        lo, hi = (_float(key, v) for v in row)
        if not lo < hi:
            raise _err(key, what, value)
        out.append([lo, hi])
    return out


def check(raw: dict) -> dict:
    """The spec with every key checked and every default filled in (a plain dict that JSON
    writes as is: what a store records and compares)."""
    if not isinstance(raw, dict):
        raise ValueError(f"a spec must be a TOML table, got {type(raw).__name__}")
    unknown = sorted(set(raw) - TOP)
    if unknown:
        raise ValueError(
            f"spec key `{unknown[0]}` is unknown; known keys: {', '.join(sorted(TOP))}"
        )
    spec: dict[str, Any] = {}
    if "landscape" not in raw:
        raise ValueError("spec key `landscape` is missing: a name of landscapes or module:function")
    name = raw["landscape"]
    if not isinstance(name, str) or not name:
        raise _err("landscape", "a landscape name or 'module:function'", name)
    spec["landscape"] = name
    if ":" in name:
        if "bounds" not in raw:
            raise ValueError(
                "spec key `bounds` is missing: needed with landscape 'module:function'"
            )
        function(name)  # importable now, or one line naming the key
        spec["bounds"] = _box("bounds", raw["bounds"])
        d = len(spec["bounds"])
        default_minima: list = []
    else:
        if name not in landscapes.names():
            raise _err("landscape", f"one of {', '.join(landscapes.names())}", name)
        land = landscapes.get(name)
        d = land.bounds.shape[0]
        spec["bounds"] = _box("bounds", raw.get("bounds", np.asarray(land.bounds).tolist()), d)
        default_minima = np.asarray(land.minima).tolist()
    minima = raw.get("minima", default_minima)
    if not isinstance(minima, list) or not all(isinstance(p, list) and len(p) == d for p in minima):
        raise _err("minima", f"a list of points [x1, ..., x{d}]", minima)
    spec["minima"] = [[_float("minima", v) for v in p] for p in minima]

    spec["optimizer"] = raw.get("optimizer", "sgd")
    if spec["optimizer"] not in optim.names():
        raise _err("optimizer", f"one of {', '.join(optim.names())}", spec["optimizer"])
    if "steps" not in raw:
        raise ValueError("spec key `steps` is missing: updates per run")
    spec["steps"] = _int("steps", raw["steps"], 1, 2**31 - 1)
    spec["tol"] = None if raw.get("tol") is None else _float("tol", raw["tol"], positive=True)
    spec["basin_tol"] = _float("basin_tol", raw.get("basin_tol", 0.01), positive=True)
    spec["bound"] = _float("bound", raw.get("bound", 1e6), positive=True)
    spec["dtype"] = raw.get("dtype", "float32")
    if spec["dtype"] not in ("float32", "float64"):
        raise _err("dtype", "'float32' or 'float64'", spec["dtype"])
    spec["record_every"] = _int("record_every", raw.get("record_every", 0), 0, spec["steps"])
    spec["chunk"] = None if raw.get("chunk") is None else _int("chunk", raw["chunk"], 1, MAX_RUNS)

    starts = raw.get("starts")
    if not isinstance(starts, dict):
        raise ValueError("spec table `[starts]` is missing: grid = n (or [H, W]), or random = n")
    unknown = sorted(set(starts) - STARTS)
    if unknown:
        raise ValueError(
            f"spec key `starts.{unknown[0]}` is unknown; known: grid, box, random, seed"
        )
    if ("grid" in starts) == ("random" in starts):
        raise ValueError("spec table `[starts]` must have exactly one of `grid` and `random`")
    st: dict[str, Any] = {"box": _box("starts.box", starts.get("box", spec["bounds"]), d)}
    if "grid" in starts:
        if d != 2:
            raise _err("starts.grid", "used with a 2-D landscape (use random)", starts["grid"])
        g = starts["grid"]
        hw = [g, g] if not isinstance(g, list) else g
        if len(hw) != 2:
            raise _err("starts.grid", "n or [H, W]", g)
        st["grid"] = [_int("starts.grid", v, 1, MAX_SIDE) for v in hw]
        if "seed" in starts:
            raise ValueError("spec key `starts.seed` goes with `random`, not `grid`")
        num = st["grid"][0] * st["grid"][1]
    else:
        st["random"] = _int("starts.random", starts["random"], 1, MAX_RUNS)
        st["seed"] = _int("starts.seed", starts.get("seed", 0), 0, 2**32 - 1)
        num = st["random"]
    spec["starts"] = st

    hyper = raw.get("hyper", {})
    if not isinstance(hyper, dict):
        raise _err("hyper", "a table of name = value", hyper)
    axes = raw.get("axes", {})
    if not isinstance(axes, dict):
        raise _err("axes", "a table of name = { values | linspace | logspace }", axes)
    spec["hyper"] = {k: _hyper_value(f"hyper.{k}", v) for k, v in hyper.items()}
    spec["axes"] = {k: _axis(f"axes.{k}", v) for k, v in axes.items()}
    both = sorted(set(spec["hyper"]) & set(spec["axes"]))
    if both:
        raise ValueError(f"spec key `axes.{both[0]}` is also in [hyper]: give it once")
    names = {*spec["hyper"], *spec["axes"]}
    known = optim.hyperparameters(spec["optimizer"])
    for k in sorted(names):
        if k not in known:
            where = "axes" if k in spec["axes"] else "hyper"
            raise ValueError(
                f"spec key `{where}.{k}` is not a hyperparameter of {spec['optimizer']!r}; "
                f"known: {', '.join(sorted(known))}"
            )
    if "lr" not in names:
        raise ValueError("spec key `hyper.lr` (or `axes.lr`) is missing: the learning rate")
    for k in names:  # each value in its hyperparameter's range, as the runs will hold it
        where = "axes" if k in spec["axes"] else "hyper"
        for v in spec["axes"].get(k, [spec["hyper"].get(k)]):
            try:
                optim.check_scalar(k, np.float64(v))
            except ValueError as e:
                raise ValueError(f"spec key `{where}.{k}`: {e}") from None
            _held(f"{where}.{k}", v, np.int32 if k in optim.INTEGER_HYPERS else spec["dtype"])
    if num * combinations(spec) > MAX_RUNS:
        raise ValueError(
            f"spec `[starts]` x `[axes]` make {num * combinations(spec)} runs; at most "
            f"{MAX_RUNS} fit one sweep"
        )
    return spec


def _held(key: str, v: float, dtype) -> None:
    """A value the runs hold in `dtype` as given: not overflowed, not subnormal (XLA flushes
    those to zero), and an integer within int32 (checked before a store is made)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "i":
        info = np.iinfo(dtype)
        if not info.min <= v <= info.max:
            raise _err(key, f"an integer in [{info.min}, {info.max}] ({dtype})", v)
        return
    info = np.finfo(dtype)
    with np.errstate(over="ignore"):
        held = abs(float(np.asarray(v, np.float64).astype(dtype)))
    if not (held == 0 == v or info.tiny <= held <= info.max):
        raise _err(
            key, f"0 or a number of magnitude {info.tiny:.3g} to {info.max:.3g} ({dtype})", v
        )


def _hyper_value(key, v):
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _err(key, "a finite number", v)
    return v


def _axis(key: str, axis: Any) -> list:
    """The values of one axis: given, or num points linearly or log10-evenly from lo to hi."""
    if not isinstance(axis, dict):
        raise _err(key, "{ values = [...] } or { linspace | logspace = [lo, hi], num = n }", axis)
    kinds = [k for k in AXIS_KINDS if k in axis]
    extra = sorted(set(axis) - {*AXIS_KINDS, "num"})
    if len(kinds) != 1 or extra:
        raise _err(key, "a table with one of values, linspace, logspace (and num)", axis)
    kind = kinds[0]
    if kind == "values":
        if "num" in axis:
            raise ValueError(f"spec key `{key}.num` goes with linspace or logspace, not values")
        values = axis["values"]
        if not isinstance(values, list) or not values:
            raise _err(f"{key}.values", "a non-empty list of numbers", values)
        return [_hyper_value(f"{key}.values", v) for v in values]
    ends = axis[kind]
    if not isinstance(ends, list) or len(ends) != 2:
        raise _err(f"{key}.{kind}", "[lo, hi]", ends)
    lo, hi = (_float(f"{key}.{kind}", v) for v in ends)
    if "num" not in axis:
        raise ValueError(f"spec key `{key}.num` is missing: how many values from lo to hi")
    num = _int(f"{key}.num", axis["num"], 1, MAX_SIDE)
    if kind == "linspace":
        return np.linspace(lo, hi, num).tolist()
    return np.logspace(lo, hi, num).tolist()


def combinations(spec: dict) -> int:
    return math.prod(len(v) for v in spec["axes"].values())


def function(name: str):
    """The function of a "module:function" landscape (ValueError naming `landscape`)."""
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise _err("landscape", "an importable 'module:function'", f"{name} ({e})") from None
    if not callable(fn):
        raise _err("landscape", "a callable 'module:function'", name)
    return fn


def starts(spec: dict) -> np.ndarray:
    """[S, d] float64 starts: the grid (row-major, y along rows: `sweep.grid`'s points) or
    the seeded uniform draws; the caller casts them to the spec's dtype."""
    st = spec["starts"]
    box = np.asarray(st["box"], np.float64)
    if "grid" in st:
        h, w = st["grid"]
        xx, yy = np.meshgrid(np.linspace(*box[0], w), np.linspace(*box[1], h))
        return np.stack([xx.ravel(), yy.ravel()], axis=1)
    rng = np.random.default_rng(st["seed"])
    return rng.uniform(box[:, 0], box[:, 1], (st["random"], len(box)))


def axis_grid(spec: dict) -> dict[str, np.ndarray]:
    """Each axis's value for each combination, [A] (row-major over the axes, spec order)."""
    names = list(spec["axes"])
    if not names:
        return {}
    combos = np.array(list(itertools.product(*spec["axes"].values())), np.float64)
    return {k: combos[:, i] for i, k in enumerate(names)}
