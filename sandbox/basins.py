"""Which minimum a run reached: endpoint classification, basin fractions and basin maps."""

from collections.abc import Callable
from typing import Any

import numpy as np

NOT_CONVERGED = -1
DIVERGED = -2


def classify(x: Any, points: Any, tol: float, diverged: Any | None = None) -> np.ndarray:
    """Labels endpoints by the point they reached.

    Args:
      x: [N, d] endpoints.
      points: [k, d] candidate points (minima, usually).
      tol: an endpoint within this Euclidean distance of a point gets its index.
      diverged: optional [N] bool; these runs are labelled `DIVERGED` whatever their x.

    Returns:
      [N] int32: the index of the nearest point within `tol`, `NOT_CONVERGED` (-1) when
      none is that close, `DIVERGED` (-2) for diverged or non-finite endpoints.
    """
    x = np.asarray(x, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"`x` must have shape [N, d], got {x.shape}")
    if points.ndim != 2 or points.shape[1] != x.shape[1]:
        raise ValueError(f"`points` must have shape [k, {x.shape[1]}], got {points.shape}")
    if not tol > 0:
        raise ValueError(f"`tol` must be positive, got {tol}")
    labels = np.full(len(x), NOT_CONVERGED, dtype=np.int32)
    if len(points) and x.shape[1] == 2:
        nearest, dist = _nearest_2d(x, points)
        close = dist <= tol
        labels[close] = nearest[close]
    elif len(points):
        dist = np.linalg.norm(x[:, None, :] - points[None, :, :], axis=-1)
        nearest = np.argmin(dist, axis=1)
        close = dist[np.arange(len(x)), nearest] <= tol
        labels[close] = nearest[close]
    if x.shape[1] == 2:  # (faster than over an [N, 2] array; the same)
        bad = ~(np.isfinite(x[:, 0]) & np.isfinite(x[:, 1]))
    else:
        bad = ~np.all(np.isfinite(x), axis=1)
    if diverged is not None:
        diverged = np.asarray(diverged, dtype=bool)
        if diverged.shape != (len(x),):
            raise ValueError(
                f"`diverged` must have shape [{len(x)}] like `x`, got {diverged.shape}"
            )
        bad |= diverged
    labels[bad] = DIVERGED
    return labels


def _nearest_2d(x_Nx2: np.ndarray, points_Kx2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest point [N], its distance [N]) for 2-D points, one point at a time
    over contiguous coordinate vectors in preallocated buffers: the same numbers as the norm
    over an [N, k, 2] array (dx^2 + dy^2, then the root; ties go to the first point, as
    argmin), about 5x faster (the explorer labels a million starts per screen)."""
    xs, ys = np.ascontiguousarray(x_Nx2[:, 0]), np.ascontiguousarray(x_Nx2[:, 1])
    dx, dy, best = np.empty_like(xs), np.empty_like(xs), np.empty_like(xs)
    nearest = np.zeros(len(xs), np.intp)
    closer = np.empty(len(xs), bool)
    for i, (px, py) in enumerate(points_Kx2):
        np.multiply(np.subtract(xs, px, out=dx), dx, out=dx)
        np.multiply(np.subtract(ys, py, out=dy), dy, out=dy)
        if i == 0:
            np.add(dx, dy, out=best)
            continue
        np.add(dx, dy, out=dx)
        np.copyto(nearest, i, where=np.less(dx, best, out=closer))
        np.minimum(best, dx, out=best)
    return nearest, np.sqrt(best, out=best)


def fractions(labels: Any, num_points: int) -> np.ndarray:
    """Share of runs per label: [num_points + 2] = basins 0..k-1, not converged, diverged."""
    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        raise ValueError("`labels` must not be empty")
    counts = np.array(
        [np.sum(labels == i) for i in range(num_points)]
        + [np.sum(labels == NOT_CONVERGED), np.sum(labels == DIVERGED)],
        dtype=np.float64,
    )
    return counts / labels.size


def basin_map(
    fn: Callable | str,
    bounds: Any,
    n: int | tuple[int, int],
    points: Any,
    *,
    tol: float = 1e-2,
    **descend_kwargs: Any,
) -> np.ndarray:
    """Descends from every start of an H x W grid and labels each start by its endpoint.

    Args:
      fn: a landscape name or a function of x [2].
      bounds: [2, 2] box of the grid of starts.
      n: starts per side, or (H, W).
      points: [k, 2] minima to label by.
      tol: distance that counts as reaching a point.
      **descend_kwargs: passed to `sweep.descend` (`steps`, `lr`, `optimizer`, ...).

    Returns:
      labels_HxW int32 (row i is the i-th y value, column j the j-th x value).
    """
    from sandbox import sweep  # JAX only here: labelling and drawing saved runs need none

    starts = sweep.grid(bounds, n)
    h, w = (n, n) if np.isscalar(n) else n
    run = sweep.descend(fn, starts, **descend_kwargs)
    return classify(run.x, points, tol, run.diverged).reshape(h, w)


def cluster(x_Mx2: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Groups points within `tol` of a group's first point.

    Returns (centres_Cx2 (group means), counts_C, largest distance of a point from its
    group's mean).
    """
    rest = np.asarray(x_Mx2, np.float64)
    centres, counts, spread = [], [], 0.0
    while len(rest):
        near = np.linalg.norm(rest - rest[0], axis=1) <= tol
        c = rest[near].mean(axis=0)
        spread = max(spread, float(np.max(np.linalg.norm(rest[near] - c, axis=1))))
        centres.append(c)
        counts.append(int(near.sum()))
        rest = rest[~near]
    return np.reshape(centres, (-1, 2)), np.asarray(counts, np.int64), spread
