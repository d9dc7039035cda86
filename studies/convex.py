"""Convex versus non-convex: where is the Hessian positive semidefinite, and where does GD end?

For bowl, quadratic (kappa = 10), himmelblau, rosenbrock, rastrigin and six_hump_camel, two
numbers each. First, the fraction of the domain (one random point in each of grid_n x grid_n
cells of the bounds, Hessians by jax.hessian in float64) where the Hessian is positive
semidefinite, beside its exact value: 1 for bowl and quadratic (constant positive definite
Hessians), a closed form for rastrigin (separable), and for the polynomial landscapes an
integral over x of the exact measure in y, found from the roots of the hand-derived Hessian
entries and determinant as polynomials in y. Second, the number of distinct endpoints that
plain GD reaches from num_starts random starts in the bounds (lr = lr_scale / the largest
Hessian eigenvalue on the grid), beside the number of local minima inside the bounds: 1
for a convex function, 4 for Himmelblau, 6 for the six-hump camel, 121 for Rastrigin (one
near every integer point).
Figure: each landscape with its non-convex region shaded and the endpoints marked.

Run: make convex   (smoke: python -m studies.convex --quick; 10 to 20 s either way on 2 cores,
mostly compilation)
"""

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sandbox import basins, calculus, cli, config, landscapes, plotting, sweep

NAME = "convex"
# An eigenvalue down to this much below zero (relative to the largest |eigenvalue| on the
# grid) still counts as PSD: float64 rounding of an exactly singular Hessian.
PSD_RTOL = 1e-12
NON_CONVEX_RGBA = (0.45, 0.45, 0.45, 0.35)
# Landscapes whose wide range of values reads better on log-spaced contours.
LOG_LEVELS = ("himmelblau", "rosenbrock", "six_hump_camel")
CONTOUR_LEVELS = {"rastrigin": 5}  # its egg crate is unreadable under more lines
Landscape2D = Literal[tuple(n for n in landscapes.names() if landscapes.get(n).dim == 2)]


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the random GD starts
    functions: tuple[Landscape2D, ...] = config.field(
        ("bowl", "quadratic", "himmelblau", "rosenbrock", "rastrigin", "six_hump_camel"),
        distinct=True,
    )
    """2-D landscapes to map, each once"""
    kappa: float = config.field(10.0, 1)  # condition number of `quadratic`
    grid_n: int = config.count(1024, 8192, lo=2)  # Hessian sampled in grid_n^2 cells
    num_starts: int = config.count(10_000, 2**22)  # random GD starts per landscape
    # Rosenbrock's valley is slow: its smallest Hessian eigenvalue at the minimum is 0.4
    # against 5327 on the grid.
    steps: tuple[int, ...] = config.field((100, 500, 2000, 100_000, 500, 3000), 1, 10**6)
    """GD updates per function (same order as `functions`)"""
    lr_scale: float = config.field(1.0, gt=0, lt=2)  # lr = lr_scale / max lambda_max on the grid
    grad_tol: float = config.field(1e-2, gt=0)  # converged: |grad f| <= grad_tol at the end
    cluster_tol: float = config.field(1e-2, gt=0)  # endpoints closer than this are one
    theory_n: int = config.count(100_001, 10**7, lo=2)  # midpoint-rule points, exact PSD shares

    RELATIONS = (
        config.relation("one steps entry per function", lambda c: len(c.steps) == len(c.functions)),
    )


QUICK = Config(grid_n=256, theory_n=20_001)


# ----------------------------------------------------------------------------- helpers


def _landscape(name: str, cfg: Config) -> landscapes.Landscape:
    return landscapes.get(name, kappa=cfg.kappa) if name == "quadratic" else landscapes.get(name)


def _hessian_eigenvalues(
    fn, bounds: np.ndarray, n: int, key: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_min_HxW, lambda_max_HxW) of the Hessian at one random point per cell, float64.

    The box is cut into n x n equal cells and each gets one uniform point (jittered
    sampling): the share of PSD points is then an unbiased estimate of the PSD share of the
    box. A regular grid is biased where the boundary runs along a grid line (six_hump_camel)
    and aliases with Rastrigin's period, off by up to 2% at some n. Row i is the i-th row of
    cells in y, column j the j-th in x, so the map lines up with `imshow`.
    """
    with jax.enable_x64(True):
        u_HxWx2 = np.asarray(jax.random.uniform(key, (n, n, 2), dtype=jnp.float64))
        jj, ii = np.meshgrid(np.arange(n), np.arange(n))
        cell = np.stack([jj, ii], axis=-1) + u_HxWx2
        x_Mx2 = (bounds[:, 0] + cell * (bounds[:, 1] - bounds[:, 0]) / n).reshape(-1, 2)

        eig = jax.jit(functools.partial(calculus.hessian_eigenvalues_2d, fn))
        lo, hi = jax.device_get(eig(jnp.asarray(x_Mx2)))
    return np.asarray(lo).reshape(n, n), np.asarray(hi).reshape(n, n)


# Hand-derived Hessians [[a, b], [b, c]] as polynomials in y (coefficients, highest power
# first) for each x of an [N] array: the exact PSD fractions below use them, independently
# of jax.hessian.
def _hessian_polys_in_y(name: str, x: np.ndarray, kappa: float) -> tuple[np.ndarray, ...]:
    one, zero = np.ones_like(x), np.zeros_like(x)
    if name == "bowl":
        return 2 * one[:, None], zero[:, None], 2 * one[:, None]
    if name == "quadratic":
        return one[:, None], zero[:, None], kappa * one[:, None]
    if name == "himmelblau":
        # f_xx = 12x^2 + 4y - 42, f_xy = 4x + 4y, f_yy = 12y^2 + 4x - 26.
        return (
            np.stack([4 * one, 12 * x**2 - 42], 1),
            np.stack([4 * one, 4 * x], 1),
            np.stack([12 * one, zero, 4 * x - 26], 1),
        )
    if name == "rosenbrock":
        # f_xx = 1200x^2 - 400y + 2, f_xy = -400x, f_yy = 200.
        return np.stack([-400 * one, 1200 * x**2 + 2], 1), (-400 * x)[:, None], 200 * one[:, None]
    if name == "six_hump_camel":
        # f_xx = 10x^4 - 25.2x^2 + 8, f_xy = 1, f_yy = 48y^2 - 8.
        return (
            (10 * x**4 - 25.2 * x**2 + 8)[:, None],
            one[:, None],
            np.stack([48 * one, zero, -8 * one], 1),
        )
    raise KeyError(name)


def _polymul(p_NxK: np.ndarray, q_NxJ: np.ndarray) -> np.ndarray:
    out = np.zeros((len(p_NxK), p_NxK.shape[1] + q_NxJ.shape[1] - 1))
    for i in range(p_NxK.shape[1]):
        out[:, i : i + q_NxJ.shape[1]] += p_NxK[:, i : i + 1] * q_NxJ
    return out


def _polyval(p_NxK: np.ndarray, y_NxM: np.ndarray) -> np.ndarray:
    out = np.zeros_like(y_NxM)
    for i in range(p_NxK.shape[1]):
        out = out * y_NxM + p_NxK[:, i : i + 1]
    return out


def _real_roots(p_NxK: np.ndarray) -> np.ndarray:
    """Real roots [N, K - 1] of N polynomials (NaN for complex ones), by companion matrices."""
    k = p_NxK.shape[1] - 1
    if k == 0:
        return np.zeros((len(p_NxK), 0))
    lead = p_NxK[:, :1]
    lead = np.where(np.abs(lead) < 1e-300, 1e-300, lead)  # a vanishing leading term: roots -> inf
    comp = np.zeros((len(p_NxK), k, k))
    comp[:, 0, :] = -p_NxK[:, 1:] / lead
    comp[:, np.arange(1, k), np.arange(k - 1)] = 1.0
    r = np.linalg.eigvals(comp)
    return np.where(np.abs(r.imag) <= 1e-9 * (1 + np.abs(r.real)), r.real, np.nan)


def _psd_measure_in_y(a, b, c, lo: float, hi: float) -> np.ndarray:
    """Length [N] of {y in [lo, hi]: [[a, b], [b, c]](y) is PSD}, exactly for each x.

    A symmetric 2x2 matrix is PSD iff a >= 0, c >= 0 and ac - b^2 >= 0; between consecutive
    roots of those three polynomials every condition keeps its sign, so testing one point of
    each piece is exact.
    """
    ac, bb = _polymul(a, c), _polymul(b, b)
    k = max(ac.shape[1], bb.shape[1])
    det = np.pad(ac, ((0, 0), (k - ac.shape[1], 0))) - np.pad(bb, ((0, 0), (k - bb.shape[1], 0)))
    cuts = np.concatenate([_real_roots(a), _real_roots(c), _real_roots(det)], axis=1)
    cuts = np.where((cuts > lo) & (cuts < hi), cuts, np.nan)
    ends = np.full((len(a), 1), lo), np.full((len(a), 1), hi)
    cuts = np.sort(np.concatenate([ends[0], cuts, ends[1]], axis=1), axis=1)
    cuts = np.where(np.isnan(cuts), hi, cuts)  # NaNs sort last: empty pieces at hi
    mid, width = 0.5 * (cuts[:, 1:] + cuts[:, :-1]), np.diff(cuts, axis=1)
    ok = (_polyval(a, mid) >= 0) & (_polyval(c, mid) >= 0) & (_polyval(det, mid) >= 0)
    return np.sum(np.where(ok, width, 0.0), axis=1)


def _rastrigin_psd_share(lo: float, hi: float) -> float:
    """Share of [lo, hi] where 2 + 40 pi^2 cos(2 pi x) >= 0, in closed form.

    That holds for x mod 1 within h of an integer, h = arccos(-1 / (20 pi^2)) / (2 pi).
    """
    h = math.acos(-1 / (20 * math.pi**2)) / (2 * math.pi)

    def measure_to(t: float) -> float:  # measure of the set within [0, t] (signed)
        k = math.floor(t)
        r = t - k
        return k * 2 * h + min(r, h) + max(0.0, r - (1 - h))

    return (measure_to(hi) - measure_to(lo)) / (hi - lo)


def psd_fraction_theory(name: str, bounds: np.ndarray, cfg: Config) -> tuple[float | None, str]:
    """The exact share of `bounds` where the Hessian is PSD, and how it was obtained."""
    if name == "rastrigin":
        share = [_rastrigin_psd_share(*bounds[i]) for i in range(2)]
        return share[0] * share[1], "closed form: f is separable, f_ii = 2 + 40 pi^2 cos(2 pi x_i)"
    try:
        _hessian_polys_in_y(name, np.zeros(1), cfg.kappa)
    except KeyError:
        return None, "no exact value for this landscape"
    (x0, x1), (y0, y1) = bounds
    xm = x0 + (np.arange(cfg.theory_n) + 0.5) * (x1 - x0) / cfg.theory_n
    m = _psd_measure_in_y(*_hessian_polys_in_y(name, xm, cfg.kappa), y0, y1)
    note = (
        f"exact in y (roots of the hand-derived Hessian entries and determinant), "
        f"midpoint rule over x with {cfg.theory_n} points"
    )
    return float(np.mean(m) / (y1 - y0)), note


# ----------------------------------------------------------------------------- compute


def _psd_part(name: str, lscape, cfg: Config, key: jax.Array) -> tuple[dict, dict, float]:
    """Where the Hessian is PSD, sampled and exact: (arrays, summary entries, lambda_max)."""
    b = np.asarray(lscape.bounds)
    lam_min_HxW, lam_max_HxW = _hessian_eigenvalues(lscape.fn, b, cfg.grid_n, key)
    scale = max(np.max(np.abs(lam_min_HxW)), np.max(np.abs(lam_max_HxW)), 1.0)
    psd_HxW = lam_min_HxW >= -PSD_RTOL * scale
    theory, note = psd_fraction_theory(name, b, cfg)
    lam_top = float(np.max(lam_max_HxW))
    summary = {
        "psd_fraction": {
            "measured": float(np.mean(psd_HxW)),
            "theory": theory,
            "note": f"one random point in each of {cfg.grid_n}^2 cells of the bounds, "
            "Hessian in float64; "
            "theory: " + note,
        },
        "convex_on_grid": bool(np.all(psd_HxW)),
        "lambda_min_on_grid": float(lam_min_HxW.min()),
        "lambda_max_on_grid": lam_top,
    }
    return {f"{name}/psd_HxW": psd_HxW}, summary, lam_top


def _endpoints_part(
    name: str, lscape, cfg: Config, steps: int, lr: float, key: jax.Array
) -> tuple[dict, dict]:
    """GD from random starts: its distinct endpoints against the local minima; (arrays, summary)."""
    b = np.asarray(lscape.bounds)
    x0_Nx2 = np.asarray(
        jax.random.uniform(key, (cfg.num_starts, 2), minval=b[:, 0], maxval=b[:, 1]),
        np.float32,
    )
    run = sweep.descend(lscape.fn, x0_Nx2, steps=steps, lr=lr)
    converged_N = ~run.diverged & (run.grad_norm <= cfg.grad_tol)
    centres_Cx2, counts_C, spread = basins.cluster(run.x[converged_N], cfg.cluster_tol)
    minima_Kx2 = landscapes.local_minima(lscape)
    dist_CxK = np.linalg.norm(centres_Cx2[:, None] - minima_Kx2[None], axis=-1)
    at_minimum_C = (
        np.min(dist_CxK, axis=1) <= cfg.cluster_tol if len(minima_Kx2) else np.zeros(0, bool)
    )
    arrays = {
        f"{name}/x0_Nx2": x0_Nx2,
        f"{name}/x_Nx2": run.x,
        f"{name}/converged_N": converged_N,
        f"{name}/diverged_N": run.diverged,
        f"{name}/endpoints_Cx2": centres_Cx2,
        f"{name}/endpoint_counts_C": counts_C,
        f"{name}/minima_Kx2": minima_Kx2,
    }
    summary = {
        "distinct_endpoints": {
            "measured": len(centres_Cx2),
            "theory": len(minima_Kx2),
            "note": "theory: local minima inside the bounds (the stored ones; for "
            "rastrigin, Newton's method from every integer point)",
        },
        "endpoints_at_a_local_minimum": {
            "measured": int(np.sum(at_minimum_C)),
            "theory": len(centres_Cx2),
        },
        "endpoint_spread": {
            "measured": spread,
            "theory": 0.0,
            "note": "largest distance of a converged endpoint from its cluster's mean "
            "(float32 GD stalls where lr * |grad| is below the rounding of x)",
        },
        "gd": {"lr": lr, "steps": steps, "starts": cfg.num_starts},
        "converged": int(converged_N.sum()),
        "not_converged": int(np.sum(~converged_N & ~run.diverged)),
        "diverged": int(run.diverged.sum()),
        "endpoints": [
            {"x": c.tolist(), "runs": int(n)}
            for c, n in sorted(zip(centres_Cx2, counts_C, strict=True), key=lambda t: -t[1])
        ][:12],
    }
    return arrays, summary


def compute(cfg: Config) -> tuple[dict, dict]:
    """Per landscape: the PSD share of its bounds, then GD's endpoints; (arrays, summary)."""
    key = jax.random.key(cfg.seed)
    cells_key, starts_key = jax.random.split(key)  # fold_in(., i) for the i-th function
    del key
    arrays, summary = {}, {}
    for i, (name, steps) in enumerate(zip(cfg.functions, cfg.steps, strict=True)):
        lscape = _landscape(name, cfg)
        psd_arrays, psd_summary, lam_top = _psd_part(
            name, lscape, cfg, jax.random.fold_in(cells_key, i)
        )
        # GD from random starts, lr from the largest curvature on the grid.
        end_arrays, end_summary = _endpoints_part(
            name, lscape, cfg, steps, cfg.lr_scale / lam_top, jax.random.fold_in(starts_key, i)
        )
        arrays.update(psd_arrays)
        arrays.update(end_arrays)
        summary[name] = {"formula": lscape.formula, **psd_summary, **end_summary}
    return arrays, summary


# ----------------------------------------------------------------------------- plot


def _panel(ax, name: str, arrays: dict, cfg: Config, summary: dict) -> None:
    """One landscape: contours, the non-PSD region shaded, GD's endpoints, the numbers."""
    overlay = colors.ListedColormap([NON_CONVEX_RGBA, (1, 1, 1, 0)])
    lscape = _landscape(name, cfg)
    b = np.asarray(lscape.bounds)
    plotting.contour_paths(
        ax,
        lscape.fn,
        b,
        levels=CONTOUR_LEVELS.get(name, 14),
        log_levels=name in LOG_LEVELS,
        filled=False,
        legend=False,
    )
    psd = arrays[f"{name}/psd_HxW"]
    ax.imshow(
        psd.astype(np.int8),
        cmap=overlay,
        vmin=0,
        vmax=1,
        origin="lower",
        extent=(b[0, 0], b[0, 1], b[1, 0], b[1, 1]),
        interpolation="nearest",
        aspect="auto",
        zorder=2,
    )
    ends = arrays[f"{name}/endpoints_Cx2"]
    ax.scatter(
        *ends.T,
        s=28 if len(ends) < 20 else 10,
        marker="o",
        facecolor="C3",
        edgecolor="white",
        linewidth=0.6,
        zorder=5,
    )
    s = summary[name]
    psd_s, end_s = s["psd_fraction"], s["distinct_endpoints"]
    exact = "" if psd_s["theory"] is None else f" (exact {100 * psd_s['theory']:.1f}%)"
    ends_txt = f"{end_s['measured']} endpoint{'s' * (end_s['measured'] != 1)}"
    minima_txt = f"{end_s['theory']} minim{'a' if end_s['theory'] != 1 else 'um'}"
    ax.set_title(
        f"{name}{f', κ = {cfg.kappa:g}' if name == 'quadratic' else ''}\n"
        f"PSD {100 * psd_s['measured']:.1f}%{exact}\n"
        f"GD: {ends_txt}, {minima_txt}",
        fontsize=8,
    )
    ax.set_aspect("equal")
    ax.set_xlabel("x", labelpad=1)
    ax.set_ylabel("y", labelpad=1)


def _legend_handles(cfg: Config) -> list:
    """The figure legend: the shaded non-PSD region and the endpoint marker."""
    return [
        Patch(facecolor=NON_CONVEX_RGBA, edgecolor="0.4", label="Hessian not PSD (non-convex)"),
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            mfc="C3",
            mec="white",
            ms=6,
            label=f"distinct GD endpoints ({cfg.num_starts} random starts)",
        ),
    ]


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    """Each landscape's contours with its non-PSD region shaded and GD's endpoints marked."""
    with plt.style.context(plotting.STYLE):
        fig, axes = plotting.panel_grid(len(cfg.functions), 3, 2.35, 0.35)
        for ax, name in zip(axes.flat, cfg.functions, strict=False):
            _panel(ax, name, arrays, cfg, summary)
        fig.legend(handles=_legend_handles(cfg), loc="outside lower center", ncols=2, frameon=False)
    return {"nonconvex_regions": fig}


main = cli.study_main(__name__, compute, plot)


if __name__ == "__main__":
    main()
