"""The fractal boundary of trainability (Sohl-Dickstein 2024): which per-layer lrs train?

A one-hidden-layer tanh network (`sandbox.fractal`, width -> width -> 1, as many data points
as weights) is trained by full-batch GD with one learning rate per layer (lr1 on the input
layer, lr2 on the output layer), in float64, over a log-spaced (lr1, lr2) grid; each run is
scored converged (> 0, its speed) or diverged (< 0). Three zooms recompute the grid on
windows zoom_factor = 8 times smaller each, centred on a boundary pixel. Measured beside the
theory: the box-counting dimension of the boundary at every level, with its fit range,
against the range the paper reports over its settings (1.17 to 1.98: more than a curve's 1,
less than an area's 2); and two neighbouring pixels of the deepest zoom, about 1e-4 apart in lr,
one of which trains and the other not.

Run: make fractal   (python -m studies.fractal; smoke: --quick, four 40 x 40 grids of 150
steps: 16 s measured, 10 s of it computing, on 2 CPU cores shared with other jobs).
Default: width 8, a 256 x 256 grid of 500-step runs plus three 128 x 128 zooms: 114,688
runs, 2.9 times fewer than the former 512 x 512 + 3 x 160 x 160 (not run here, estimated):
at --quick's warm rate, 0.7 to 0.9 ms a 150-step run, scaled to 500 steps, at most about 5
minutes on 2 cores; runs that blow up stop early and do not scale with the steps, so nearer
the former default's measured 1 CPU-ms a run, about 2 CPU-minutes (1 to 2 minutes).
`make fractal-paper` (`--scale paper`): width 16 and four 1024 x 1024 grids of 1000 steps,
about 1,000 times the default's work (~15 hours on a 2-core CPU): the setting for an
accelerator.
"""

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from sandbox import cli, config, fractal, plotting

NAME = "fractal"


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the MLP's initial weights and data
    # Per-layer learning rates of a width -> width -> 1 tanh MLP, float64.
    width: int = config.count(8, 4096)  # the MLP's hidden width
    steps: int = config.field(500, fractal.WINDOW, 10**6)
    """GD steps per run (at least the score's window)"""
    grid_n: int = config.count(256, 8192, lo=8)  # lrs per side of the full view
    log10_lr1: tuple[float, float] = config.field((-1.0, 7.0), increasing=True)  # lr1 decades
    log10_lr2: tuple[float, float] = config.field((0.0, 3.0), increasing=True)  # lr2 decades
    # "init_vs_lr": the paper's second phase space (`fractal.phase_point`): log10_lr1 is then
    # the log10 of an offset added to the input layer's initial weights, log10_lr2 that of
    # the one lr of both layers (labels and summary keys keep the lr1 / lr2 names).
    phase_space: Literal["lr_vs_lr", "init_vs_lr"] = "lr_vs_lr"
    zoom_levels: int = config.count(3, 20, lo=0)  # zooms into the boundary
    zoom_grid_n: int = config.count(128, 8192, lo=8)  # lrs per side of each zoom
    zoom_target: tuple[float, float] = (1.0, 1.71)  # (log10 lr1, log10 lr2) to zoom near
    zoom_half_width: float = config.field(0.1, gt=0)  # decades, first zoom; then / zoom_factor
    zoom_factor: float = config.field(8.0, gt=1)  # each zoom this much smaller
    box_sizes: tuple[int, ...] = config.field((2, 4, 8, 16), 1, 4096, min_len=2, distinct=True)
    """pixels: the box-counting fit range"""
    # Runs vmapped together by lax.map, per device: small enough that a batch whose runs
    # all blew up early stops early (`fractal.train`), large enough to vectorize.
    batch_size: int = config.count(64, 2**20)  # runs vmapped together

    RELATIONS = (
        config.relation(
            "box_sizes <= min(grid_n, zoom_grid_n) // 2 (half the smallest grid)",
            lambda c: max(c.box_sizes) <= min(c.grid_n, c.zoom_grid_n) // 2,
        ),
    )


QUICK = Config(
    steps=150,
    grid_n=40,
    zoom_grid_n=40,  # the same grid as the full view: one compilation
    box_sizes=(2, 4, 8),
)

# The setting of the paper's figures, for an accelerator (which wants large batches).
PAPER = Config(
    width=16,
    steps=1000,
    grid_n=1024,
    zoom_grid_n=1024,
    box_sizes=(2, 4, 8, 16, 32, 64),
    batch_size=16384,
    # Width 16 moves the boundary up by about 0.4 decades of lr2 (a 40 x 40 preview).
    log10_lr2=(0.5, 3.5),
    zoom_target=(1.0, 2.15),
)


# ----------------------------------------------------------------------------- compute


def _views(cfg: Config, params, data) -> tuple[list, list, list]:
    """The full view and its zooms: (score_HxW per level, (lim1, lim2) per level, sizes)."""
    run = functools.partial(
        fractal.score_grid,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        phase_space=cfg.phase_space,
    )
    lims = [(tuple(cfg.log10_lr1), tuple(cfg.log10_lr2))]
    sizes = [cfg.grid_n]
    scores = []
    target = cfg.zoom_target
    for level in range(cfg.zoom_levels + 1):
        (a1, b1), (a2, b2) = lims[level]
        n = sizes[level]
        s_HxW = run(params, data, np.logspace(a1, b1, n), np.logspace(a2, b2, n))
        scores.append(s_HxW)
        if level == cfg.zoom_levels:
            break
        # Next window, zoom_factor smaller: centred on a boundary pixel near the target
        # (first zoom) or near this window's centre (the previous boundary point).
        hw = cfg.zoom_half_width / cfg.zoom_factor**level
        half_px = hw / fractal.pixel_decades(lims[level][1], n)
        radius_px = half_px if level == 0 else n / 4
        c1, c2 = fractal.zoom_centre(s_HxW > 0, *lims[level], target, radius_px, half_px)
        lims.append(((c1 - hw, c1 + hw), (c2 - hw, c2 + hw)))
        sizes.append(cfg.zoom_grid_n)
        target = (c1, c2)
    return scores, lims, sizes


def _neighbours(cfg: Config, params, data, deep_HxW, lim) -> tuple[np.ndarray, np.ndarray]:
    """Two neighbouring pixels across the boundary of the deepest view, nearest its centre:
    (their (lr1, lr2) [2, 2], their loss curves [2, steps + 1])."""
    (a1, b1), (a2, b2) = lim
    n = deep_HxW.shape[0]
    bi, bj = np.nonzero(fractal.boundary(deep_HxW > 0) & (deep_HxW > 0))
    if bi.size == 0:
        raise ValueError(
            "the deepest zoom has no boundary (all runs trainable or all diverged); "
            "try another `zoom_target` or a smaller `zoom_factor`"
        )
    centre = (n - 1) / 2
    k = int(np.argmin((bi - centre) ** 2 + (bj - centre) ** 2))
    i, j = int(bi[k]), int(bj[k])
    nbrs = [(i + di, j + dj) for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0))]
    ni, nj = next((p, q) for p, q in nbrs if 0 <= p < n and 0 <= q < n and deep_HxW[p, q] < 0)
    l1 = np.logspace(a1, b1, n)
    l2 = np.logspace(a2, b2, n)
    pairs = np.array([[l1[j], l2[i]], [l1[nj], l2[ni]]])

    def curve(ab):
        p, lr1, lr2 = fractal.phase_point(params, ab[0], ab[1], cfg.phase_space)
        return fractal.losses(p, data, lr1, lr2, cfg.steps)

    curves = jax.jit(jax.vmap(curve))(jnp.asarray(pairs))
    return pairs, curves


def _level(cfg: Config, level: int, s_HxW: np.ndarray, lim, n: int) -> dict:
    """One view's summary: trainable share, boundary pixels, box-counting dimension."""
    bnd = fractal.boundary(s_HxW > 0)
    entry = {
        "level": level,
        "window_log10_lr1": list(lim[0]),
        "window_log10_lr2": list(lim[1]),
        "grid": [n, n],
        "trainable_fraction": float(np.mean(s_HxW > 0)),
        "boundary_pixels": int(bnd.sum()),
    }
    if bnd.any():
        dim, fit = fractal.box_counting_dimension(bnd, cfg.box_sizes)
        px1, px2 = fractal.pixel_decades(lim[0], n), fractal.pixel_decades(lim[1], n)
        entry |= {
            "dimension": dim,
            "fit_range_px": [int(fit.sizes[0]), int(fit.sizes[-1])],
            "fit_range_decades_lr1": [float(fit.sizes[0] * px1), float(fit.sizes[-1] * px1)],
            "fit_range_decades_lr2": [float(fit.sizes[0] * px2), float(fit.sizes[-1] * px2)],
            "fit_rms_residual_ln": fit.residual,
            "box_counts": fit.counts.tolist(),
        }
    return entry


def compute(cfg: Config) -> tuple[dict, dict]:
    key = jax.random.key(cfg.seed)
    with jax.enable_x64(True):
        params, data = fractal.problem(key, cfg.width)
        scores, lims, sizes = _views(cfg, params, data)
        pairs, curves = _neighbours(cfg, params, data, scores[-1], lims[-1])
        pair_scores = [float(fractal.score(c)) for c in curves]
        curves = np.asarray(curves, np.float64)

    levels = [_level(cfg, lv, *v) for lv, v in enumerate(zip(scores, lims, sizes, strict=True))]
    dims = [e["dimension"] for e in levels if "dimension" in e]
    zoom_dims = dims[1:]
    arrays = {f"score_{lv}_HxW": s.astype(np.float32) for lv, s in enumerate(scores)}
    arrays |= {
        "window_Vx2x2": np.asarray(lims, np.float64),
        "pair_lr_2x2": pairs,
        "pair_loss_2xT": curves,
    }
    summary = {
        "trainability": {
            "network": f"{cfg.width} -> {cfg.width} -> 1 tanh, mean-field, no biases",
            "data_points": int(data.x.shape[0]),
            "steps": cfg.steps,
            "dtype": str(params[0].dtype),
            "score": "> 0 trainable (mean normalized loss of the last "
            f"{fractal.WINDOW} steps < 1; value = speed), < 0 not (loss ratio reached "
            f"{fractal.BLOWUP:g} or did not go down)",
            "levels": levels,
        },
        "boundary_dimension": {
            "measured": float(np.median(dims)) if dims else float("nan"),
            "per_level": dims,
            "zooms_spread": float(np.ptp(zoom_dims)) if zoom_dims else float("nan"),
            "fit_range_px": [int(min(cfg.box_sizes)), int(max(cfg.box_sizes))],
            "theory": [1.17, 1.98],
            "note": "median over the full view and the zooms of the least-squares slope of "
            "log N(s) vs log 1/s; theory: the range the paper reports over its settings",
        },
        "neighbours": {
            "lr_pairs": pairs.tolist(),
            "relative_distance": float(np.max(np.abs(pairs[0] / pairs[1] - 1))),
            "scores": pair_scores,
            "final_loss_ratio": [
                float(c[-1] / c[0]) if np.isfinite(c[-1]) else float("inf") for c in curves
            ],
        },
    }
    return arrays, summary


# ----------------------------------------------------------------------------- plot


# Signed score -> colour position: trainable (0, 1] to [0.12, 1] (blues), diverged [-1, 0)
# to [-1, -0.12] (reds), so the boundary stands out even where both sides are dim.
_GAP = 0.12


def _display(score):
    s = np.asarray(score, dtype=np.float64)
    return np.sign(s) * (_GAP + (1 - _GAP) * np.abs(s))


def _fractal_image(ax, score_HxW, lim, *, title):
    (a1, b1), (a2, b2) = lim
    n_h, n_w = score_HxW.shape
    d1, d2 = (b1 - a1) / (n_w - 1), (b2 - a2) / (n_h - 1)
    image = ax.imshow(
        _display(score_HxW),
        origin="lower",
        extent=(a1 - d1 / 2, b1 + d1 / 2, a2 - d2 / 2, b2 + d2 / 2),
        cmap="RdBu",
        vmin=-1,
        vmax=1,
        aspect="auto",
        interpolation="nearest",
    )
    ax.grid(False)
    ax.set(xlabel="log₁₀ lr1 (input layer)", ylabel="log₁₀ lr2 (output layer)", title=title)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(4))
    return image


def _trainability_figure(arrays: dict, cfg: Config, summary: dict):
    """The full view and its zooms, each zoom's window outlined in the view before."""
    lims = arrays["window_Vx2x2"]
    nv = len(lims)
    fig, axes = plotting.panel_grid(nv, 2, 3.0, 0.4)
    levels = summary["trainability"]["levels"]
    for v in range(nv):
        ax = axes.flat[v]
        e = levels[v]
        dim = f", dim {e['dimension']:.2f}" if "dimension" in e else ""
        span = lims[v][1][1] - lims[v][1][0]
        mag = (lims[0][1][1] - lims[0][1][0]) / span
        title = "full view" if v == 0 else f"zoom {v}: {span:.2g} decades ({mag:.0f}x)"
        image = _fractal_image(ax, arrays[f"score_{v}_HxW"], lims[v], title=title + dim)
        ax.title.set_fontsize(8)
        if v + 1 < nv:
            (a1, b1), (a2, b2) = lims[v + 1]
            ax.add_patch(
                Rectangle((a1, a2), b1 - a1, b2 - a2, fill=False, ec="k", lw=1.2, zorder=4)
            )
            if v == 0:  # a marker too: the first zoom window is small in the full view
                ax.plot((a1 + b1) / 2, (a2 + b2) / 2, "k+", ms=10, mew=1.2, zorder=4)
    cbar = fig.colorbar(image, ax=axes, shrink=0.6, aspect=30)
    ticks = np.array([-1, -0.5, -1e-9, 1e-9, 0.5, 1])
    cbar.set_ticks(_display(ticks))
    cbar.set_ticklabels(["−1", "−0.5", "0⁻", "0⁺", "0.5", "1"])
    cbar.set_label("score: > 0 trainable (speed), < 0 diverged (−1: at once)", fontsize=7)
    fig.suptitle(
        f"Trainability of a {cfg.width}-{cfg.width}-1 tanh network, per-layer lr, full-batch "
        f"GD, {cfg.steps} steps, float64 (blue trains, red diverges)",
        fontsize=9,
    )
    return fig


def _box_counting_panel(ax, cfg: Config, summary: dict) -> None:
    """N(s) against s at every level, with its least-squares line."""
    sizes = np.sort(np.asarray(cfg.box_sizes, dtype=float))
    for v, e in enumerate(summary["trainability"]["levels"]):
        if "dimension" not in e:
            continue
        counts = np.asarray(e["box_counts"], dtype=float)
        ax.loglog(sizes, counts, "o", color=f"C{v}", ms=4)
        slope, icpt = np.polyfit(np.log(sizes), np.log(counts), 1)
        ax.loglog(
            sizes,
            np.exp(icpt) * sizes**slope,
            "-",
            color=f"C{v}",
            lw=0.9,
            label=f"{'full' if v == 0 else f'zoom {v}'}: dim {e['dimension']:.2f}",
        )
    bd = summary["boundary_dimension"]
    ax.set(
        xlabel="box edge s (pixels, log)",
        ylabel="boxes N(s) on the boundary (log)",
        title=f"box counting: median dim {bd['measured']:.2f} (paper 1.17–1.98)",
    )
    ax.title.set_fontsize(8)
    ax.legend()
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.minorticks_off()


def _neighbours_panel(ax, arrays: dict, summary: dict) -> None:
    """The loss curves of the two neighbouring pixels of the deepest zoom."""
    curves = arrays["pair_loss_2xT"]
    steps_T = np.arange(curves.shape[1])
    rel = summary["neighbours"]["relative_distance"]
    top = 10 * fractal.BLOWUP
    for c, (pair, curve) in enumerate(zip(arrays["pair_lr_2x2"], curves, strict=True)):
        ratio = curve / curve[0]
        ax.semilogy(
            steps_T,
            np.clip(np.where(np.isfinite(ratio), ratio, top), None, top),
            color="C0" if c == 0 else "C3",
            lw=1,
            label=f"lr1 = {pair[0]:.7g}, lr2 = {pair[1]:.7g}",
        )
    ax.axhline(fractal.BLOWUP, color="k", ls="--", lw=0.7, label="diverged from here on")
    ax.set(
        xlabel="step",
        ylabel="loss / initial loss (log, clipped)",
        title=f"two neighbouring pixels of the deepest zoom ({rel:.1e} apart)",
    )
    ax.title.set_fontsize(8)
    ax.legend(fontsize=6)


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    with plt.style.context(plotting.STYLE):
        figs = {"trainability": _trainability_figure(arrays, cfg, summary)}
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
        _box_counting_panel(ax1, cfg, summary)
        _neighbours_panel(ax2, arrays, summary)
        figs["dimension"] = fig
    return figs


# ----------------------------------------------------------------------------- main


main = cli.study_main(
    __name__,
    compute,
    plot,
    quick_help="40 x 40 grids of 150 steps (seconds)",
    paper_help="paper: width 16, four 1024 x 1024 grids of 1000 steps (an accelerator job)",
    folder=lambda cfg, args: f"{NAME}-paper" if args.scale == "paper" else NAME,
)


if __name__ == "__main__":
    main()
