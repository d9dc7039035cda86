"""Query parsing: every request parameter checked, one `BadRequest` (HTTP 400) naming it."""

import dataclasses
import math

import numpy as np

from sandbox import checks, fractal, optim

N_MAX = 1024  # /api/basins, /api/trainability: at most N_MAX x N_MAX starts
VIEW_MAX = 2048  # /view.png: at most this many pixels per side
STEPS_MAX = 20_000  # descent steps per run
TRAIN_STEPS_MAX = 5_000  # fractal-network GD steps per run
COLOURS = ("basin", "steps", "loss")
# A grid resolves in a dtype when its pixel spacing spans at least this many ulps of the
# largest coordinate: below it float32 switches to float64, below it in float64 it is refused.
RESOLVE_ULPS = 64
# The fractal study's network and window (studies/fractal.py, Config): width 8, seed 0,
# 500 steps, log10 lr1 in (-1, 7), log10 lr2 in (0, 3). sandbox/ does not import studies/.
TRAIN_WIDTH, TRAIN_SEED, TRAIN_STEPS = 8, 0, 500
TRAIN_BOUNDS = np.array([[-1.0, 7.0], [0.0, 3.0]])
# The paper's second phase space (`fractal.score_grid(..., phase_space="init_vs_lr")`):
# log10 of the offset added to the input layer's initial weights (columns) against log10 of
# the one learning rate of both layers (rows).
INIT_BOUNDS = np.array([[-1.0, 2.0], [0.0, 2.0]])
PHASES = {"trainability": ("lr_vs_lr", TRAIN_BOUNDS), "init_vs_lr": ("init_vs_lr", INIT_BOUNDS)}
TRAIN_PX = (16, 32, 64, 128, 256)  # computed pixels per trainability tile side


class BadRequest(ValueError):
    """A request parameter that is missing, malformed or out of range (HTTP 400)."""


def _read(q: dict, name: str, default, convert: type, what: str):
    """`convert(q[name])`; `default` when absent (None: required); a BadRequest naming `name`
    and `what` was expected when it does not convert."""
    raw = q.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"`{name}` is required")
        return default
    try:
        return convert(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be {what}, got {raw!r}") from None


def number(q: dict, name: str, default: float | None = None) -> float:
    """A finite float from the query; `default` when absent (None: required)."""
    v = _read(q, name, default, float, "a number")
    if not math.isfinite(v):
        raise BadRequest(f"`{name}` must be finite, got {q.get(name)!r}")
    return v


def within(q: dict, name: str, lo: float, hi: float) -> float:
    """A required number in [lo, hi] from the query (a start inside a map's bounds)."""
    v = number(q, name)
    if not lo <= v <= hi:
        raise BadRequest(f"`{name}` must be within the map's bounds [{lo:g}, {hi:g}], got {v:g}")
    return v


def integer(q: dict, name: str, default: int | None, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from the query; `default` when absent (None: required)."""
    v = _read(q, name, default, int, "an integer")
    if not lo <= v <= hi:
        raise BadRequest(f"`{name}` must be an integer in [{lo}, {hi}], got {v}")
    return v


def no_others(q: dict, allowed: set[str], what: str) -> None:
    """Every parameter of the query is one of `allowed`: an unknown one is named."""
    unknown = sorted(set(q) - allowed)
    if unknown:
        names = ", ".join(f"`{k}`" for k in unknown)
        raise BadRequest(f"unknown parameter(s) {names}; {what} takes {sorted(allowed)}")


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

    def program(self) -> tuple:
        """What a compiled descent depends on (not the values of the hyperparameters)."""
        return (self.surface, self.optimizer, self.steps, self.colour == "steps")


COMMON = {"landscape", "optimizer", "steps", "colour", "tol"}
BOX = {"x0", "x1", "y0", "y1"}


def descent(q: dict, surfaces: dict, extra: set[str]) -> Descent:
    """The landscape, optimizer, hyperparameters, steps and colouring of a query; any other
    parameter than these and `extra` is refused by name."""
    name = q.get("landscape", "himmelblau")
    if name not in surfaces:
        listed = sorted(n for n in surfaces if not n.startswith("@"))  # (@sweep: the page's)
        raise BadRequest(f"unknown `landscape` {name!r}; known: {', '.join(listed)}")
    opt = q.get("optimizer", "sgd")
    if opt not in optim.names():
        raise BadRequest(f"unknown `optimizer` {opt!r}; known: {', '.join(optim.names())}")
    defaults = optim.hyperparameters(opt)
    # `lr` only: `learning_rate` (the library's alias) beside it would be a second lr.
    no_others(q, COMMON | extra | set(defaults), f"optimizer {opt!r}")
    hyper = {}
    for k, default in defaults.items():
        if k in optim.INTEGER_HYPERS:
            hyper[k] = float(integer(q, k, default, 0, checks.INT32_MAX))
        else:
            hyper[k] = number(q, k, default)
    try:
        resolved = optim.resolve(opt, hyper)
        for k, v in resolved.items():
            optim.check_scalar(k, v)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    colour = q.get("colour", "basin")
    if colour not in COLOURS:
        raise BadRequest(f"`colour` must be one of {', '.join(COLOURS)}, got {colour!r}")
    tol = number(q, "tol", 1e-3)
    if tol <= 0:
        raise BadRequest(f"`tol` must be positive, got {tol}")
    steps = integer(q, "steps", 1000, 1, STEPS_MAX)
    return Descent(name, opt, tuple(sorted(resolved.items())), steps, colour, tol)


def box(q: dict) -> np.ndarray:
    """(x0, x1, y0, y1) of the query as [[x0, x1], [y0, y1]], increasing."""
    x0, x1, y0, y1 = (number(q, k) for k in ("x0", "x1", "y0", "y1"))
    if not x0 < x1:
        raise BadRequest(f"`x0` must be below `x1`, got x0={x0}, x1={x1}")
    if not y0 < y1:
        raise BadRequest(f"`y0` must be below `y1`, got y0={y0}, y1={y1}")
    return np.array([[x0, x1], [y0, y1]])


def tile(z: str, x: str, y: str, max_zoom: int) -> tuple[int, int, int]:
    """Slippy-map tile indices, z in [0, max_zoom] (the map's deepest resolvable zoom)."""
    q = {"z": z, "x": x, "y": y}
    zi = integer(q, "z", None, 0, max_zoom)
    return zi, integer(q, "x", None, 0, 2**zi - 1), integer(q, "y", None, 0, 2**zi - 1)


@dataclasses.dataclass(frozen=True)
class Training:
    """What a trainability request asks for: the phase space, steps, network width, seed."""

    phase: str  # a key of PHASES
    steps: int
    width: int
    seed: int

    def key(self) -> str:
        return f"{self.phase}|{self.steps},{self.width},{self.seed}"

    def program(self) -> tuple:
        return (self.phase, self.steps, self.width)


def training(q: dict, phase: str, extra: set[str]) -> Training:
    """The phase space (`trainability` or `init_vs_lr`), steps, width and seed of a query."""
    if phase not in PHASES:
        raise BadRequest(f"unknown `map` {phase!r}; known: {', '.join(PHASES)}")
    no_others(q, {"steps", "width", "seed"} | extra, "a trainability map")
    steps = integer(q, "steps", TRAIN_STEPS, fractal.WINDOW, TRAIN_STEPS_MAX)
    width = integer(q, "width", TRAIN_WIDTH, 1, 64)
    return Training(phase, steps, width, integer(q, "seed", TRAIN_SEED, 0, 2**31 - 1))


def axis_values(box_: np.ndarray, nx: int, ny: int, names: tuple[str, str, str, str]):
    """10 ** the pixel centres of a log10 box: [nx] columns and [ny] rows, each finite and
    positive, or a BadRequest naming the bound (`names`: x0, x1, y0, y1 as the query
    calls them) that leaves the range a float64 holds."""
    out = []
    for axis, n, lo_name, hi_name in ((0, nx, names[0], names[1]), (1, ny, names[2], names[3])):
        lo, hi = box_[axis]
        with np.errstate(over="ignore", under="ignore"):
            v = 10.0 ** (lo + (np.arange(n) + 0.5) * (hi - lo) / n)
        if not (np.all(np.isfinite(v)) and np.all(v > 0)):
            bad, value = (lo_name, lo) if not (np.isfinite(v[0]) and v[0] > 0) else (hi_name, hi)
            raise BadRequest(
                f"`{bad}` = {value:g} gives 10^{value:g}, not a finite positive float64 "
                "(these maps take log10 values in about [-300, 300])"
            )
        out.append(v)
    return out[0], out[1]
