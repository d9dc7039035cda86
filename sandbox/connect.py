"""Mode connectivity: low-loss curves between two trained networks (Garipov et al. 2018).

Two networks w1, w2 trained from different seeds are usually separated by a barrier along the
straight line (1 - t) w1 + t w2, yet joined by a simple curve along which the training loss
stays low (Garipov et al. 2018; Draxler et al. 2018). The curve here is the quadratic Bezier

    phi(t) = (1 - t)^2 w1 + 2 t (1 - t) theta + t^2 w2,      phi(0) = w1, phi(1) = w2,

whose bend theta is trained by SGD on E_{t ~ U(0, 1)} L(phi(t)) (`train_bend`): each step
draws one t and a minibatch and moves theta along the gradient of L(phi(t)), which is
2 t (1 - t) times the gradient of L at phi(t).

Everything is pure and works on parameter pytrees; a network's loss and metrics come in as
functions. `along` evaluates any metrics function at many t as one chunked, vmapped
computation (`engine.map_chunks`); `plane` does the same over a grid on the plane through
w1, w2 and theta, on which the whole curve lies (`plane_basis`, `plane_coords`). Networks
with batch norm need statistics of their own at every evaluated point (Garipov et al.
recompute them at each t): the metrics function does that itself (the study recomputes them
from the training set in one pass).

    bend, history = connect.train_bend(minibatch_loss, w1, w2, key=key, steps=600, lr=0.05)
    metrics = connect.along(metrics_fn, w1, w2, jnp.linspace(0, 1, 21), bend=bend)
    connect.barrier(metrics["train_loss"])      # max along the path - mean of the two ends
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sandbox import checks, engine, hessian, network, surface
from sandbox.types import Array, Key, PyTree

# Steps per compiled call of `train_bend` (the progress bar moves once per block).
BLOCK = 50


def linear(t: Array, w1: PyTree, w2: PyTree) -> PyTree:
    """(1 - t) w1 + t w2."""
    return jax.tree.map(lambda a, b: (1 - t) * a + t * b, w1, w2)


def bezier(t: Array, w1: PyTree, bend: PyTree, w2: PyTree) -> PyTree:
    """(1 - t)^2 w1 + 2 t (1 - t) bend + t^2 w2: w1 at t = 0 and w2 at t = 1, exactly."""
    return jax.tree.map(
        lambda a, c, b: (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t**2 * b, w1, bend, w2
    )


def path(t: Array, w1: PyTree, w2: PyTree, bend: PyTree | None = None) -> PyTree:
    """The line (bend None) or the Bezier curve at t."""
    return linear(t, w1, w2) if bend is None else bezier(t, w1, bend, w2)


def barrier(values_T: Any) -> float:
    """max along the path minus the mean of its two ends (Garipov et al.'s barrier height)."""
    v = np.asarray(values_T, np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"`values_T` must be a 1-D array of >= 2 values, got shape {v.shape}")
    return float(np.max(v) - 0.5 * (v[0] + v[-1]))


def _check_pair(
    w1: PyTree, w2: PyTree, bend: PyTree | None = None, *, finite: bool = False
) -> None:
    """ValueError naming the argument unless w1, w2 (and the bend) are pytrees of one
    structure and shapes with floating-point leaves (and, with `finite`, finite values)."""
    named = {"w1": w1, "w2": w2} if bend is None else {"w1": w1, "w2": w2, "bend": bend}
    for name, tree in named.items():
        hessian.dimension(tree, name)  # floating-point parameters: t is never rounded
        if name != "w1":
            surface.check_like(tree, w1, name)
        if finite and not all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree)):
            raise ValueError(f"`{name}` must be finite, got NaN or inf in its parameters")


class BendHistory(NamedTuple):
    """What `train_bend` saw: the loss L(phi(t)) and the t of every step, [S] each."""

    loss_S: np.ndarray
    t_S: np.ndarray


def train_bend(
    loss: Callable[[PyTree, Key], Array],
    w1: PyTree,
    w2: PyTree,
    *,
    key: Key,
    steps: int,
    lr: float,
    momentum: float = 0.9,
    bend: PyTree | None = None,
    progress: bool = True,
) -> tuple[PyTree, BendHistory]:
    """Trains the Bezier bend theta by SGD with momentum on E_t L(phi(t)).

    Args:
      loss: (params, key) -> scalar, the training loss of a network with `params` on a
        minibatch it draws from `key` (in training mode: batch norm uses the batch's
        statistics). Pass the same function object to reuse the compiled step.
      w1, w2: the two trained networks' parameters (the same structure).
      key: draws each step's t ~ U(0, 1) and the key handed to `loss`.
      steps: S >= 1 SGD steps.
      lr: learning rate, positive (cosine decay to 0 over the steps).
      momentum: heavy-ball momentum in [0, 1).
      bend: the initial theta; default the midpoint (w1 + w2) / 2, where the curve is the line.
      progress: a bar over the blocks of `BLOCK` steps.

    Returns:
      (theta, BendHistory).
    """
    _check_pair(w1, w2, bend)
    steps = checks.integer("steps", steps, minimum=1, maximum=checks.INT32_MAX)
    lr = checks.positive("lr", lr)
    if not 0 <= momentum < 1:
        raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}")
    theta = linear(0.5, w1, w2) if bend is None else bend
    tx = optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=momentum)
    run = _bend_block(loss, tx)
    state = tx.init(theta)
    losses, ts = [], []
    blocks = range(0, steps, BLOCK)
    for start in engine.bar(blocks, desc="bend", unit="block") if progress else blocks:
        n = min(BLOCK, steps - start)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, start + jnp.arange(n))
        theta, state, (loss_b, t_b) = run(theta, state, w1, w2, keys)
        losses.append(np.asarray(loss_b))
        ts.append(np.asarray(t_b))
    return theta, BendHistory(np.concatenate(losses), np.concatenate(ts))


@functools.lru_cache(maxsize=8)  # each entry keeps its `loss`
def _bend_block(loss: Callable, tx: optax.GradientTransformation) -> Callable:
    def step(carry, key, w1, w2):
        theta, state = carry
        t_key, batch_key = jax.random.split(key)
        t = jax.random.uniform(t_key, dtype=jax.tree.leaves(theta)[0].dtype)
        value, g = jax.value_and_grad(lambda th: loss(bezier(t, w1, th, w2), batch_key))(theta)
        updates, state = tx.update(g, state, theta)
        return (optax.apply_updates(theta, updates), state), (value, t)

    @jax.jit
    def run(theta, state, w1, w2, keys):
        (theta, state), out = lax.scan(lambda c, k: step(c, k, w1, w2), (theta, state), keys)
        return theta, state, out

    return run


def along(
    metrics: Callable[[PyTree], dict],
    w1: PyTree,
    w2: PyTree,
    ts: Any,
    *,
    bend: PyTree | None = None,
    chunk: int | None = None,
    batch: int | None = None,
    store=None,
) -> dict[str, np.ndarray]:
    """`metrics(phi(t))` at every t of `ts`, along the line (bend None) or the curve.

    One chunked computation over t (`engine.map_chunks`, vmapped on each device).

    Args:
      metrics: params -> dict of scalars (e.g. {"train_loss", "train_acc", ...}); it handles
        batch-norm statistics itself.
      ts: [T] values of t (0 and 1 are the two networks).
      chunk: t values per compiled call (memory grows with it); default all.
      batch: t values a device evaluates at once (`engine.map_chunks`); None vmaps the whole
        share. Give 1 for convolutional networks: vmapped over t, every convolution has
        weights of its own per t, which XLA runs as a grouped convolution (slow on CPU).

    Returns:
      name -> [T] float arrays.
    """
    _check_pair(w1, w2, bend)
    ts_T = _points("ts", ts, w1, "a non-empty 1-D array of finite values", ndim=1)
    return _map(metrics, path, ts_T, (w1, w2, bend), chunk, batch, store, "path")


def _points(name: str, points: Any, w1: PyTree, expected: str, ndim: int) -> np.ndarray:
    """`points` as an array in w1's dtype, checked: `ndim` axes (a last axis of 2 for a
    plane's [G, 2]), at least one point, all finite."""
    p = np.asarray(points, dtype=np.asarray(jax.tree.leaves(w1)[0]).dtype)
    if p.ndim != ndim or len(p) == 0 or p.shape[1:] not in ((), (2,)) or not np.isfinite(p).all():
        raise ValueError(f"`{name}` must be {expected}, got shape {p.shape}: {points!r:.80}")
    return p


def _map(metrics, point, points, shared, chunk, batch, store, desc) -> dict[str, np.ndarray]:
    """`metrics(point(x, *shared))` for every x of `points`, one chunked computation."""
    return engine.map_chunks(
        _metrics_at(metrics, point),
        points,
        shared,
        chunk=chunk,
        batch=batch,
        store=store,
        desc=desc,
        unit="point",
    )


@functools.lru_cache(maxsize=8)
def _metrics_at(metrics: Callable, point: Callable) -> Callable:
    # One function object per (metrics, point): the engine's compiled cache keys on it.
    def one(x, shared):
        return metrics(point(x, *shared))

    return one


class Plane(NamedTuple):
    """An orthonormal basis of the plane through w1, w2 and the bend, with w1 as origin.

    Attributes:
      u: (w2 - w1) / |w2 - w1|.
      v: the bend's offset from w1 without its u component, normalized.
      w2_xy: [2] the coordinates of w2, (|w2 - w1|, 0).
      bend_xy: [2] the coordinates of the bend.
    """

    u: PyTree
    v: PyTree
    w2_xy: np.ndarray
    bend_xy: np.ndarray


def plane_basis(w1: PyTree, w2: PyTree, bend: PyTree) -> Plane:
    """The plane through the three points (Garipov et al.'s Figure 1 coordinates)."""
    _check_pair(w1, w2, bend, finite=True)
    d = surface.difference(w2, w1)
    length = float(surface.norm(d))
    if not length > 0:
        raise ValueError("`w2` equals `w1`: the two networks must differ")
    u = jax.tree.map(lambda a: a / length, d)
    e = surface.difference(bend, w1)
    x = float(surface.vdot(e, u))
    r = jax.tree.map(lambda a, b: a - x * b, e, u)
    y = float(surface.norm(r))
    if not y > 0:
        raise ValueError("`bend` lies on the line through w1 and w2: no plane to span")
    v = jax.tree.map(lambda a: a / y, r)
    return Plane(u, v, np.array([length, 0.0]), np.array([x, y]))


def plane_coords(basis: Plane, ts: Any) -> np.ndarray:
    """[T, 2]: where phi(t) lies on the plane, exactly (phi is a combination of its points)."""
    t = np.asarray(ts, np.float64)[:, None]
    return 2 * t * (1 - t) * basis.bend_xy[None] + t**2 * basis.w2_xy[None]


def plane(
    metrics: Callable[[PyTree], dict],
    w1: PyTree,
    basis: Plane,
    xy: Any,
    *,
    chunk: int | None = None,
    batch: int | None = None,
    store=None,
) -> dict[str, np.ndarray]:
    """`metrics(w1 + x u + y v)` at every point of `xy` [G, 2], one chunked computation
    (`chunk`, `batch` as in `along`)."""
    surface.check_like(w1, basis.u, "w1")
    xy_G = _points("xy", xy, w1, "a non-empty [G, 2] array of finite values", ndim=2)
    return _map(metrics, _on_plane, xy_G, (w1, basis.u, basis.v), chunk, batch, store, "plane")


def _on_plane(xy: Array, w1: PyTree, u: PyTree, v: PyTree) -> PyTree:
    return network.point(w1, xy, (u, v))
