"""Local minima and their basins of attraction: which minimum does each start reach?

Basin maps: every start of a map_n x map_n grid over the bounds is descended and coloured by
the minimum it reaches (within reach_tol), "not converged" or "diverged": Himmelblau under
GD and under Adam, the six-hump camel and Rastrigin (121 local minima) under GD; basin
fractions in summary.json. Then the learning rate: the basin fraction of each Himmelblau
minimum for num_lrs GD learning rates in [lr_min, lr_max], from a sweep_n x sweep_n grid
of starts per lr. GD can only settle on a minimum whose Hessian has lr < 2 / lambda_max
(beyond it the step along the top eigenvector overshoots by more than it corrects), so each
basin vanishes at its own threshold: 0.01495 at (-3.779, -3.283), 0.01897 at
(3.584, -1.848), 0.02431 at (3, 2), 0.02483 at (-2.805, 3.131) (float64 Hessians). Measured
twice. First, the first lr of the sweep from which the basin fraction stays 0, resolution
one lr spacing; a run counts as having reached a minimum only if it is there after
sweep_steps of float32 GD, survives a kick of 1e-4 along the minimum's top eigenvector and
kick_steps more, and has |grad| <= grad_tol (which rules out period-2 orbits around it).
Second, sharply: float64 GD started at each minimum plus a 1e-6 offset along the top
eigenvector moves back below the threshold and away above it (bracketed to ~1e-12). Last,
the course's Himmelblau exercise: Adam, lr 1e-3, 20000 steps from (0, 0), (1, 0), (-4, 0)
and (4, 0), with the minimum each reaches.

Each basin map is also written at full resolution, one pixel per start
(basin_map-<landscape>-<optimizer>-lr<lr>.png, 1024 x 1024), beside the overview figure;
`make explore` zooms into them live.

Run: make local_minima   (smoke: python -m studies.local_minima --quick, about 10 s; the
default run takes 1 to 3 minutes on 2 CPU cores)
"""

import dataclasses
from typing import Annotated, Literal

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from sandbox import basins, calculus, cli, config, landscapes, optim, plotting, sweep

NAME = "local_minima"


Landscape2D = Literal[tuple(landscapes.names_2d_with_minimum())]
Optimizer = Literal[tuple(optim.names())]
PositiveLr = Annotated[float, config.bounds(gt=0)]
Steps = Annotated[int, config.bounds(1, 10**6)]
HIMMELBLAU = "himmelblau"
# K-section of the sharp threshold: lrs tried per minimum and round (a whole vector block).
THRESHOLD_LRS = 64
# Dense scan around each threshold for the figure: relative lr offsets.
SCAN_REL = np.linspace(-0.02, 0.02, 161)
EXERCISE_COLORS = ("C3", "C1", "C6", "C0", "C2", "C4", "C5", "C8")


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # unused: the study has no randomness (grids of starts)
    # Basin maps: (landscape, optimizer, lr, steps) per panel.
    # The third is past 2/lambda_max of one minimum: its basin is gone, and "not converged"
    # (grey) and "diverged" (black) starts appear.
    maps: tuple[tuple[Landscape2D, Optimizer, PositiveLr, Steps], ...] = config.field(
        (
            ("himmelblau", "sgd", 0.01, 1000),
            ("himmelblau", "adam", 0.02, 2000),
            ("himmelblau", "sgd", 0.02, 1000),
            ("six_hump_camel", "sgd", 0.003, 3000),
            ("rastrigin", "sgd", 0.002, 500),
        ),
        rule=(
            lambda m: len({tuple(e[:3]) for e in m}) == len(m),
            "no (landscape, optimizer, lr) twice",
        ),
    )
    """(landscape with a minimum, optimizer, lr, steps) of each basin map"""
    map_n: int = config.count(1024, 8192, lo=2)  # starts per side of each map
    reach_tol: float = config.field(1e-2, gt=0)  # an endpoint this close to a minimum reached it
    # Himmelblau's basin fractions against the GD learning rate.
    lr_min: float = config.field(0.001, gt=0)  # the sweep's smallest lr
    lr_max: float = config.field(0.03, gt=0)  # the sweep's largest lr
    num_lrs: int = config.count(117, 10_000, lo=2)  # lr spacing (0.03 - 0.001) / 116 = 2.5e-4
    sweep_n: int = config.count(512, 8192, lo=2)  # starts per side, per lr
    sweep_steps: int = config.count(2000, 10**6)  # GD steps per run of the sweep
    # Then every run is kicked by `kick` along the top Hessian eigenvector of its nearest
    # minimum and runs `kick_steps` more: a minimum counts as reached only if the run comes
    # back. Without the kick, float32 rounding can hold a run at a minimum that is unstable
    # at its lr (the float32 gradient there is ~1e-4 of rounding noise, and a run that
    # arrives with no component along the top eigenvector has nothing to grow from).
    kick: float = config.field(1e-4, gt=0)  # the kick's length
    kick_steps: int = config.count(1000, 10**6)  # steps after the kick
    # ... and |grad| at most this: a run circling a minimum on a period-2 orbit (lr just
    # above its threshold) stays within reach_tol but has not reached it.
    grad_tol: float = config.field(1e-3, gt=0)  # reached also needs |grad| below this
    snapshot_lrs: tuple[float, ...] = (0.01, 0.016, 0.02, 0.0245)  # maps kept (nearest lr)
    # Sharp thresholds: float64 GD from minimum + offset * top eigenvector.
    offset: float = config.field(1e-6, gt=0)  # offset along the top eigenvector
    threshold_steps: int = config.count(500, 10**6)  # GD steps per threshold test
    threshold_rounds: int = config.count(6, 100)  # each round narrows the bracket 63-fold
    # The course's exercise.
    exercise_optimizer: Optimizer = "adam"  # the exercise's optimizer
    exercise_lr: float = config.field(1e-3, gt=0)  # the exercise's lr
    exercise_steps: int = config.count(20_000, 10**6)  # the exercise's steps
    exercise_starts: tuple[tuple[float, float], ...] = (
        (0.0, 0.0),
        (1.0, 0.0),
        (-4.0, 0.0),
        (4.0, 0.0),
    )
    """(x, y) starts of the exercise"""
    exercise_record_every: int = config.count(50, 10**6)  # steps between recorded points

    RELATIONS = (
        config.relation("lr_min < lr_max", lambda c: c.lr_min < c.lr_max),
        config.relation(
            "exercise_record_every <= exercise_steps",
            lambda c: c.exercise_record_every <= c.exercise_steps,
        ),
    )


QUICK = Config(
    map_n=128,
    num_lrs=59,  # spacing 5e-4
    sweep_n=151,
    threshold_rounds=4,
)


# ----------------------------------------------------------------------------- helpers


def _key(point) -> str:
    """Name of a minimum in summary.json: its coordinates to 3 decimals."""
    return f"({point[0]:.3f}, {point[1]:.3f})"


def _map_key(name: str, optimizer: str, lr: float) -> str:
    """Name of a basin map in arrays.npz and summary.json."""
    return f"{name}/{optimizer}/lr={lr:g}"


def _offset_ratio(fn, minima_Kx2, v_Kx2, lr_KxM, cfg: Config) -> np.ndarray:
    """|x_T - x*| / offset after threshold_steps of float64 GD from x* + offset * v; [K, M].

    Below the threshold the top-eigenvector component shrinks like |1 - lr lambda|^T, above
    it grows; a diverged run counts as infinitely far.
    """
    k, m = lr_KxM.shape
    x0 = np.repeat(minima_Kx2 + cfg.offset * v_Kx2, m, axis=0)
    with jax.enable_x64(True):
        run = sweep.descend(fn, x0, steps=cfg.threshold_steps, lr=lr_KxM.reshape(-1))
    dist = np.linalg.norm(run.x - np.repeat(minima_Kx2, m, axis=0), axis=1) / cfg.offset
    return np.where(run.diverged, np.inf, dist).reshape(k, m)


def sharp_thresholds(fn, minima_Kx2, v_Kx2, cfg: Config) -> np.ndarray:
    """Brackets [K, 2] of the lr at which GD from minimum + offset stops returning to it.

    Each round tries THRESHOLD_LRS lrs evenly across every bracket (all minima in one
    sweep) and keeps the pair around the first lr whose run moved away.
    """
    k = len(minima_Kx2)
    bracket = np.tile([cfg.lr_min, cfg.lr_max], (k, 1)).astype(np.float64)
    found = np.zeros(k, bool)
    for _ in range(cfg.threshold_rounds):
        lr_KxM = np.linspace(bracket[:, 0], bracket[:, 1], THRESHOLD_LRS, axis=1)
        grows = _offset_ratio(fn, minima_Kx2, v_Kx2, lr_KxM, cfg) > 1
        for i in range(k):
            if not grows[i].any() or grows[i, 0]:  # no crossing inside the bracket
                continue
            j = int(np.argmax(grows[i]))
            bracket[i] = lr_KxM[i, j - 1], lr_KxM[i, j]
            found[i] = True
    return np.where(found[:, None], bracket, np.nan)


def _map_labels(lscape, minima_Kx2, starts_Nx2, optimizer, lr, steps, cfg) -> np.ndarray:
    """Labels [N] of the minimum each start reaches (`basins.classify`)."""
    run = sweep.descend(lscape.fn, starts_Nx2, optimizer=optimizer, steps=steps, lr=lr)
    return basins.classify(run.x, minima_Kx2, cfg.reach_tol, run.diverged).astype(np.int16)


def _kicked_gd_labels(fn, minima_Kx2, v_Kx2, starts_Nx2, lr: float, cfg: Config) -> np.ndarray:
    """Labels [N] after sweep_steps of GD, a kick and kick_steps more.

    The kick moves each run by `kick` along the top Hessian eigenvector of its nearest
    minimum, the direction in which a minimum becomes unstable once lr > 2 / lambda_max.
    Reached: within reach_tol of the minimum and |grad| <= grad_tol at the end.
    """
    run = sweep.descend(fn, starts_Nx2, steps=cfg.sweep_steps, lr=lr)
    x = run.x.astype(np.float64)
    nearest = np.argmin(np.linalg.norm(x[:, None] - minima_Kx2[None], axis=-1), axis=1)
    x1 = x + cfg.kick * v_Kx2[nearest]
    # Diverged runs stay diverged; they restart from a minimum only to keep the number of
    # runs, and so the compiled shape, the same for every lr.
    x1[run.diverged] = minima_Kx2[0]
    again = sweep.descend(fn, x1.astype(np.float32), steps=cfg.kick_steps, lr=lr)
    x = np.where(run.diverged[:, None], run.x, again.x)
    grad_norm = np.where(run.diverged, run.grad_norm, again.grad_norm)
    diverged = run.diverged | again.diverged
    labels = basins.classify(x, minima_Kx2, cfg.reach_tol, diverged)
    labels[(labels >= 0) & (grad_norm > cfg.grad_tol)] = basins.NOT_CONVERGED
    return labels.astype(np.int16)


def _fractions_dict(frac: np.ndarray, minima_Kx2: np.ndarray) -> dict:
    """Basin fractions [K + 2] by minimum name, then not_converged and diverged."""
    out = {_key(m): float(f) for m, f in zip(minima_Kx2, frac, strict=False)}
    out["not_converged"] = float(frac[-2])
    out["diverged"] = float(frac[-1])
    return out


# ----------------------------------------------------------------------------- compute


def _basin_maps(cfg: Config) -> tuple[dict, dict]:
    """Basin maps: labels of a map_n x map_n grid of starts per entry of `maps`."""
    arrays, summary = {}, {}
    for name, optimizer, lr, steps in cfg.maps:
        lscape = landscapes.get(name)
        minima = landscapes.local_minima(lscape)
        starts = sweep.grid(lscape.bounds, cfg.map_n)
        labels = _map_labels(lscape, minima, starts, optimizer, lr, steps, cfg)
        frac = basins.fractions(labels, len(minima))
        key = _map_key(name, optimizer, lr)
        arrays[f"map/{key}/labels_HxW"] = labels.reshape(cfg.map_n, cfg.map_n)
        arrays[f"map/{key}/minima_Kx2"] = minima
        summary[key] = {
            "optimizer": optimizer,
            "lr": lr,
            "steps": steps,
            "starts": int(labels.size),
            "local_minima": len(minima),
            "fractions": _fractions_dict(frac, minima),
            "fractions_sum": {"measured": float(frac.sum()), "theory": 1.0},
            "largest_basin": _key(minima[int(np.argmax(frac[:-2]))]),
        }
        if name == "rastrigin":
            at_origin = int(np.argmin(np.linalg.norm(minima, axis=1)))
            summary[key]["global_minimum_fraction"] = float(frac[at_origin])
    return arrays, summary


def _lr_sweep(fn, bounds, minima_Kx2, v_Kx2, cfg: Config):
    """Himmelblau's basin fractions against the lr (one kicked GD sweep per lr).

    Returns:
      (lr_L [L], fractions [L, K + 2], indices of the snapshot lrs, their label maps [S, H, W]).
    """
    k = len(minima_Kx2)
    lr_L = np.linspace(cfg.lr_min, cfg.lr_max, cfg.num_lrs)
    starts = sweep.grid(bounds, cfg.sweep_n)
    snap_idx = sorted({int(np.argmin(np.abs(lr_L - s))) for s in cfg.snapshot_lrs})
    frac_LxK2 = np.zeros((len(lr_L), k + 2))
    snapshots = []
    for i, lr in enumerate(lr_L):
        labels = _kicked_gd_labels(fn, minima_Kx2, v_Kx2, starts, float(lr), cfg)
        frac_LxK2[i] = basins.fractions(labels, k)
        if i in snap_idx:
            snapshots.append(labels.reshape(cfg.sweep_n, cfg.sweep_n).astype(np.int8))
    return lr_L, frac_LxK2, snap_idx, np.stack(snapshots)


def _vanishing_entry(j: int, lr_L, frac_LxK2, bracket_Kx2, lam_K, minima_Kx2, cfg: Config):
    """summary.json entry of minimum j: its vanishing lr from the sweep and from offsets."""
    m = minima_Kx2[j]
    theory = float(2.0 / lam_K[j])
    spacing = float(lr_L[1] - lr_L[0])
    runs_L = np.round(frac_LxK2[:, j] * cfg.sweep_n**2).astype(int)
    zeros = np.flatnonzero(runs_L == 0)
    first = int(zeros[0]) if zeros.size else None
    stray = [] if first is None else np.flatnonzero(runs_L[first:])
    sharp = bracket_Kx2[j]
    return {
        "minimum": m.tolist(),
        "lambda_max": float(lam_K[j]),
        "theory_2_over_lambda_max": theory,
        "from_basin_fraction": {
            "measured": None if first is None else float(lr_L[first]),
            "theory": theory,
            "last_lr_with_basin": float(lr_L[first - 1]) if first else None,
            "resolution": spacing,
            "note": f"first lr of {cfg.num_lrs} (spacing {spacing:.3g}) at which the "
            f"basin fraction of {cfg.sweep_n}^2 starts drops to 0; float32 GD, "
            f"{cfg.sweep_steps} steps, a kick of {cfg.kick:g} along the top eigenvector "
            f"of the nearest minimum, {cfg.kick_steps} steps; reached = within "
            f"{cfg.reach_tol} and |grad| <= {cfg.grad_tol}. Just below 2/lambda_max the "
            "region a minimum still pulls back shrinks below the kick, so a basin can "
            "read 0 up to one spacing early",
            "stray_runs_after": [
                {"lr": float(lr_L[first + i]), "runs": int(runs_L[first + i])} for i in stray
            ],
            "stray_note": "runs found at the minimum at the last step at an lr where it is "
            "unstable: chaotic GD passing within reach at that step, not a basin",
        },
        "from_offset_start": {
            "measured": None if np.isnan(sharp[0]) else float(sharp.mean()),
            "theory": theory,
            "bracket": None if np.isnan(sharp[0]) else sharp.tolist(),
            "note": f"float64 GD from the minimum + {cfg.offset:g} x top eigenvector, "
            f"{cfg.threshold_steps} steps: returns below the lr, moves away above",
        },
    }


def _exercise(fn, minima_Kx2, cfg: Config) -> tuple[dict, dict]:
    """The course's exercise: recorded paths, labels and the summary of each start."""
    ex = sweep.descend(
        fn,
        np.asarray(cfg.exercise_starts, np.float32),
        optimizer=cfg.exercise_optimizer,
        steps=cfg.exercise_steps,
        record_every=cfg.exercise_record_every,
        lr=cfg.exercise_lr,
    )
    ex_labels = basins.classify(ex.x, minima_Kx2, cfg.reach_tol, ex.diverged)
    summary = {
        "optimizer": cfg.exercise_optimizer,
        "lr": cfg.exercise_lr,
        "steps": cfg.exercise_steps,
        "runs": [
            {
                "start": list(s),
                "final_x": x.tolist(),
                "final_loss": float(f),
                "reached": _key(minima_Kx2[lab])
                if lab >= 0
                else ("diverged" if lab == -2 else None),
                "distance_to_it": float(np.linalg.norm(x - minima_Kx2[lab])) if lab >= 0 else None,
            }
            for s, x, f, lab in zip(cfg.exercise_starts, ex.x, ex.loss, ex_labels, strict=True)
        ],
    }
    return {"exercise/path_NxTx2": ex.path, "exercise/labels_N": ex_labels}, summary


def compute(cfg: Config) -> tuple[dict, dict]:
    """Basin maps, Himmelblau's basins against the lr, sharp thresholds and the exercise."""
    arrays, maps = _basin_maps(cfg)
    h = landscapes.get(HIMMELBLAU)
    minima = np.asarray(h.minima, np.float64)
    lam_K, v_Kx2 = calculus.top_curvature(h.fn, minima)
    lr_L, frac_LxK2, snap_idx, snapshots = _lr_sweep(h.fn, h.bounds, minima, v_Kx2, cfg)
    # The sharp thresholds, and a dense scan around each for the figure.
    bracket_Kx2 = sharp_thresholds(h.fn, minima, v_Kx2, cfg)
    scan_lr_KxM = (2.0 / lam_K)[:, None] * (1 + SCAN_REL[None, :])
    scan_ratio_KxM = _offset_ratio(h.fn, minima, v_Kx2, scan_lr_KxM, cfg)
    vanishing = {
        _key(m): _vanishing_entry(j, lr_L, frac_LxK2, bracket_Kx2, lam_K, minima, cfg)
        for j, m in enumerate(minima)
    }
    ex_arrays, ex_summary = _exercise(h.fn, minima, cfg)
    arrays.update(
        {
            "himmelblau/minima_Kx2": minima,
            "himmelblau/lambda_max_K": lam_K,
            "sweep/lr_L": lr_L,
            "sweep/fractions_LxK2": frac_LxK2,
            "sweep/snapshot_lr_S": lr_L[snap_idx],
            "sweep/snapshot_labels_SxHxW": snapshots,
            "threshold/bracket_Kx2": bracket_Kx2,
            "threshold/scan_lr_KxM": scan_lr_KxM,
            "threshold/scan_ratio_KxM": scan_ratio_KxM,
        }
        | ex_arrays
    )
    return arrays, {"maps": maps, "vanishing_lr": vanishing, "exercise": ex_summary}


# ----------------------------------------------------------------------------- plot


def _title(name: str, optimizer: str, lr: float, steps: int) -> str:
    """Title of a basin map: the landscape, then optimizer, lr and steps."""
    opt = {"sgd": "GD"}.get(optimizer, optimizer.capitalize())
    return f"{name}\n{opt}, lr {lr:g}, {steps} steps"


def _many_minima_legend(ax, pts, lscape, entry: dict) -> None:
    """Dots for the minima, a star for the global one and the shares, right of the map."""
    ax.scatter(*pts.T, s=3, c="black", lw=0, zorder=3)
    g = lscape.global_minima
    ax.scatter(*g.T, s=110, marker="*", c="white", edgecolors="black", zorder=4)
    share = entry.get("global_minimum_fraction")
    s = entry["fractions"]
    ax.text(
        1.03,
        1.0,
        f"{len(pts)} local minima\n(dots; colours repeat)\n"
        + (f"★ global minimum:\n   {100 * share:.1f}% of starts\n" if share else "")
        + f"not converged: {100 * s['not_converged']:.1f}%\n"
        f"diverged: {100 * s['diverged']:.1f}%",
        transform=ax.transAxes,
        va="top",
        fontsize=7,
    )


def _plot_basin_maps(arrays: dict, cfg: Config, summary: dict):
    """Basin maps, two per row, each with its legend on the right."""
    n = len(cfg.maps)
    rows = -(-n // 2)
    fig, axes = plt.subplots(
        rows, 2, figsize=(plotting.FULL, 2.3 * rows), layout="constrained", squeeze=False
    )
    for ax, (name, optimizer, lr, steps) in zip(axes.ravel(), cfg.maps, strict=False):
        lscape = landscapes.get(name)
        key = _map_key(name, optimizer, lr)
        labels = arrays[f"map/{key}/labels_HxW"]
        pts = arrays[f"map/{key}/minima_Kx2"]
        many = len(pts) > 9
        plotting.basin_image(
            ax,
            labels,
            lscape.bounds,
            points=None if many else pts,
            saddles=lscape.saddles,
            legend=not many,
        )
        if many:  # e.g. Rastrigin: a legend of 121 basins says nothing
            _many_minima_legend(ax, pts, lscape, summary["maps"][key])
        ax.set_title(_title(name, optimizer, lr, steps), fontsize=8)
        ax.set(xlabel="x₀", ylabel="y₀")
        ax.set_aspect("equal")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.suptitle(
        f"Basins of attraction: each of {cfg.map_n}×{cfg.map_n} starts coloured by the "
        "minimum it reaches"
    )
    return fig


def _fraction_panel(ax, arrays: dict, cfg: Config, summary: dict, palette) -> None:
    """Himmelblau's basin fractions against lr, 2/lambda_max and the measured vanishing lr."""
    lr_L = arrays["sweep/lr_L"]
    frac = arrays["sweep/fractions_LxK2"]
    for j, m in enumerate(arrays["himmelblau/minima_Kx2"]):
        v = summary["vanishing_lr"][_key(m)]
        ax.plot(lr_L, frac[:, j], "-o", ms=2, color=palette[j], label=f"{_key(m)}")
        ax.axvline(v["theory_2_over_lambda_max"], color=palette[j], ls="--", lw=0.9)
        meas = v["from_basin_fraction"]["measured"]
        if meas is not None:
            ax.plot(meas, 0, "v", color=palette[j], mec="black", mew=0.5, ms=6, zorder=5)
    ax.plot(lr_L, frac[:, -2], "-", color="0.6", label="not converged")
    ax.plot(lr_L, frac[:, -1], "-", color="black", label="diverged")
    ax.set(
        xlabel="learning rate (GD)",
        ylabel="share of starts",
        title=f"Himmelblau: basin of each minimum vs lr\n"
        f"dashed: 2/λmax; ▼: measured vanishing lr ({cfg.sweep_n}² starts per lr)",
    )
    ax.title.set_fontsize(8)
    ax.set_ylim(-0.03, 1.0)
    ax.legend(loc="upper left", fontsize=6)


def _threshold_panel(ax, arrays: dict, cfg: Config, palette) -> None:
    """Distance after threshold_steps from minimum + offset, around 2/lambda_max, and theory."""
    rel = arrays["threshold/scan_lr_KxM"] / (2.0 / arrays["himmelblau/lambda_max_K"])[:, None]
    ratio = arrays["threshold/scan_ratio_KxM"]
    for j, m in enumerate(arrays["himmelblau/minima_Kx2"]):
        r = np.where(np.isfinite(ratio[j]), ratio[j], np.nan)
        ax.semilogy(100 * (rel[j] - 1), r, color=palette[j], lw=1.2, label=_key(m))
    eps = np.linspace(SCAN_REL[0], SCAN_REL[-1], 400)
    theory = np.abs(1 + 2 * eps) ** cfg.threshold_steps  # |1 - lr lambda|^T, lr = 2(1+eps)/lambda
    ax.semilogy(100 * eps, theory, color="black", ls="--", lw=0.8, label="theory |1 − lr·λmax|^T")
    ax.axvline(0, color="black", ls=":", lw=0.8)
    ax.axhline(1, color="0.5", ls=":", lw=0.8)
    ax.set(
        xlabel="lr / (2/λmax) − 1 (%)",
        ylabel="|x_T − x*| / offset (log)",
        title=f"start x* + {cfg.offset:g}·(top eigenvector), {cfg.threshold_steps} steps "
        "(float64)\nreturns below 2/λmax, leaves above",
    )
    ax.title.set_fontsize(8)
    ax.legend(loc="upper left", fontsize=6)


def _plot_snapshots(arrays: dict, h, palette):
    """Himmelblau's basins at the snapshot lrs: a basin vanishes once lr > 2/lambda_max."""
    minima = arrays["himmelblau/minima_Kx2"]
    snaps = arrays["sweep/snapshot_labels_SxHxW"]
    s_lr = arrays["sweep/snapshot_lr_S"]
    fig, axes = plt.subplots(
        1, len(snaps), figsize=(plotting.FULL, 2.3), layout="constrained", squeeze=False
    )
    for ax, lab, lr in zip(axes[0], snaps, s_lr, strict=True):
        plotting.basin_image(ax, lab, h.bounds, points=minima, legend=False)
        ax.set_title(f"lr {lr:.4g}", fontsize=8)
        ax.set_aspect("equal")
        ax.set_xticks([-5, 0, 5])
        ax.set_yticks([-5, 0, 5])
    handles = [
        Patch(facecolor=palette[j], edgecolor="black", label=f"{_key(m)}: 2/λ {2 / lam:.4f}")
        for j, (m, lam) in enumerate(zip(minima, arrays["himmelblau/lambda_max_K"], strict=True))
    ]
    handles += [
        Patch(facecolor=plotting.NOT_CONVERGED_COLOR, edgecolor="black", label="not converged"),
        Patch(facecolor=plotting.DIVERGED_COLOR, edgecolor="black", label="diverged"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle("Himmelblau, GD: a basin vanishes once lr > 2/λmax of its minimum")
    return fig


def _plot_exercise(arrays: dict, cfg: Config, h):
    """The course's exercise: each start's path on Himmelblau's contours, and where it ends."""
    minima = arrays["himmelblau/minima_Kx2"]
    path = arrays["exercise/path_NxTx2"]
    labels = arrays["exercise/labels_N"]
    fig, ax = plt.subplots(figsize=(plotting.ONE_COL + 1.4, 3.2), layout="constrained")
    plotting.contour_paths(
        ax,
        h.fn,
        h.bounds,
        points={"minimum": minima, "saddle": h.saddles},
        log_levels=True,
        legend=False,
    )
    handles = []
    for i, (s, lab) in enumerate(zip(cfg.exercise_starts, labels, strict=True)):
        end = _key(minima[lab]) if lab >= 0 else "none"
        color = EXERCISE_COLORS[i % len(EXERCISE_COLORS)]
        p = path[i]
        ax.plot(*p.T, color=color, lw=1.4, zorder=3)
        ax.plot(*p[0], "o", color=color, mec="white", mew=0.8, ms=6, zorder=4)
        ax.plot(*p[-1], "X", color=color, mec="white", mew=0.6, ms=7, zorder=4)
        label = f"({s[0]:g}, {s[1]:g}) → {end}"
        handles.append(Line2D([], [], color=color, marker="o", ms=4, label=label))
    handles += [
        Line2D([], [], ls="", marker="*", ms=9, mfc="white", mec="black", label="minimum"),
        Line2D([], [], ls="", marker="D", ms=4, mfc="white", mec="black", label="saddle"),
    ]
    ax.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="start → minimum"
    )
    ax.set(
        xlabel="x",
        ylabel="y",
        title=f"Himmelblau: {cfg.exercise_optimizer.capitalize()}, lr {cfg.exercise_lr:g}, "
        f"{cfg.exercise_steps} steps",
    )
    ax.set_aspect("equal")
    return fig


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    """Figures: basin maps, basin fraction vs lr, basins vs lr, and the course's exercise."""
    h = landscapes.get(HIMMELBLAU)
    palette = plotting.basin_palette(len(arrays["himmelblau/minima_Kx2"]))
    figs = {}
    with plt.style.context(plotting.STYLE):
        figs["basin_maps"] = _plot_basin_maps(arrays, cfg, summary)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.9), layout="constrained")
        _fraction_panel(ax1, arrays, cfg, summary, palette)
        _threshold_panel(ax2, arrays, cfg, palette)
        figs["basin_fraction_vs_lr"] = fig
        figs["basins_vs_lr"] = _plot_snapshots(arrays, h, palette)
        figs["himmelblau_exercise"] = _plot_exercise(arrays, cfg, h)
    return figs


def map_file(name: str, optimizer: str, lr: float) -> str:
    """File name of a basin map at full resolution (one pixel per start)."""
    return f"basin_map-{name}-{optimizer}-lr{lr:g}.png"


def full_resolution_maps(arrays: dict, cfg: Config, summary: dict, folder) -> None:
    """Each basin map as its own PNG, map_n x map_n pixels, one per start, in the colours
    of the overview figure (and of the explorer's tiles), y up."""
    from sandbox import explore, results

    del summary
    for name, optimizer, lr, _ in cfg.maps:
        key = _map_key(name, optimizer, lr)
        png = explore.render_basins(
            arrays[f"map/{key}/labels_HxW"], len(arrays[f"map/{key}/minima_Kx2"])
        )
        results.atomic_write_bytes(folder / map_file(name, optimizer, lr), png)


main = cli.study_main(__name__, compute, plot, artifacts=full_resolution_maps)


if __name__ == "__main__":
    main()
