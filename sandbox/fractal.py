"""The fractal boundary of trainability (Sohl-Dickstein 2024): one run, its score, the boundary.

A one-hidden-layer tanh network (`models.mlp`, mean-field parameterization, no biases) is
trained by full-batch gradient descent on a fixed random regression problem with one
learning rate per layer: lr1 for the input layer W1, lr2 for the output layer W2. Whether
training converges or diverges, as a function of (lr1, lr2), draws a fractal.

Pure and unbatched: `train` is one network and one (lr1, lr2) pair, reduced to a signed
score (`score`); `score_grid` maps it over a grid (`engine.map_chunks`: chunks of the
flattened grid, inside one jit). `losses` keeps the whole loss curve of a run. `boundary`,
`box_counting_dimension` and the zoom helpers (`zoom_centre`, `local_mean`, `pixel_decades`)
are host-side NumPy on the finished image.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sandbox import checks, engine
from sandbox.models import mlp
from sandbox.types import Array, Key

# A run whose loss grew by this factor over its initial loss counts as blown up; its loss
# is clamped here, so non-finite losses never reach a mean (the notebook's max_val).
BLOWUP = 1e6
# Trainable: the mean normalized loss over the last WINDOW steps is below 1 (averages out
# oscillations at the edge of stability).
WINDOW = 20


class Data(NamedTuple):
    """A regression problem: P points x [P, n_in] with targets y [P, n_out]."""

    x: Array
    y: Array


def problem(key: Key, width: int, *, dtype=None) -> tuple[mlp.Params, Data]:
    """The paper's setup: initial weights and as many data points as parameters.

    The network is width -> width -> 1 (input dimension = width), so it has width^2 + width
    weights and the data set as many points; weights, inputs and targets are standard
    normal.

    Returns:
      (params, data): the initial (W1 [width, width], W2 [width, 1]) and `Data`.
    """
    checks.integer("width", width, minimum=1)
    init_key, x_key, y_key = jax.random.split(key, 3)
    params = mlp.init(init_key, (width, width, 1), dtype=dtype)
    num = mlp.num_params(params)
    x = jax.random.normal(x_key, (num, width), dtype=dtype)
    y = jax.random.normal(y_key, (num, 1), dtype=dtype)
    return params, Data(x, y)


def loss(params: mlp.Params, data: Data) -> Array:
    """Mean squared error of the network on `data`, a scalar."""
    return jnp.mean((mlp.apply(params, data.x) - data.y) ** 2)


def loss_and_grad(params: mlp.Params, data: Data) -> tuple[Array, mlp.Params]:
    """`loss` and its gradient for a one-hidden-layer network with one output, by hand.

    The same numbers as `jax.value_and_grad(loss)` (tests check it in float64), written
    as elementwise products and sums around the two products with the shared inputs: vmapped
    over learning rates, those two become large matrix products and the rest fuses, while
    autodiff's output-layer terms become batched matrix-vector products that run about 20%
    slower on CPU.
    """
    w1, w2 = params  # [n_in, n], [n, 1]
    if w2.ndim != 2 or w2.shape[1] != 1 or data.y.shape[-1] != 1:
        raise ValueError(f"`params` must be (W1, W2) with one output, got W2 {w2.shape}")
    xs = data.x * math.sqrt(2.0 / w1.shape[0])  # [P, n_in]
    a1 = 1.0 / w2.shape[0]
    h = jnp.tanh(xs @ w1)  # [P, n]
    v = w2[:, 0][None, :]  # [1, n]
    r = jnp.sum(h * v, axis=-1) * a1 - data.y[:, 0]  # [P]
    d = r[:, None] * (2.0 * a1 / r.shape[0])  # [P, 1]: d loss / d output
    g2 = jnp.sum(h * d, axis=0)[:, None]
    g1 = xs.T @ (d * v * (1 - h * h))
    return jnp.mean(r * r), (g1, g2)


def _step(params: mlp.Params, data: Data, lr1: Array, lr2: Array) -> tuple[mlp.Params, Array]:
    """One GD update with lr1 on W1 and lr2 on W2; returns (new params, loss before it)."""
    value, (g1, g2) = loss_and_grad(params, data)
    return (params[0] - lr1 * g1, params[1] - lr2 * g2), value


def _check_params(params) -> tuple[Array, Array]:
    if len(params) != 2:
        raise ValueError(f"`params` must be (W1, W2) of a one-hidden-layer MLP, got {len(params)}")
    return tuple(params)


def _check_problem(params, data: Data) -> tuple[Array, Array]:
    """(W1 [n_in, n], W2 [n, 1]) of floating dtype and data x [P, n_in], y [P, 1], P >= 1:
    a ValueError naming `params` or `data` otherwise (shapes and dtypes only: traceable)."""
    w1, w2 = _check_params(params)
    for name, w in (("W1", w1), ("W2", w2)):
        dtype = getattr(w, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or w.ndim != 2:
            raise ValueError(
                f"`params` {name} must be a 2-D floating-point array, got "
                f"{getattr(w, 'shape', '?')} {dtype}"
            )
    if w1.shape[1] != w2.shape[0] or w2.shape[1] != 1:
        raise ValueError(
            f"`params` must be W1 [n_in, n] and W2 [n, 1], got {w1.shape} and {w2.shape}"
        )
    x, y = data
    if getattr(x, "ndim", 0) != 2 or getattr(y, "ndim", 0) != 2:
        raise ValueError(f"`data` x and y must be 2-D, got {jnp.shape(x)} and {jnp.shape(y)}")
    if x.shape[0] == 0:
        raise ValueError("`data` must hold at least one point, got 0")
    if x.shape[0] != y.shape[0] or x.shape[1] != w1.shape[0] or y.shape[1] != 1:
        raise ValueError(
            f"`data` must be x [P, {w1.shape[0]}] and y [P, 1] (the network's input and "
            f"output widths), got x {x.shape} and y {y.shape}"
        )
    for name, a in (("x", x), ("y", y)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"`data` {name} must be floating-point, got {a.dtype}")
    return w1, w2


def losses(params: mlp.Params, data: Data, lr1: Array, lr2: Array, steps: int) -> Array:
    """Full-batch GD with lr1 on W1 and lr2 on W2; the loss before each update and at the end.

    Args:
      params: (W1 [n_in, n], W2 [n, 1]).
      data: the training set.
      lr1, lr2: learning rates of the input and output layer (scalars, may be traced).
      steps: number of updates (static).

    Returns:
      loss_T of shape [steps + 1]: loss_T[t] after t updates. A diverging run's losses become
      inf or NaN; `score` handles them.
    """
    params = _check_problem(params, data)
    checks.step_size("lr1", lr1)
    checks.step_size("lr2", lr2)
    checks.integer("steps", steps, minimum=1, maximum=checks.INT32_MAX - 1)

    def body(p, _):
        return _step(p, data, lr1, lr2)

    # steps + 1 evaluations: the loss after the last update comes with one more (unused) step.
    _, loss_T = jax.lax.scan(body, params, length=steps + 1)
    return loss_T


def score(loss_T: Array, *, window: int = WINDOW, blowup: float = BLOWUP) -> Array:
    """A signed convergence score of one run; NaN- and inf-safe.

    With v_t = loss_T[t] / loss_T[0] (non-finite -> `blowup`, then clamped to `blowup`), a run
    is trainable when v never reached `blowup` and the mean of v over its last `window` steps
    is below 1. Then the score is its speed, 1 - mean_t min(v_t, 1) over t >= 1, in (0, 1]:
    the area above its normalized loss curve, near 1 when the loss drops at once. Otherwise it
    is minus the share of steps left after the loss first reached `blowup` (step t_b, or
    T + 1 if it never did), -(T + 2 - t_b) / (T + 1), in [-1, 0): near -1 when training blows
    up at once, near 0 when the loss stays bounded without going down.

    Args:
      loss_T: [T + 1] losses from `losses`, T >= 1.
      window: steps averaged for the trainable test, in [1, T].
      blowup: loss ratio that counts as diverged for good.

    Returns:
      A scalar: > 0 trainable, < 0 not.
    """
    t_total = loss_T.shape[0] - 1
    _check_score_args(t_total, window)
    v = loss_T / loss_T[0]
    v = jnp.minimum(jnp.where(jnp.isfinite(v), v, blowup), blowup)[1:]
    blown = v >= blowup
    t_b = jnp.where(jnp.any(blown), jnp.argmax(blown) + 1, t_total + 1)
    return _signed(t_total, window, jnp.sum(jnp.minimum(v, 1)), jnp.sum(v[-window:]), t_b)


def _check_score_args(t_total: int, window: int) -> None:
    if t_total < 1:
        raise ValueError(f"`loss_T` must have at least 2 entries (steps >= 1), got {t_total + 1}")
    if not 1 <= window <= t_total:
        raise ValueError(f"`window` must be in [1, {t_total}], got {window}")


def _signed(t_total: int, window: int, sum_min: Array, sum_last: Array, t_b: Array) -> Array:
    trainable = (t_b > t_total) & (sum_last / window < 1)
    speed = jnp.maximum(1 - sum_min / t_total, 1e-12)
    left = (t_total + 2 - t_b).astype(speed.dtype)  # int32 would divide in float32
    return jnp.where(trainable, speed, -left / (t_total + 1))


def train(
    params: mlp.Params,
    data: Data,
    lr1: Array,
    lr2: Array,
    steps: int,
    *,
    window: int = WINDOW,
    blowup: float = BLOWUP,
    block: int = 25,
) -> Array:
    """`score(losses(params, data, lr1, lr2, steps))`, stopping once the run has blown up.

    The loss is reduced to the score's three sums as it goes, so no [T] curve is kept, and
    training goes in blocks of `block` updates inside a `while_loop` that ends when the
    loss ratio reached `blowup` (then the score is settled). Vmapped over a batch of runs,
    the loop runs until every run of the batch has blown up or finished: batches that
    diverge early, a large part of any lr grid, stop early.

    Every argument is checked before any work: `params` floating (W1 [n_in, n], W2 [n, 1]),
    `data` x [P, n_in] and y [P, 1] with P >= 1, concrete learning rates positive and
    finite, `steps` an integer the int32 step counter holds; a ValueError names the one
    that is not.

    Returns:
      A scalar: > 0 trainable, < 0 not (see `score`).
    """
    params = _check_problem(params, data)
    checks.step_size("lr1", lr1)
    checks.step_size("lr2", lr2)
    checks.integer("block", block, minimum=1, maximum=1 << 20)
    checks.integer("steps", steps, minimum=1, maximum=checks.INT32_MAX - block - 1)
    checks.integer("window", window, minimum=1, maximum=steps)
    loss0 = loss_and_grad(params, data)[0]  # = loss_T[0], as `score` normalizes
    zero = jnp.zeros((), loss0.dtype)
    never = jnp.array(steps + 1, jnp.int32)

    def update(carry, _):
        p, t, sum_min, sum_last, t_b = carry
        p, value = _step(p, data, lr1, lr2)  # value = loss_T[t]
        v = value / loss0
        v = jnp.minimum(jnp.where(jnp.isfinite(v), v, blowup), blowup)
        counted = (t >= 1) & (t <= steps)  # steps past the end of the last block: ignored
        sum_min = sum_min + jnp.where(counted, jnp.minimum(v, 1), 0)
        sum_last = sum_last + jnp.where(counted & (t > steps - window), v, 0)
        t_b = jnp.where(counted & (v >= blowup) & (t_b == never), t, t_b)
        return (p, t + 1, sum_min, sum_last, t_b), None

    def more(carry):
        _, t, _, _, t_b = carry
        return (t <= steps) & (t_b == never)

    def run_block(carry):
        return jax.lax.scan(update, carry, length=block)[0]

    carry = (params, jnp.array(0, jnp.int32), zero, zero, never)
    _, _, sum_min, sum_last, t_b = jax.lax.while_loop(more, run_block, carry)
    return _signed(steps, window, sum_min, sum_last, t_b)


def boundary(trainable_HxW: np.ndarray) -> np.ndarray:
    """Pixels with a 4-neighbour (up, down, left, right) of another class, bool [H, W].

    The classes are the image's values: bool (trainable or not) or integer labels (basins).
    """
    a = np.asarray(trainable_HxW)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"`trainable_HxW` must have shape [H, W], got {a.shape}")
    out = np.zeros(a.shape, bool)
    dv = a[1:] != a[:-1]
    dh = a[:, 1:] != a[:, :-1]
    out[1:] |= dv
    out[:-1] |= dv
    out[:, 1:] |= dh
    out[:, :-1] |= dh
    return out


class BoxFit(NamedTuple):
    """A box-counting fit: log N(s) = intercept - dim log s over `sizes`.

    Attributes:
      sizes: [K] box edges in pixels.
      counts: [K] boxes of each size that hold at least one set pixel.
      intercept: of the least-squares line through (log s, log N).
      residual: root-mean-square residual of that line, in natural-log units.
    """

    sizes: np.ndarray
    counts: np.ndarray
    intercept: float
    residual: float


def box_counts(mask_HxW: np.ndarray, sizes) -> np.ndarray:
    """Number of s x s boxes of a grid over the image that hold a set pixel, per size s.

    The image is padded with empty pixels to a whole number of boxes, so every pixel is
    covered; boxes start at pixel (0, 0).
    """
    mask = np.asarray(mask_HxW, dtype=bool)
    if mask.ndim != 2 or 0 in mask.shape:
        raise ValueError(f"`mask_HxW` must have shape [H, W], got {mask.shape}")
    out = []
    for s in _check_sizes(sizes, mask.shape):
        h, w = -(-mask.shape[0] // s) * s, -(-mask.shape[1] // s) * s
        padded = np.zeros((h, w), bool)
        padded[: mask.shape[0], : mask.shape[1]] = mask
        out.append(int(padded.reshape(h // s, s, w // s, s).any(axis=(1, 3)).sum()))
    return np.array(out, dtype=np.int64)


def box_counting_dimension(mask_HxW: np.ndarray, sizes) -> tuple[float, BoxFit]:
    """The box-counting (Minkowski) dimension of a set of pixels.

    N(s) boxes of edge s pixels cover the set; the dimension is the slope of log N(s)
    against log(1 / s), fitted by least squares over `sizes` (the fit range). A line gives
    1, a filled square 2.

    Args:
      mask_HxW: bool image of the set (e.g. `boundary(...)`), with at least one set pixel.
      sizes: at least 2 distinct box edges in pixels, each in [1, min(H, W)].

    Returns:
      (dim, fit): the slope and the `BoxFit` it came from.
    """
    mask = np.asarray(mask_HxW, dtype=bool)
    sizes = _check_sizes(sizes, mask.shape)
    if len(sizes) < 2:
        raise ValueError(f"`sizes` must hold at least 2 distinct box sizes, got {sizes.tolist()}")
    if not mask.any():
        raise ValueError("`mask_HxW` must have at least one set pixel")
    counts = box_counts(mask, sizes)
    log_s, log_n = np.log(sizes.astype(np.float64)), np.log(counts.astype(np.float64))
    slope, intercept = np.polyfit(log_s, log_n, 1)
    residual = float(np.sqrt(np.mean((log_n - (slope * log_s + intercept)) ** 2)))
    return float(-slope), BoxFit(sizes, counts, float(intercept), residual)


def _check_sizes(sizes, shape: tuple[int, ...]) -> np.ndarray:
    s = np.unique(np.asarray(sizes))
    if s.ndim != 1 or s.size == 0 or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"`sizes` must be a list of integer box sizes, got {sizes!r}")
    if s[0] < 1 or s[-1] > min(shape[:2]):
        raise ValueError(f"`sizes` must be in [1, {min(shape[:2])}], got {s.tolist()}")
    return s


def local_mean(a_HxW: np.ndarray, r: int) -> np.ndarray:
    """Mean of `a_HxW` over the (2r + 1) x (2r + 1) window around each pixel, float64 [H, W].

    Edge pixels are repeated outward, so every window is full. Summed-area table: O(H W)
    whatever r.
    """
    a = np.asarray(a_HxW)
    if a.ndim != 2 or 0 in a.shape:
        raise ValueError(f"`a_HxW` must have shape [H, W], got {a.shape}")
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"`r` must be an integer >= 0, got {r!r}")
    k = 2 * r + 1
    c = np.pad(a.astype(np.float64), r, mode="edge").cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))  # c[i, j]: sum over the padded image's [:i, :j]
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def pixel_decades(lim: tuple[float, float], n: int) -> float:
    """Spacing of an n-point grid from lim[0] to lim[1] (both included): decades per pixel
    when lim is a log10 range."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"`n` must be an integer >= 2, got {n!r}")
    return (lim[1] - lim[0]) / (n - 1)


def zoom_centre(
    trainable_HxW: np.ndarray,
    lim1: tuple[float, float],
    lim2: tuple[float, float],
    target: tuple[float, float],
    radius_px: float,
    half_px: float,
) -> tuple[float, float]:
    """The centre of the next zoom into an image of the boundary: a boundary pixel near `target`.

    The image covers lim1 (columns, lr1) x lim2 (rows, lr2), both ends included, in the
    units of `target` (log10 lr). Picked: the boundary pixel nearest `target` whose window
    of the next zoom's size (half-width `half_px` pixels) is 20% to 80% trainable, so the
    zoom shows both sides; if none within `radius_px` pixels is, the most evenly split one
    there (the nearest boundary pixel when none is within `radius_px`).

    Args:
      trainable_HxW: bool image, True where the run trains.
      lim1, lim2: (first, last) coordinate of the columns and of the rows.
      target: (c1, c2), the point to zoom near.
      radius_px: how far from `target` to look, in pixels.
      half_px: half-width of the next zoom's window, in pixels.

    Returns:
      (c1, c2): coordinates of the chosen pixel.
    """
    trainable = np.asarray(trainable_HxW, dtype=bool)
    h, w = trainable.shape
    ii, jj = np.nonzero(boundary(trainable))
    if ii.size == 0:
        raise ValueError(
            "`trainable_HxW` has no boundary pixel (all runs trainable or all diverged): "
            "widen the window of learning rates"
        )
    ti = (target[1] - lim2[0]) / (lim2[1] - lim2[0]) * (h - 1)
    tj = (target[0] - lim1[0]) / (lim1[1] - lim1[0]) * (w - 1)
    dist = np.hypot(ii - ti, jj - tj)
    near = dist <= max(radius_px, dist.min())
    frac = local_mean(trainable, max(1, round(half_px)))[ii, jj]
    balance = np.where(near, np.minimum(frac, 1 - frac), -1.0)
    mixed = balance >= 0.2
    k = int(np.argmin(np.where(mixed, dist, np.inf))) if mixed.any() else int(np.argmax(balance))
    c1 = lim1[0] + jj[k] * (lim1[1] - lim1[0]) / (w - 1)
    c2 = lim2[0] + ii[k] * (lim2[1] - lim2[0]) / (h - 1)
    return float(c1), float(c2)


# Runs per call of `score_grid` (a progress-bar tick): a few seconds of work each on CPU.
GRID_CHUNK = 16384
# The two phase spaces of the paper's notebook: per-layer learning rates, and an offset of
# the input layer's initial weights against one learning rate of both layers.
PHASE_SPACES = ("lr_vs_lr", "init_vs_lr")


def offset_init(params: mlp.Params, offset: Array) -> mlp.Params:
    """The initial weights with `offset` added to every entry of the input layer's W1 (the
    mean of its initialization moves from 0 to `offset`); W2 unchanged."""
    w1, w2 = _check_params(params)
    return (w1 + offset, w2)


def score_grid(
    params: mlp.Params,
    data: Data,
    a_W,
    b_H,
    *,
    steps: int,
    batch_size: int,
    store=None,
    phase_space: str = "lr_vs_lr",
) -> np.ndarray:
    """`train` on every point of a grid: score_HxW[i, j] at (a_W[j], b_H[i]).

    `phase_space` "lr_vs_lr": a = lr1 (input layer), b = lr2 (output layer), from `params`.
    "init_vs_lr" (the paper's second phase space): a = an offset added to the input layer's
    initial weights (`offset_init`), b = the learning rate of both layers.

    The grid is flattened to N = H W pairs and mapped by `engine.map_chunks`, `batch_size`
    runs vectorized at a time on each device, `GRID_CHUNK` runs per call; `store` keeps the
    finished chunks (resume, several processes). Call under `jax.enable_x64(True)` for
    float64.
    """
    if phase_space not in PHASE_SPACES:
        raise ValueError(f"`phase_space` must be one of {PHASE_SPACES}, got {phase_space!r}")
    _check_problem(params, data)
    a_W, b_H = np.asarray(a_W), np.asarray(b_H)
    for name, v in (("a_W", a_W), ("b_H", b_H)):
        if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError(f"`{name}` must be a non-empty 1-D array of finite numbers")
    lrs = (a_W, b_H) if phase_space == "lr_vs_lr" else (b_H,)
    if not all(np.all(v > 0) for v in lrs):
        raise ValueError("learning rates of the grid must be positive")
    g1, g2 = np.meshgrid(a_W, b_H)
    ab_Nx2 = np.stack([g1.ravel(), g2.ravel()], axis=1).astype(params[0].dtype)
    score_N = engine.map_chunks(
        _grid_point(steps, phase_space),
        {"lr": ab_Nx2},
        {"params": params, "data": data},
        chunk=min(GRID_CHUNK, len(ab_Nx2)),
        lane=batch_size,
        batch=batch_size,
        store=store,
        desc=f"fractal {len(b_H)}x{len(a_W)}",
        unit="run",
    )
    return np.asarray(score_N, np.float64).reshape(len(b_H), len(a_W))


def phase_point(params: mlp.Params, a: Array, b: Array, phase_space: str = "lr_vs_lr"):
    """The run at point (a, b) of a phase space: (its initial params, lr1, lr2).

    "lr_vs_lr": (params, a, b). "init_vs_lr": (`offset_init(params, a)`, b, b).
    """
    if phase_space == "init_vs_lr":
        return offset_init(params, a), b, b
    if phase_space != "lr_vs_lr":
        raise ValueError(f"`phase_space` must be one of {PHASE_SPACES}, got {phase_space!r}")
    return params, a, b


@functools.lru_cache(maxsize=8)
def _grid_point(steps: int, phase_space: str = "lr_vs_lr"):
    def one(item, shared):
        p, lr1, lr2 = phase_point(shared["params"], item["lr"][0], item["lr"][1], phase_space)
        return train(p, shared["data"], lr1, lr2, steps)

    return one
