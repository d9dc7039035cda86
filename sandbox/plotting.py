"""Figures: contours and paths, surfaces, gradient fields, basin maps, curves, GIFs.

Drawing a saved run needs no JAX: it is imported only where a figure evaluates a function.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation, colors, patheffects
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sandbox import checks
from sandbox.basins import DIVERGED

if TYPE_CHECKING:
    from sandbox import types

ONE_COL = 3.25  # inches: one column of a two-column page
FULL = 6.75  # inches: full page width
STYLE = pathlib.Path(__file__).with_name("sandbox.mplstyle")

NOT_CONVERGED_COLOR = (0.85, 0.85, 0.85, 1.0)  # light gray
DIVERGED_COLOR = (0.0, 0.0, 0.0, 1.0)  # black

# Markers for `points` dicts: known names get fixed markers, others take the next one.
_POINT_MARKERS = {
    "minimum": "*",
    "minima": "*",
    "saddle": "D",
    "saddles": "D",
    "maximum": "^",
    "maxima": "^",
}
_OTHER_MARKERS = ("s", "P", "v", "p", "h", "d")
_MARKER_AREA = {"*": 150.0, "D": 30.0}  # scatter sizes (pt^2); 50 for the rest
_PATH_COLORS = ("C3", "C1", "C6", "C0", "C2", "C4", "C5", "C8", "C9", "C7")
_MANY_PATHS = 10  # above this many paths, draw them thin in one colour


# --------------------------------------------------------------------------- checks


def _bounds_2d(bounds) -> np.ndarray:
    b = np.asarray(bounds, dtype=float)
    if b.shape != (2, 2):
        raise ValueError(f"`bounds` must have shape [2, 2] ((xlo, xhi), (ylo, yhi)), got {b.shape}")
    if not np.all(np.isfinite(b)) or not np.all(b[:, 0] < b[:, 1]):
        raise ValueError(f"`bounds` must be finite with lo < hi, got {b.tolist()}")
    return b


def _bounds_1d(bounds) -> np.ndarray:
    b = np.asarray(bounds, dtype=float)
    if b.shape != (2,):
        raise ValueError(f"`bounds_1d` must have shape [2] (lo, hi), got {b.shape}")
    if not np.all(np.isfinite(b)) or not b[0] < b[1]:
        raise ValueError(f"`bounds_1d` must be finite with lo < hi, got {b.tolist()}")
    return b


def _check_paths(paths, name: str = "paths") -> np.ndarray:
    p = np.asarray(paths, dtype=float)
    if p.ndim != 3 or p.shape[-1] != 2 or 0 in p.shape:
        raise ValueError(f"`{name}` must have shape [N, T, 2], got {p.shape}")
    return p


def _check_points(points, name: str) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.size == 0:
        return np.zeros((0, 2))
    if p.ndim != 2 or p.shape[-1] != 2:
        raise ValueError(f"`{name}` must have shape [k, 2], got {p.shape}")
    return p


def _check_points_dict(points) -> dict[str, np.ndarray]:
    if points is None:
        return {}
    if not isinstance(points, Mapping):
        raise ValueError(
            "`points` must be a dict from label to an array of shape [k, 2], "
            f"got {type(points).__name__}"
        )
    return {str(k): _check_points(v, f"points[{k!r}]") for k, v in points.items()}


# ------------------------------------------------------------------------ evaluation


def _evaluate(fn: types.ScalarFn, x_Mxd: np.ndarray) -> np.ndarray:
    """fn at each row of x_Mxd as float numpy [M] (one jit of the vmapped fn)."""
    import jax
    import jax.numpy as jnp

    def scalar_fn(x):
        return jnp.reshape(fn(x), ())  # also accepts fns that return shape [1]

    return np.asarray(jax.jit(jax.vmap(scalar_fn))(jnp.asarray(x_Mxd)), dtype=float)


def _mesh(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    b = _bounds_2d(bounds)
    n = checks.integer("n", n, minimum=2)
    return np.meshgrid(np.linspace(*b[0], n), np.linspace(*b[1], n))


def evaluate_grid(
    fn: types.ScalarFn, bounds, n: int = 201
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluates a 2-D landscape on a regular grid.

    Args:
        fn: x of shape [2] -> scalar (pure jnp).
        bounds: array-like [2, 2], ((xlo, xhi), (ylo, yhi)).
        n: points per axis.

    Returns:
        (X_HxW, Y_HxW, Z_HxW) numpy arrays with H = W = n. Row i is y_i and column j
        is x_j (`np.meshgrid` "xy" order); Z[i, j] = fn([x_j, y_i]).
    """
    X, Y = _mesh(bounds, n)
    Z = _evaluate(fn, np.stack([X.ravel(), Y.ravel()], axis=-1))
    return X, Y, Z.reshape(X.shape)


def _grad_field(fn: types.ScalarFn, bounds, n: int) -> tuple[np.ndarray, ...]:
    """(X_HxW, Y_HxW, U_HxW, V_HxW) with (U, V) = jax.grad(fn) on an n x n grid."""
    import jax
    import jax.numpy as jnp

    X, Y = _mesh(bounds, n)
    pts = jnp.asarray(np.stack([X.ravel(), Y.ravel()], axis=-1))
    G = np.asarray(jax.jit(jax.vmap(jax.grad(fn)))(pts), dtype=float)
    return X, Y, G[:, 0].reshape(X.shape), G[:, 1].reshape(X.shape)


def _log_values(Z: np.ndarray) -> np.ndarray:
    """log10(Z - min Z + eps), eps a millionth of the finite range; NaN elsewhere."""
    finite = np.isfinite(Z)
    if not finite.any():
        return Z
    lo, hi = Z[finite].min(), Z[finite].max()
    eps = 1e-6 * (hi - lo) if hi > lo else 1.0
    return np.where(finite, np.log10(np.where(finite, Z - lo, 0.0) + eps), np.nan)


def _cmap(cmap):
    return mpl.colormaps[cmap or mpl.rcParams["image.cmap"]]


# --------------------------------------------------------------------------- saving


def _out_path(path, default_suffix: str) -> pathlib.Path:
    out = pathlib.Path(path)
    if not out.suffix:
        out = out.with_suffix(default_suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _write_atomic(out: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """Calls write(tmp) on a temp file beside `out` (same suffix), then renames it."""
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=out.suffix)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; figures are meant to be read
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(fig: Figure, path, *, dpi: float | None = None) -> pathlib.Path:
    """Writes `fig` atomically (temp file in the same folder, then rename); closes it.

    Args:
        fig: the figure.
        path: output file; its suffix picks the format (.png when it has none).
            Missing parent folders are created.
        dpi: resolution; None takes `savefig.dpi` of the house style (150).

    Returns:
        The path written.
    """
    try:
        out = _out_path(path, ".png")
        kwargs = {"format": out.suffix[1:]} | ({} if dpi is None else {"dpi": dpi})
        with plt.style.context(STYLE):  # savefig reads savefig.* rcParams at save time
            _write_atomic(out, lambda tmp: fig.savefig(tmp, **kwargs))
    finally:
        plt.close(fig)
    return out


def panel_grid(
    n: int, max_cols: int, row_height: float, extra_height: float = 0.0
) -> tuple[Figure, np.ndarray]:
    """A page-wide figure of `n` panels in rows of at most `max_cols`, the cells past the
    n-th switched off.

    Args:
        n: panels, >= 1.
        max_cols: panels per row at the most, >= 1.
        row_height: inches per row.
        extra_height: inches added once (a legend or a title).

    Returns:
        (fig, axes [rows, cols]); the panels are `axes.flat[:n]`.
    """
    checks.integer("n", n, minimum=1)
    checks.integer("max_cols", max_cols, minimum=1)
    cols = min(max_cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(FULL, row_height * rows + extra_height),
        layout="constrained",
        squeeze=False,
    )
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


# ------------------------------------------------------------------------- drawing


def _draw_points(ax: Axes, points: dict[str, np.ndarray], zorder: float = 5) -> None:
    others = iter(_OTHER_MARKERS * 4)
    for label, p in points.items():
        marker = _POINT_MARKERS.get(label.lower()) or next(others)
        if len(p):
            ax.scatter(
                p[:, 0],
                p[:, 1],
                s=_MARKER_AREA.get(marker, 50.0),
                marker=marker,
                facecolor="white",
                edgecolor="black",
                linewidth=0.8,
                label=label,
                zorder=zorder,
            )


def _draw_paths(ax: Axes, paths: np.ndarray) -> None:
    """Paths [N, T, 2] as lines, start = circle, end = x."""
    n, t, _ = paths.shape
    if n <= _MANY_PATHS:
        halo = [
            patheffects.Stroke(linewidth=2.6, foreground="white"),
            patheffects.Normal(),
        ]
        for i, p in enumerate(paths):
            c = _PATH_COLORS[i % len(_PATH_COLORS)]
            ax.plot(
                p[:, 0],
                p[:, 1],
                color=c,
                lw=1.3,
                marker="." if t <= 60 else None,
                markersize=3.5,
                path_effects=halo,
                zorder=3,
            )
            ax.plot(*p[0], "o", color=c, mec="white", mew=0.8, ms=6, zorder=4)
            ax.plot(*p[-1], "X", color=c, mec="white", mew=0.6, ms=7, zorder=4)
        return
    lines = LineCollection(paths, colors="white", linewidths=0.5, alpha=0.5, zorder=3)
    ax.add_collection(lines, autolim=False)
    small = max(1.0, 20.0 * (_MANY_PATHS / n) ** 0.5)
    ax.scatter(*paths[:, 0].T, s=small, marker="o", color="white", lw=0, zorder=4)
    ax.scatter(*paths[:, -1].T, s=2 * small, marker="x", color="C3", lw=0.8, zorder=4)


def contour_paths(
    ax: Axes,
    fn: types.ScalarFn,
    bounds,
    *,
    paths=None,
    points: Mapping[str, np.ndarray] | None = None,
    levels: int | Sequence[float] = 30,
    log_levels: bool = False,
    n: int = 201,
    cmap=None,
    filled: bool = True,
    colorbar: bool = False,
    legend: bool = True,
):
    """Contours of a 2-D landscape, with optimization paths and marked points.

    Args:
        ax: 2-D Axes.
        fn: x of shape [2] -> scalar.
        bounds: array-like [2, 2], ((xlo, xhi), (ylo, yhi)); sets the axis limits.
        paths: optional [N, T, 2] iterates; start = circle, end = x. Up to 10 paths
            are drawn in distinct colours, more as thin white lines.
        points: optional dict label -> [k, 2], e.g. {"minimum": ..., "saddle": ...};
            "minimum" is a star, "saddle" a diamond, "maximum" a triangle, others get
            further markers. Empty arrays are skipped.
        levels: number of levels, or the levels themselves.
        log_levels: contour log10(f - min f + eps) instead of f, for landscapes with
            a wide range such as Rosenbrock.
        n: grid points per axis.
        cmap: colormap name; None takes the style's (viridis).
        filled: filled contours (with faint lines on top) or coloured lines only.
        colorbar: add a colourbar (labelled log10(f - f_min) with `log_levels`).
        legend: draw a legend of `points` (when there are any).

    Returns:
        The ContourSet (its values are the log values with `log_levels`).
    """
    b = _bounds_2d(bounds)
    paths = None if paths is None else _check_paths(paths)
    points = _check_points_dict(points)
    X, Y, Z = evaluate_grid(fn, b, n)
    Z = np.ma.masked_invalid(_log_values(Z) if log_levels else Z)
    if Z.count() == 0:
        raise ValueError("`fn` is not finite anywhere inside `bounds`")
    if filled:
        cs = ax.contourf(X, Y, Z, levels=levels, cmap=_cmap(cmap), zorder=1)
        ax.contour(X, Y, Z, levels=cs.levels, colors="k", linewidths=0.3, alpha=0.35)
    else:
        cs = ax.contour(X, Y, Z, levels=levels, cmap=_cmap(cmap), linewidths=0.8)
    ax.grid(False)
    if paths is not None:
        _draw_paths(ax, paths)
    _draw_points(ax, points)
    ax.set_xlim(*b[0])
    ax.set_ylim(*b[1])
    if colorbar:
        label = r"$\log_{10}(f - f_{\min})$" if log_levels else "$f$"
        ax.figure.colorbar(cs, ax=ax, label=label)
    if legend and any(len(p) for p in points.values()):
        ax.legend(loc="best")
    return cs


def surface3d(ax3d, fn: types.ScalarFn, bounds, *, n: int = 81, paths=None, cmap=None, alpha=0.85):
    """3-D surface of a 2-D landscape, with paths drawn on it at height f.

    Args:
        ax3d: a 3-D Axes (`plt.subplots(subplot_kw={"projection": "3d"})`).
        fn: x of shape [2] -> scalar.
        bounds: array-like [2, 2], ((xlo, xhi), (ylo, yhi)).
        n: grid points per axis.
        paths: optional [N, T, 2] iterates; points outside `bounds` are not drawn.
        cmap: colormap name; None takes the style's (viridis).
        alpha: surface opacity.

    Returns:
        The surface (Poly3DCollection).
    """
    if getattr(ax3d, "name", None) != "3d":
        raise ValueError(
            "`ax3d` must be a 3-D Axes (subplot_kw={'projection': '3d'}), "
            f"got {type(ax3d).__name__}"
        )
    b = _bounds_2d(bounds)
    paths = None if paths is None else _check_paths(paths)
    X, Y, Z = evaluate_grid(fn, b, n)
    # Draw in zorder, so paths stay on top of the surface instead of being sorted
    # into it by mplot3d's painter's algorithm.
    ax3d.computed_zorder = False
    surf = ax3d.plot_surface(
        X,
        Y,
        np.where(np.isfinite(Z), Z, np.nan),
        cmap=_cmap(cmap),
        rstride=1,
        cstride=1,
        linewidth=0,
        antialiased=False,
        alpha=alpha,
        zorder=1,
    )
    if paths is not None:
        flat = paths.reshape(-1, 2)
        f = _evaluate(fn, flat).reshape(paths.shape[:2])
        inside = np.all((flat >= b[:, 0]) & (flat <= b[:, 1]), axis=-1)
        f = np.where(inside.reshape(f.shape) & np.isfinite(f), f, np.nan)
        many = len(paths) > _MANY_PATHS
        for i, (p, z) in enumerate(zip(paths, f, strict=True)):
            c = "C3" if many else _PATH_COLORS[i % len(_PATH_COLORS)]
            ax3d.plot(p[:, 0], p[:, 1], z, color=c, lw=0.6 if many else 1.5, zorder=3)
            if not many:
                ax3d.plot([p[0, 0]], [p[0, 1]], [z[0]], "o", color=c, mec="w", zorder=4)
                ax3d.plot([p[-1, 0]], [p[-1, 1]], [z[-1]], "X", color=c, mec="w", zorder=4)
    ax3d.set_xlim(*b[0])
    ax3d.set_ylim(*b[1])
    return surf


def quiver(
    ax: Axes,
    fn: types.ScalarFn,
    bounds,
    *,
    n: int = 21,
    levels: int | Sequence[float] = 15,
    log_levels: bool = False,
    normalize: bool = False,
    cmap=None,
    equal_aspect: bool = True,
):
    """The gradient field of a 2-D landscape as arrows over its contour lines.

    The arrows (jax.grad) point uphill and cross the contour lines at right angles;
    the right angles show only with equal aspect, which is the default here.

    Args:
        ax: 2-D Axes.
        fn: x of shape [2] -> scalar.
        bounds: array-like [2, 2], ((xlo, xhi), (ylo, yhi)).
        n: arrows per axis.
        levels: number of contour levels, or the levels.
        log_levels: contour log10(f - min f + eps), as in `contour_paths`.
        normalize: draw unit arrows (direction only), coloured by |grad|.
        cmap: colormap of the contour lines; None takes the style's (viridis).
        equal_aspect: set an equal aspect ratio.

    Returns:
        The Quiver.
    """
    b = _bounds_2d(bounds)
    n = checks.integer("n", n, minimum=2)
    X, Y, Z = evaluate_grid(fn, b, 101)
    Z = _log_values(Z) if log_levels else Z
    ax.contour(X, Y, np.ma.masked_invalid(Z), levels=levels, cmap=_cmap(cmap), linewidths=0.8)
    Xq, Yq, U, V = _grad_field(fn, b, n)
    U, V = np.ma.masked_invalid(U), np.ma.masked_invalid(V)
    if normalize:
        mag = np.hypot(U, V)
        safe = np.where(mag > 0, mag, 1.0)
        q = ax.quiver(Xq, Yq, U / safe, V / safe, mag, angles="xy", cmap="magma", zorder=3)
    else:
        q = ax.quiver(Xq, Yq, U, V, angles="xy", color="black", zorder=3)
    ax.grid(False)
    ax.set_xlim(*b[0])
    ax.set_ylim(*b[1])
    if equal_aspect:
        ax.set_aspect("equal")
    return q


def basin_palette(k: int) -> np.ndarray:
    """RGBA [k, 4] colours of basin labels 0..k-1.

    tab10 for up to 9 basins, tab20 past that, both without their grays (kept for
    "not converged"); more than 18 basins repeat colours.
    """
    k = checks.integer("k", k, minimum=0)
    if k <= 9:
        base = [c for i, c in enumerate(mpl.colormaps["tab10"].colors) if i != 7]
    else:
        base = [c for i, c in enumerate(mpl.colormaps["tab20"].colors) if i not in (14, 15)]
    return np.array([colors.to_rgba(base[i % len(base)]) for i in range(k)]).reshape(k, 4)


def basin_image(
    ax: Axes,
    labels_HxW,
    bounds,
    *,
    points=None,
    saddles=None,
    names: Sequence[str] | None = None,
    fractions: bool = True,
    legend: bool = True,
):
    """Which minimum each start reaches, as a categorical image.

    Args:
        ax: 2-D Axes.
        labels_HxW: integer labels; labels[i, j] belongs to the start (x_j, y_i) of a
            regular grid over `bounds` (row = y, as from `grid`). Label i >= 0 means
            "reached point i", -1 not converged (light gray), -2 diverged (black).
        bounds: array-like [2, 2], ((xlo, xhi), (ylo, yhi)) of the grid of starts.
        points: optional [k, 2] minima; point i is drawn as a star in basin i's
            colour with a black edge.
        saddles: optional [m, 2] saddles, drawn as white diamonds.
        names: optional names of the basins (length >= number of basins); default
            is the coordinates of the point, or "basin i".
        fractions: add each class's share of the grid to its legend entry.
        legend: draw a legend, outside the Axes on the right, listing every basin
            and only those special classes that occur.

    Returns:
        The AxesImage; `image.get_array()` holds the labels and
        `image.to_rgba(image.get_array())` the colours.
    """
    labels = _check_labels(labels_HxW)
    b = _bounds_2d(bounds)
    pts = _check_points(points if points is not None else [], "points")
    sad = _check_points(saddles if saddles is not None else [], "saddles")
    k = max(len(pts), labels.max() + 1, 0)
    if names is not None and len(names) < k:
        raise ValueError(f"`names` must have at least {k} entries, got {len(names)}")

    palette = basin_palette(k)
    table = np.concatenate([[DIVERGED_COLOR, NOT_CONVERGED_COLOR], palette])
    cmap = colors.ListedColormap(table)
    norm = colors.BoundaryNorm(np.arange(DIVERGED - 0.5, k), cmap.N)
    image = ax.imshow(
        labels,
        cmap=cmap,
        norm=norm,
        origin="lower",
        extent=(b[0, 0], b[0, 1], b[1, 0], b[1, 1]),
        interpolation="nearest",
        zorder=1,
    )
    ax.grid(False)
    if len(pts):
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=150,
            marker="*",
            c=palette[: len(pts)],
            edgecolors="black",
            linewidths=0.9,
            zorder=3,
        )
    if len(sad):
        ax.scatter(*sad.T, s=30, marker="D", c="white", edgecolors="black", zorder=3)
    ax.set_xlim(*b[0])
    ax.set_ylim(*b[1])
    if legend:
        _basin_legend(ax, labels, palette, pts, sad, names, fractions)
    return image


def _check_labels(labels_HxW) -> np.ndarray:
    """Basin labels [H, W] as ints >= DIVERGED."""
    labels = np.asarray(labels_HxW)
    if labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"`labels_HxW` must have shape [H, W], got {labels.shape}")
    if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
        raise ValueError("`labels_HxW` must hold integers")
    labels = labels.astype(int)
    if labels.min() < DIVERGED:
        raise ValueError(f"`labels_HxW` must be >= {DIVERGED}, got {labels.min()}")
    return labels


def _basin_legend(ax, labels, palette, pts, sad, names, fractions) -> None:
    """A legend outside the Axes: every basin, and the special classes that occur."""
    k = len(palette)
    # counts[0] diverged, counts[1] not converged, counts[i + 2] basin i.
    counts = np.bincount(labels.ravel() - DIVERGED, minlength=k + 2)

    def patch(color, text, count):
        share = f": {100 * count / labels.size:.1f}%" if fractions else ""
        return Patch(facecolor=color, edgecolor="black", label=text + share)

    handles = []
    for i in range(k):
        if names is not None:
            text = f"{i} {names[i]}"
        elif i < len(pts):
            text = f"{i} ({pts[i, 0]:.2f}, {pts[i, 1]:.2f})"
        else:
            text = f"basin {i}"
        handles.append(patch(palette[i], text, counts[i + 2]))
    if counts[1]:
        handles.append(patch(NOT_CONVERGED_COLOR, "not converged", counts[1]))
    if counts[0]:
        handles.append(patch(DIVERGED_COLOR, "diverged", counts[0]))
    if len(sad):
        handles.append(Line2D([], [], ls="", marker="D", mfc="white", mec="k", label="saddle"))
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        handlelength=1.2,
    )


def loss_curves(ax: Axes, steps_T, losses_NxT, *, labels: Sequence[str] | None = None, log=True):
    """Loss against step for N runs; non-finite values leave gaps.

    Args:
        ax: 2-D Axes.
        steps_T: [T] step numbers.
        losses_NxT: [N, T] (or [T] for one run) losses.
        labels: optional N legend labels.
        log: log y axis when every finite loss is positive.

    Returns:
        The N Line2D.
    """
    steps = np.asarray(steps_T, dtype=float)
    if steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"`steps_T` must have shape [T], got {steps.shape}")
    losses = np.asarray(losses_NxT, dtype=float)
    if losses.ndim == 1:
        losses = losses[None]
    if losses.ndim != 2 or losses.shape[1] != steps.size:
        raise ValueError(
            f"`losses_NxT` must have shape [N, T] with T = {steps.size} "
            f"(len of `steps_T`), got {np.shape(losses_NxT)}"
        )
    if labels is not None and len(labels) != len(losses):
        raise ValueError(f"`labels` must have {len(losses)} entries, got {len(labels)}")
    many = len(losses) > _MANY_PATHS and labels is None
    lines = []
    for i, loss in enumerate(losses):
        (line,) = ax.plot(
            steps,
            np.ma.masked_invalid(loss),
            label=None if labels is None else labels[i],
            lw=0.8 if many else None,
            alpha=0.6 if many else None,
        )
        lines.append(line)
    finite = losses[np.isfinite(losses)]
    if log and finite.size and np.all(finite > 0):
        ax.set_yscale("log")
    if not ax.get_xlabel():
        ax.set_xlabel("step")
    if not ax.get_ylabel():
        ax.set_ylabel("loss (log scale)" if ax.get_yscale() == "log" else "loss")
    if labels is not None:
        ax.legend()
    return lines


def _edges(values: np.ndarray, log: bool, name: str) -> np.ndarray:
    """Cell edges [n + 1] around centres [n] (midpoints, geometric on log axes)."""
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"`{name}` must have shape [n] of finite values, got {v.shape}")
    if log:
        if np.any(v <= 0):
            raise ValueError(f"`{name}` must be positive on a log axis")
        v = np.log10(v)
    if v.size == 1:
        e = np.array([v[0] - 0.5, v[0] + 0.5])
    else:
        d = np.diff(v)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError(f"`{name}` must be strictly monotonic")
        mid = (v[1:] + v[:-1]) / 2
        e = np.concatenate([[v[0] - d[0] / 2], mid, [v[-1] + d[-1] / 2]])
    return 10.0**e if log else e


def heatmap(
    ax: Axes,
    values_HxW,
    x_values,
    y_values,
    *,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    log_y: bool = False,
    cbar_label: str | None = None,
    cmap=None,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """A map of values over two swept hyperparameters (e.g. lr x momentum success).

    Args:
        ax: 2-D Axes.
        values_HxW: values[i, j] at (x_values[j], y_values[i]); NaN cells are blank.
        x_values: [W] cell centres along x.
        y_values: [H] cell centres along y.
        xlabel, ylabel: axis labels (say "log scale" where it is one).
        log_x, log_y: log axes (cell edges at geometric midpoints).
        cbar_label: colourbar label.
        cmap: colormap name; None takes the style's (viridis).
        vmin, vmax: colour limits (e.g. 0 and 1 for success rates).

    Returns:
        The QuadMesh.
    """
    values = np.asarray(values_HxW, dtype=float)
    xe = _edges(x_values, log_x, "x_values")
    ye = _edges(y_values, log_y, "y_values")
    if values.shape != (ye.size - 1, xe.size - 1):
        raise ValueError(
            f"`values_HxW` must have shape [H, W] = [{ye.size - 1}, {xe.size - 1}] "
            f"(len of `y_values`, `x_values`), got {values.shape}"
        )
    mesh = ax.pcolormesh(
        xe, ye, np.ma.masked_invalid(values), cmap=_cmap(cmap), vmin=vmin, vmax=vmax
    )
    ax.grid(False)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.figure.colorbar(mesh, ax=ax, label=cbar_label)
    return mesh


def curve_1d(ax: Axes, fn: types.ScalarFn, bounds_1d, *, path_T=None, n: int = 401):
    """f(x) of a 1-D landscape, with descent iterates as dots joined in order.

    Args:
        ax: 2-D Axes.
        fn: x of shape [1] -> scalar (a fn of a 0-d x that broadcasts works too).
        bounds_1d: (lo, hi), the x range; the y range fits the curve, so iterates
            outside it are cut off.
        path_T: optional [T] (or [T, 1]) iterates; start = circle, end = x.
        n: curve points.

    Returns:
        The curve's Line2D.
    """
    b = _bounds_1d(bounds_1d)
    n = checks.integer("n", n, minimum=2)
    x = np.linspace(*b, n)
    f = _evaluate(fn, x[:, None])
    (curve,) = ax.plot(x, np.ma.masked_invalid(f), color="C0", zorder=2)
    if path_T is not None:
        p = np.asarray(path_T, dtype=float)
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if p.ndim != 1 or p.size == 0:
            raise ValueError(f"`path_T` must have shape [T] or [T, 1], got {np.shape(path_T)}")
        fp = _evaluate(fn, p[:, None])
        ax.plot(p, fp, "-", color="C3", lw=0.8, alpha=0.7, zorder=3)
        ax.plot(p, fp, ".", color="C3", ms=6, zorder=4)
        ax.plot(p[0], fp[0], "o", color="C3", mec="white", ms=7, zorder=5, label="start")
        ax.plot(p[-1], fp[-1], "X", color="C3", mec="white", ms=8, zorder=5, label="end")
    finite = f[np.isfinite(f)]
    if finite.size:
        lo, hi = finite.min(), finite.max()
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(*b)
    return curve


# ------------------------------------------------------------------------ animation


def frame_indices(num_steps: int, max_frames: int) -> np.ndarray:
    """Indices into T = num_steps recorded steps of the frames an animation shows.

    All steps when T <= max_frames, else max_frames evenly spread ones that keep the
    first and the last.
    """
    t = checks.integer("num_steps", num_steps, minimum=1)
    m = checks.integer("max_frames", max_frames, minimum=1)
    if t <= m:
        return np.arange(t)
    if m == 1:
        return np.array([t - 1])
    return np.round(np.linspace(0, t - 1, m)).astype(int)


def _overlay(fig: Figure, ax: Axes) -> Axes:
    """Renders the figure once into a picture behind a bare Axes at `ax`'s place: each frame
    then draws only what moves. Ticks cost more to draw per frame than the balls."""
    fig.canvas.draw()
    background = np.asarray(fig.canvas.buffer_rgba()).copy()
    position, xlim, ylim = ax.get_position(), ax.get_xlim(), ax.get_ylim()
    fig.set_layout_engine("none")
    fig.clear()
    fig.figimage(background, origin="upper", zorder=0)
    ov = fig.add_axes(position, zorder=1)  # above the picture
    ov.set_axis_off()
    ov.set_xlim(xlim)
    ov.set_ylim(ylim)
    return ov


def _ball_artists(ov: Axes, paths, colors_N, tail, tail_paths) -> tuple:
    """(the scatter of all balls, [(path index, its tail's LineCollection)], the counter)."""
    num = len(paths)
    size = 30.0 if num <= 20 else max(2.0, 30.0 * (20 / num) ** 0.5)
    balls = ov.scatter(
        paths[:, 0, 0],
        paths[:, 0, 1],
        s=size,
        c="C3" if colors_N is None else colors_N,
        edgecolors="white" if num <= 50 else "none",
        linewidths=0.6,
        zorder=6,
    )
    tails = []
    if tail is not None:
        chosen = np.linspace(0, num - 1, min(num, tail_paths)).astype(int)
        for i in np.unique(chosen):
            lc = LineCollection([], colors="white", linewidths=1.2, zorder=5)
            tails.append((i, ov.add_collection(lc, autolim=False)))
    counter = ov.text(
        0.02,
        0.98,
        "",
        transform=ov.transAxes,
        ha="left",
        va="top",
        fontsize=7,
        bbox={
            "boxstyle": "round,pad=0.2",
            "fc": "white",
            "ec": "none",
            "alpha": 0.8,
        },
        zorder=7,
    )
    return balls, tails, counter


def animate_paths(
    fn: types.ScalarFn,
    bounds,
    paths_NxTx2,
    path,
    *,
    fps: int = 20,
    points: Mapping[str, np.ndarray] | None = None,
    max_frames: int = 120,
    tail: int | None = None,
    title: str | None = None,
    steps_T=None,
    colors_N=None,
    tail_paths: int = 8,
    levels: int | Sequence[float] = 30,
    log_levels: bool = False,
    n: int = 151,
    figsize: tuple[float, float] = (ONE_COL, ONE_COL),
    dpi: float = 100,
) -> pathlib.Path:
    """A GIF of many balls descending at once over the contour plot.

    One scatter holds all N balls and moves per frame, so N in the thousands is
    cheap. Frames are subsampled to at most `max_frames` (see `frame_indices`); a
    step counter in the corner keeps consecutive frames distinct.

    Args:
        fn: x of shape [2] -> scalar.
        bounds: array-like [2, 2], ((xlo, xhi), (ylo, yhi)).
        paths_NxTx2: [N, T, 2] positions; balls outside `bounds` leave the view.
        path: output .gif (suffix added when missing); parent folders are created;
            written atomically.
        fps: frames per second.
        points: optional dict label -> [k, 2], as in `contour_paths`.
        max_frames: the most frames the GIF gets.
        tail: if set, the first `tail_paths` paths (spread over N) trail a fading
            line through their last `tail` frames.
        title: Axes title.
        steps_T: optional [T] step numbers for the counter (default 0..T-1).
        colors_N: optional ball colours (one colour, or [N] colours such as
            `basin_palette(k)[label_N]`); default red.
        tail_paths: how many paths get tails.
        levels, log_levels, n: as in `contour_paths`.
        figsize: inches.
        dpi: GIF resolution.

    Returns:
        The path written.
    """
    paths = _check_paths(paths_NxTx2, "paths_NxTx2")
    num, t, _ = paths.shape
    steps = np.arange(t) if steps_T is None else np.asarray(steps_T)
    if steps.shape != (t,):
        raise ValueError(f"`steps_T` must have shape [T] = [{t}], got {steps.shape}")
    fps = checks.integer("fps", fps, minimum=1)
    idx = frame_indices(t, max_frames)
    if tail is not None:
        tail = checks.integer("tail", tail, minimum=1)
    out = pathlib.Path(path)
    if out.suffix and out.suffix.lower() != ".gif":
        raise ValueError(f"`path` must end in .gif, got {str(path)!r}")
    out = _out_path(out, ".gif")

    with plt.style.context(STYLE):
        fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
        try:
            contour_paths(ax, fn, bounds, points=points, levels=levels, log_levels=log_levels, n=n)
            if title:
                ax.set_title(title)
            ov = _overlay(fig, ax)
            balls, tails, counter = _ball_artists(ov, paths, colors_N, tail, tail_paths)

            def update(f):
                s = idx[f]
                balls.set_offsets(paths[:, s])
                counter.set_text(f"step {steps[s]}")
                for i, lc in tails:
                    seg = paths[i, idx[max(0, f - tail)] : s + 1]
                    segs = np.stack([seg[:-1], seg[1:]], axis=1)
                    lc.set_segments(segs)
                    lc.set_alpha(np.linspace(0.05, 0.9, len(segs)) if len(segs) else None)
                return [balls, counter, *(lc for _, lc in tails)]

            anim = animation.FuncAnimation(fig, update, frames=len(idx), blit=False, repeat=False)
            writer = animation.PillowWriter(fps=fps)
            _write_atomic(out, lambda tmp: anim.save(tmp, writer=writer, dpi=fig.dpi))
        finally:
            plt.close(fig)
    return out
