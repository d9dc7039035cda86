"""Loss landscapes of a network: directions, lines, planes, interpolation and PCA paths, each
evaluated over a whole data set through the engine (sharded, chunked, resumable).

The tools of Li et al. 2018 ("Visualizing the loss landscape of neural nets") as pure JAX:

- `filter_normalized_direction(key, params)`: a Gaussian direction whose every output filter
  (the last axis of a Flax kernel: conv [kh, kw, in, out], dense [in, out]) is scaled to the
  norm of the same filter of the weights, so that a step of 1 along it moves each filter by
  its own size whatever the scale invariance of batch norm did to it. One-dimensional
  leaves (biases, batch-norm scales and offsets) are zero by default; `ignore_1d=False`
  sets them to the weights themselves, as the reference code does.
- `orthogonalize(d2, d1)`: Gram-Schmidt in parameter space (random directions in 10^5+
  dimensions are already within a few 1e-3 of orthogonal; this makes it exact, and the
  filter norms of d2 then hold only to that order).
- `pca_directions(path)`: the two principal directions of a training path (checkpoints
  minus the final point) and the path's coordinates in them; `checkpoint_path(folder)`
  reads the path from the checkpoints `sandbox.train` saved.
- `evaluate(model, variables, directions, coords, x, y)`: the mean cross-entropy and the
  accuracy of the network at every point `variables + sum_k coords[p, k] * directions[k]`,
  in eval mode (batch norm uses the running statistics of `variables`), over every image of
  `x`. `line`, `plane` and `interpolate` wrap it.

How `evaluate` runs: through `engine.map_chunks`, with the grid points as the items and the
data set (as [batches, B, ...] with a mask for the padded tail), the weights and the
directions as the shared inputs, put on the devices once. One compiled call takes a chunk
of grid points, splits it over the devices, and on each device `lax.map`s over its points;
each point is an axpy on the parameters (K x 0.85 M multiply-adds for ResNet-56) and a
`lax.scan` of the model's forward pass over the batches. No Python runs per point or per
batch, so the surface costs what the forward passes cost. With `store=path`, finished
chunks are kept in `path` with a digest of the model, parameters, directions, coordinates
and data; started again, `evaluate` computes only the rest, and a store of another model
or direction is refused with one line, never overwritten.

    d1 = surface.filter_normalized_direction(k1, variables["params"])
    d2 = surface.filter_normalized_direction(k2, variables["params"])
    xs = ys = surface.axis(-1.0, 1.0, 51)
    m = surface.plane(model, variables, d1, d2, xs, ys, x_NxHxWxC, y_N)    # m.loss [51, 51]

Directions may be pytrees like `variables["params"]` (the running statistics then stay
those of `variables`) or like `variables` itself (everything moves, as in `interpolate`,
where the statistics go linearly from those of the start to those of the end).
"""

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from sandbox import checkpoints, checks, engine, network
from sandbox import precision as precisions
from sandbox.types import Key

PyTree = Any
EPS = 1e-10  # added to a direction's filter norm before dividing (Li et al.'s value)
# Images one device forwards per compiled call, at least one grid point's worth: calls of a
# few seconds on CPU, so progress and the store follow the work closely.
IMAGES_PER_CALL = 1 << 15


class Metrics(NamedTuple):
    """Mean cross-entropy and accuracy at each point (NumPy; shaped like the grid)."""

    loss: np.ndarray
    accuracy: np.ndarray


class PCA(NamedTuple):
    """Principal directions of a training path.

    Attributes:
      directions: the unit-norm principal directions, pytrees like the parameters.
      explained: [K] fraction of the path's variance along each direction.
      coords: [T, K] each checkpoint minus the final point, projected on the directions.
    """

    directions: tuple[PyTree, ...]
    explained: np.ndarray
    coords: np.ndarray


# ----------------------------------------------------------------------------- directions


def check_like(tree: PyTree, like: PyTree, name: str) -> None:
    """ValueError naming `name` unless `tree` has the structure and shapes of `like`."""
    s_tree, s_like = jax.tree.structure(tree), jax.tree.structure(like)
    if s_tree != s_like:
        raise ValueError(
            f"`{name}` does not match the parameters: {s_tree.num_leaves} leaves with another "
            f"structure, expected {s_like.num_leaves} leaves like the parameters"
        )
    paths = jax.tree_util.tree_leaves_with_path(like)
    for (path, a), b in zip(paths, jax.tree.leaves(tree), strict=True):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"`{name}` does not match the parameters at {jax.tree_util.keystr(path)}: "
                f"shape {np.shape(b)}, expected {np.shape(a)}"
            )


def random_direction(key: Key, params: PyTree) -> PyTree:
    """Standard-normal entries, one independent key per leaf, shaped like `params`."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return treedef.unflatten(
        [
            jax.random.normal(k, jnp.shape(p), jnp.result_type(p))
            for k, p in zip(keys, leaves, strict=False)
        ]
    )


def normalize_filters(direction: PyTree, params: PyTree, *, ignore_1d: bool = True) -> PyTree:
    """`direction` with each output filter scaled to the norm of that filter of `params`.

    A filter is everything that produces one output channel: kernel[..., j]. Leaves of one
    dimension or none are zeroed (`ignore_1d`) or set to `params` (as Li et al.'s code does).
    """
    check_like(direction, params, "direction")

    def one(d, p):
        p = jnp.asarray(p)
        if p.ndim <= 1:
            return jnp.zeros_like(p) if ignore_1d else p
        axes = tuple(range(p.ndim - 1))
        d_norm = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
        p_norm = jnp.sqrt(jnp.sum(jnp.square(p), axis=axes, keepdims=True))
        return (d * (p_norm / (d_norm + EPS))).astype(p.dtype)

    return jax.tree.map(one, direction, params)


def filter_normalized_direction(key: Key, params: PyTree, *, ignore_1d: bool = True) -> PyTree:
    """A Gaussian direction, filter-normalized to `params` (see `normalize_filters`)."""
    return normalize_filters(random_direction(key, params), params, ignore_1d=ignore_1d)


def vdot(a: PyTree, b: PyTree) -> jax.Array:
    """The inner product of two pytrees of the same structure, as one vector each."""
    parts = jax.tree.map(lambda u, v: jnp.vdot(u, v, precision=lax.Precision.HIGHEST), a, b)
    return sum(jax.tree.leaves(parts), jnp.zeros(()))


def norm(a: PyTree) -> jax.Array:
    return jnp.sqrt(vdot(a, a))


def orthogonalize(d2: PyTree, d1: PyTree) -> PyTree:
    """d2 minus its projection on d1 (so that vdot(result, d1) = 0 up to rounding)."""
    check_like(d2, d1, "d2")
    c = vdot(d2, d1) / vdot(d1, d1)
    return jax.tree.map(lambda u, v: u - (c * v).astype(u.dtype), d2, d1)


def difference(end: PyTree, start: PyTree) -> PyTree:
    """end - start, leaf by leaf (a direction from `start` to `end`)."""
    check_like(end, start, "end")
    return jax.tree.map(lambda a, b: jnp.asarray(a) - jnp.asarray(b), end, start)


def pca_directions(
    path: Sequence[PyTree],
    *,
    final: PyTree | None = None,
    num_components: int = 2,
    ignore_1d: bool = True,
) -> PCA:
    """The principal directions of a training path, as in Li et al. 2018, section 7.

    The rows are theta_t - theta_final for the checkpoints theta_t of `path` (one-dimensional
    leaves zeroed when `ignore_1d`); the directions are the top right singular vectors of the
    centred rows (scikit-learn's PCA), and each row is projected on them without centring,
    so the final point sits at the origin.

    Args:
      path: T >= 2 parameter pytrees in training order.
      final: the point the directions are taken around (default: the last of `path`).
      num_components: how many directions (<= T - 1).
      ignore_1d: zero the biases and batch-norm parameters in the rows.
    """
    path = list(path)
    if len(path) < 2:
        raise ValueError(f"`path` must hold at least 2 checkpoints, got {len(path)}")
    k = num_components
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(path) - 1:
        raise ValueError(
            f"`num_components` must be an integer in [1, {len(path) - 1}] for {len(path)} "
            f"checkpoints, got {num_components!r}"
        )
    final = path[-1] if final is None else final
    for t, p in enumerate(path):
        check_like(p, final, f"path[{t}]")
    keep = jax.tree.map(lambda p: np.ndim(p) > 1 or not ignore_1d, final)
    flat_keep, _ = ravel_pytree(
        jax.tree.map(lambda p, m: np.full(np.shape(p), m, np.float32), final, keep)
    )
    flat_final, unravel = ravel_pytree(final)
    rows = np.stack(
        [np.asarray(ravel_pytree(p)[0] - flat_final, np.float64) for p in path]
    ) * np.asarray(flat_keep, np.float64)
    centred = rows - rows.mean(axis=0)
    # Economy SVD of the T x n rows (T is a few dozen). Directions below 1e-6 of the first
    # are rounding (float32 parameters) or repeated checkpoints, not a direction of the path.
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    if sv.size < k or sv[k - 1] <= 1e-6 * max(sv[0], 1e-300):
        raise ValueError(f"`path` spans fewer than {k} directions (checkpoints repeat?)")
    comps = vt[:k] * np.asarray(flat_keep, np.float64)  # [K, n]; ignored leaves exactly 0
    comps /= np.linalg.norm(comps, axis=1, keepdims=True)
    w = sv**2
    coords = rows @ comps.T
    explained = w[:k] / max(float(w.sum()), 1e-300)
    dtype = jnp.result_type(flat_final)
    directions = tuple(unravel(jnp.asarray(c, dtype)) for c in comps)
    return PCA(directions, explained, coords)


def checkpoint_path(folder: Path | str, epochs: Sequence[int] | None = None):
    """(epochs, parameters) of the checkpoints `sandbox.train.fit` saved in `folder`.

    Args:
      folder: a run's `checkpoints/` folder.
      epochs: which ones (default: every epoch saved there), in this order.

    Returns:
      The epochs and a list of parameter pytrees (NumPy), ready for `pca_directions`.
    """
    folder = Path(folder)
    saved = sorted(int(p.name) for p in folder.glob("*") if p.is_dir() and p.name.isdigit())
    if not saved:
        raise ValueError(f"`folder` {str(folder)!r} holds no training checkpoints")
    epochs = saved if epochs is None else [int(e) for e in epochs]
    missing = sorted(set(epochs) - set(saved))
    if missing:
        raise ValueError(
            f"`epochs`: no checkpoint for epoch(s) {missing} in {str(folder)!r}; have {saved}"
        )
    return epochs, [checkpoints.load_checkpoint(folder, e)[0]["params"] for e in epochs]


# ----------------------------------------------------------------------------- grids


def axis(lo: float, hi: float, n: int, name: str = "range") -> np.ndarray:
    """n >= 2 evenly spaced coordinates from lo to hi; ValueError naming `name` otherwise."""
    if not (np.isscalar(lo) and np.isscalar(hi) and np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"`{name}` must be two finite numbers (lo, hi), got ({lo!r}, {hi!r})")
    if not lo < hi:
        raise ValueError(f"`{name}` must satisfy lo < hi, got ({lo}, {hi}): empty or inverted")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"`{name}` needs an integer number of points >= 2, got {n!r}")
    return np.linspace(lo, hi, int(n))


def plane_coords(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """[len(ys) * len(xs), 2] points (x, y), row-major with y along rows."""
    xx, yy = np.meshgrid(np.asarray(xs, np.float64), np.asarray(ys, np.float64))
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    model: Any,
    variables: dict,
    directions: Sequence[PyTree],
    coords: Any,
    x: Any,
    y: Any,
    *,
    batch_size: int = 256,
    chunk_size: int | None = None,
    store: Path | str | None = None,
    progress: bool | None = None,
    apply_kwargs: dict | None = None,
    unroll: int = 1,
    precision: str = "float32",
) -> Metrics:
    """Loss and accuracy at `variables + coords[p] @ directions` for every point p.

    Args:
      model: a flax Module (anything with `apply(variables, x, **apply_kwargs) -> logits`,
        hashable, so its compilation is cached).
      variables: {"params": ..., and "batch_stats" when the model has them}.
      directions: K pytrees, each like `variables["params"]` or like `variables`.
      coords: [P, K] coordinates of the points (float64 is rounded to the parameter dtype).
      x: [N, ...] inputs; y: [N] integer labels.
      batch_size: images per forward pass (the last batch is padded and masked).
      chunk_size: grid points per compiled call, rounded up to a multiple of the device count
        (default: about `IMAGES_PER_CALL` images per device, at least one point each).
      store: a folder that keeps the finished chunks of points (`engine.map_chunks`): the
        same call after an interruption computes only the rest.
      progress: tqdm bar over the points; None shows one after a few seconds.
      apply_kwargs: keyword arguments of `model.apply` (default {"train": False}).
      unroll: batches per iteration of the loop over the data (`lax.scan`'s unroll). On an
        H200, 10 instead of 1 changed nothing measurable (docs/performance.md).
      precision: "float32" or "bfloat16" (`sandbox.precision`: the forward passes in
        bfloat16, the point's parameters and the sums of losses in float32). Part of what
        a store records: a store of the other precision is refused.

    Returns:
      Metrics with [P] arrays.
    """
    apply_kwargs = {"train": False} if apply_kwargs is None else dict(apply_kwargs)
    if not isinstance(variables, dict) or "params" not in variables:
        raise ValueError("`variables` must be a dict with 'params' (and 'batch_stats')")
    dirs = _as_variables(directions, variables)
    coords = _check_coords(coords, len(dirs))
    x, y = _check_data(x, y)
    _check_labels(model, variables, apply_kwargs, x, y)
    checks.integer("batch_size", batch_size, minimum=1)
    checks.integer("unroll", unroll, minimum=1)
    precisions.check(precision)
    n_points = len(coords)

    nd = len(jax.local_devices())
    b = min(batch_size, len(x))
    nb = -(-len(x) // b)
    if chunk_size is None:
        chunk_size = nd * max(1, IMAGES_PER_CALL // (nb * b))
    checks.integer("chunk_size", chunk_size, minimum=1)
    chunk = min(chunk_size, -(-n_points // nd) * nd)
    dtype = jnp.result_type(*jax.tree.leaves(variables["params"]))
    shared = {"parameters": variables, "directions": _stack(dirs), "data": _batches(x, y, nb, b)}
    one = _point_fn(model, tuple(sorted(apply_kwargs.items())), min(unroll, nb), precision)
    loss_sum, correct = engine.map_chunks(
        one,
        {"coords": np.asarray(coords, dtype)},
        shared,
        chunk=chunk,
        batch=1,  # one point at a time per device: a point is a whole pass over the data
        store=store,
        progress=progress,
        desc="surface",
        unit="point",
    )
    return Metrics(loss_sum.astype(np.float64) / len(x), correct / len(x))


def _check_coords(coords, k: int) -> np.ndarray:
    """`coords` as [P, k] float64, finite (checked for memory before any copy)."""
    coords = np.asarray(coords)
    if coords.ndim == 1 and k == 1:
        coords = coords[:, None]
    if coords.ndim != 2 or coords.shape[1] != k or coords.shape[0] == 0:
        raise ValueError(f"`coords` must have shape [P, {k}] with P >= 1, got {coords.shape}")
    _check_memory(len(coords), k)  # before any copy of the coordinates
    coords = coords.astype(np.float64, copy=False)
    if not np.all(np.isfinite(coords)):
        raise ValueError("`coords` must be finite")
    return coords


def _check_data(x, y) -> tuple:
    """(x [N, ...], y [N] integer labels), N >= 1."""
    # Arrays already on the devices stay there (no copy through the host per call).
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    y = y if isinstance(y, jax.Array) else np.asarray(y)
    if x.ndim < 2 or len(x) == 0:
        raise ValueError(f"`x` must have shape [N, ...] with N >= 1 images, got {x.shape}")
    if y.shape != (len(x),):
        raise ValueError(f"`y` must have shape [{len(x)}] like `x`, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`y` must hold integer labels, got {y.dtype}")
    return x, y


def _check_labels(model, variables, apply_kwargs, x, y) -> None:
    """Labels within the model's classes (read off its output shape, traced once)."""
    tree, leaves = engine.shape_key(variables)
    image = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    items = tuple(sorted(apply_kwargs.items()))
    try:
        classes = _num_classes(model, items, tree, tuple(leaves), image)
    except Exception as e:  # the model's own error, traced without computing anything
        raise _mismatch(model, variables, dict(items), image, e) from None
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= classes:
        raise ValueError(
            f"`y` must hold labels in [0, {classes}) (the model's classes), "
            f"got labels from {lo} to {hi}"
        )


def _mismatch(model, variables: dict, apply_kwargs: dict, image, error: Exception) -> ValueError:
    """Why `model.apply(variables, x)` cannot run, named by argument: a collection the model
    needs and `variables` lacks (batch-norm statistics), or images whose shape does not fit
    the parameters (e.g. 1-channel images for a 3-channel network)."""
    reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
    key = jax.random.key(0)  # an abstract trace of `model.init`: shapes only, no numbers
    try:
        want = jax.eval_shape(lambda k, xb: model.init(k, xb, **apply_kwargs), key, image)
    except Exception:  # the model cannot even be built on these images
        return ValueError(
            f"`x`: images of shape {tuple(image.shape[1:])} do not fit the model ({reason})"
        )
    missing = sorted(set(want) - set(variables))
    if missing:
        return ValueError(
            f"`variables` lacks {', '.join(repr(m) for m in missing)}, which the model needs "
            f"(e.g. the batch-norm statistics of a trained state: `train.variables(state)`)"
        )
    for name in sorted(want):
        have, need = jax.tree.leaves(variables[name]), jax.tree.leaves(want[name])
        if jax.tree.structure(variables[name]) != jax.tree.structure(want[name]):
            return ValueError(f"`variables[{name!r}]` does not have the model's structure")
        for a, b in zip(have, need, strict=True):
            if np.shape(a) != tuple(b.shape):
                return ValueError(
                    f"`x`: images of shape {tuple(image.shape[1:])} do not fit the network's "
                    f"parameters (a {name} leaf of shape {np.shape(a)} where these images "
                    f"need {tuple(b.shape)})"
                )
    return ValueError(f"`model` cannot be applied to `variables` and `x`: {reason}")


def _batches(x, y, nb: int, b: int):
    """x [nb, b, ...], y [nb, b] and the mask of real images (the last batch zero-padded)."""
    pad = nb * b - len(x)
    xp = jnp if isinstance(x, jax.Array) else np
    xb, yb = x, y.astype(np.int32)
    if pad:
        xb = xp.concatenate([xb, xp.zeros((pad, *x.shape[1:]), x.dtype)])
        yb = xp.concatenate([yb, xp.zeros(pad, np.int32)])
    mb = (np.arange(nb * b) < len(x)).reshape(nb, b)
    return xb.reshape(nb, b, *x.shape[1:]), yb.reshape(nb, b), mb


def line(model, variables, direction, alphas, x, y, **kw) -> Metrics:
    """`evaluate` along `variables + alpha * direction` for each alpha of `alphas`."""
    return evaluate(model, variables, [direction], np.asarray(alphas)[:, None], x, y, **kw)


def plane(model, variables, d1, d2, xs, ys, x, y, **kw) -> Metrics:
    """`evaluate` on the plane `variables + a d1 + b d2`; [len(ys), len(xs)] arrays."""
    _check_memory(len(xs) * len(ys), 2)  # before the grid of coordinates is made
    m = evaluate(model, variables, [d1, d2], plane_coords(xs, ys), x, y, **kw)
    shape = (len(ys), len(xs))
    return Metrics(m.loss.reshape(shape), m.accuracy.reshape(shape))


def interpolate(model, start, end, alphas, x, y, **kw) -> Metrics:
    """`evaluate` at (1 - alpha) start + alpha end, for variables {"params", ...}.

    The parameters move with alpha; the other collections (batch norm's running means and
    variances) with alpha clipped to [0, 1], since extrapolated variances can turn negative.
    """
    check_like(end, start, "end")
    alphas = np.asarray(alphas, np.float64)
    if alphas.ndim != 1:
        raise ValueError(f"`alphas` must have shape [A], got {alphas.shape}")
    step = difference(end, start)
    # The parameters as one direction, the other collections (if any) as a second one.
    zero = {k: jax.tree.map(jnp.zeros_like, v) for k, v in step.items()}
    directions = [{**zero, "params": step["params"]}]
    coords = [alphas]
    if len(step) > 1:
        directions.append({**step, "params": zero["params"]})
        coords.append(np.clip(alphas, 0.0, 1.0))
    return evaluate(model, start, directions, np.stack(coords, 1), x, y, **kw)


def _as_variables(directions: Sequence[PyTree], variables: dict) -> list[dict]:
    """Each direction as a pytree like `variables` (zero where it does not move)."""
    if isinstance(directions, dict) or not isinstance(directions, Sequence) or not directions:
        raise ValueError("`directions` must be a non-empty list of pytrees")
    out = []
    params_def = jax.tree.structure(variables["params"])
    for i, d in enumerate(directions):
        if jax.tree.structure(d) == params_def:
            check_like(d, variables["params"], f"directions[{i}]")
            full = jax.tree.map(jnp.zeros_like, variables)
            full = {**full, "params": d}
        else:
            check_like(d, variables, f"directions[{i}]")
            full = d
        out.append(jax.tree.map(lambda a, v: jnp.asarray(a, jnp.result_type(v)), full, variables))
    return out


@jax.jit  # one program per parameter structure (eagerly: one per leaf shape)
def _stack(dirs: list[dict]) -> dict:
    return jax.tree.map(lambda *a: jnp.stack(a), *dirs)


@functools.lru_cache(maxsize=16)
def _num_classes(model: Any, apply_items: tuple, tree, leaves: tuple, image) -> int:
    """The model's number of outputs, traced once per model and input shapes."""
    variables = jax.tree.unflatten(tree, leaves)
    out = jax.eval_shape(lambda v, xb: model.apply(v, xb, **dict(apply_items)), variables, image)
    return int(out.shape[-1])


@functools.lru_cache(maxsize=16)
def _point_fn(model: Any, apply_items: tuple, unroll: int, precision: str) -> Callable:
    """One grid point: ({"coords": [K]}, {"parameters", "directions" [K, ...], "data": (x, y,
    mask)}) -> the summed loss and the count of correct predictions over the data set, the
    forward passes in `precision`."""
    kwargs = dict(apply_items)

    def point(item, shared):
        c_K, origin, dirs = item["coords"], shared["parameters"], shared["directions"]
        x, y, mask = shared["data"]
        acc_dtype = jnp.promote_types(jnp.result_type(*jax.tree.leaves(origin)), jnp.float32)
        # origin + (coords @ directions): the displacement summed over K first, as one
        # tensordot over the stacked directions. `network.point` sums left to right
        # ((p + c_0 d_0) + c_1 d_1); for K >= 2 the two differ by float32 rounding (1e-7),
        # and this form keeps the landscape study's surfaces as they were computed.
        v = jax.tree.map(
            lambda o, d: o + jnp.tensordot(c_K.astype(d.dtype), d, axes=1).astype(o.dtype),
            origin,
            dirs,
        )

        v_c = precisions.variables(v, precision)  # cast once per point, not per batch

        def batch(carry, xym):
            xb, yb, mb = xym
            out = model.apply(v_c, precisions.cast(xb, precision), **kwargs)
            total, correct = network.masked_sums(precisions.logits(out, precision), yb, mb)
            s, n = carry
            return (s + total.astype(s.dtype), n + correct), None

        # Losses summed in at least float32 (float64 under x64 with float64 parameters).
        zero = (jnp.zeros((), acc_dtype), jnp.zeros((), jnp.int32))
        (s, n), _ = lax.scan(batch, zero, (x, y, mask), unroll=unroll)
        return s, n

    return point


def _check_memory(n_points: int, k: int) -> None:
    """A grid whose coordinates and results alone would not fit in half the host memory."""
    need = n_points * (8 * k + 8 + 8 + 1)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have // 2:
        raise ValueError(
            f"`coords`: a grid of {n_points:,} points needs {need / 2**30:.1f} GiB on the host for "
            f"its coordinates and results, more than half of the {have / 2**30:.0f} GiB here; "
            "evaluate it in parts"
        )


# ----------------------------------------------------------------------------- statistics


def surface_stats(loss_YxX: np.ndarray, xs: np.ndarray, ys: np.ndarray, *, level: float) -> dict:
    """Numbers that say how smooth and how convex a 2-D surface is.

    - centre: the loss at the grid point nearest (0, 0); min and max over the grid;
    - below_level: the fraction of the plane where the loss is below `level` (for
      classification, ln(classes): the loss of a uniform guess);
    - local_minima: grid points strictly lower than their 8 neighbours (interior only);
      a smooth basin has one;
    - nonconvex_fraction: the fraction of interior points where the finite-difference
      Hessian of the surface has a negative eigenvalue of at least 10% of its largest in
      magnitude (Li et al.'s |lambda_min / lambda_max| map, thresholded);
    - median_abs_ratio: the median of |lambda_min / lambda_max| of that 2x2 Hessian;
    - roughness: the mean |discrete Laplacian| divided by the mean |gradient|, per unit of
      coordinate (high for surfaces that change curvature from point to point);
    - non_finite: how many losses overflowed. For the other numbers they count as the
      largest finite loss (a plateau), so a blown-up region reads as flat, not as minima.
    """
    z = np.asarray(loss_YxX, np.float64)
    if z.ndim != 2 or min(z.shape) < 3:
        raise ValueError(f"`loss_YxX` must be a 2-D grid of at least 3 x 3, got {z.shape}")
    hx, hy = float(xs[1] - xs[0]), float(ys[1] - ys[0])
    finite = np.isfinite(z)
    if not finite.any():
        raise ValueError("`loss_YxX` has no finite value")
    zf = np.where(finite, z, np.max(z[finite]))
    ic, jc = int(np.argmin(np.abs(ys))), int(np.argmin(np.abs(xs)))
    c = zf[1:-1, 1:-1]
    neighbours = [
        zf[1 + di : zf.shape[0] - 1 + di, 1 + dj : zf.shape[1] - 1 + dj]
        for di in (-1, 0, 1)
        for dj in (-1, 0, 1)
        if di or dj
    ]
    local_min = np.all([c < nb for nb in neighbours], axis=0)
    fxx = (zf[1:-1, 2:] - 2 * c + zf[1:-1, :-2]) / hx**2
    fyy = (zf[2:, 1:-1] - 2 * c + zf[:-2, 1:-1]) / hy**2
    fxy = (zf[2:, 2:] - zf[2:, :-2] - zf[:-2, 2:] + zf[:-2, :-2]) / (4 * hx * hy)
    mean, dev = (fxx + fyy) / 2, np.sqrt(((fxx - fyy) / 2) ** 2 + fxy**2)
    lmax, lmin = mean + dev, mean - dev
    big = np.maximum(np.abs(lmax), np.abs(lmin))
    small = np.minimum(lmax, lmin)
    nonconvex = (small < 0) & (np.abs(small) >= 0.1 * big)
    gx = (zf[1:-1, 2:] - zf[1:-1, :-2]) / (2 * hx)
    gy = (zf[2:, 1:-1] - zf[:-2, 1:-1]) / (2 * hy)
    grad = np.sqrt(gx**2 + gy**2)
    return {
        "centre": float(z[ic, jc]),
        "min": float(np.nanmin(z)),
        "max": float(np.nanmax(z)),
        "level": float(level),
        "below_level": float(np.mean(z < level)),
        "local_minima": int(np.sum(local_min)),
        "nonconvex_fraction": float(np.mean(nonconvex)),
        "median_abs_ratio": float(
            np.median(np.divide(np.abs(lmin), lmax, out=np.ones_like(lmax), where=lmax > 0))
        ),
        "roughness": float(np.mean(np.abs(fxx + fyy)) / max(np.mean(grad), 1e-300)),
        "non_finite": int(np.sum(~finite)),
    }
