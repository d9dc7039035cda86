"""Momentum: how fast does heavy ball converge, and does it carry a ball out of a shallow minimum?

Heavy ball is Optax's "momentum" (v <- g + beta v, x <- x - alpha v), that is
x_{t+1} = x_t - alpha grad f(x_t) + beta (x_t - x_{t-1}). On a quadratic each eigen-direction
lambda evolves by the 2x2 matrix [[1 + beta - alpha lambda, -beta], [1, 0]], so the error
shrinks per step by its spectral radius max(|sigma1|, |sigma2|), and a run converges iff
0 < alpha lambda < 2 + 2 beta.

Measured, part 1: on f = 0.5 (x^2 + kappa y^2) (eigenvalues 1 and kappa) every run of an
(lr, beta) grid, from a random start that excites both directions, is recorded in float64; its
rate is exp of the least-squares slope of log |(x_t, x_{t-1})| over the second half of the run
(stopped where the norm leaves [1e-280, 1e280]). summary.json has the largest error against
the theory max over lambda of the spectral radius, the grid points where "measured rate < 1"
and "alpha kappa < 2 + 2 beta" disagree, and, for each beta, the bracket of grid lrs around the
measured divergence threshold beside the theory (2 + 2 beta) / kappa.

Part 2, escaping minima: x^2 sin x on [-6, 7] (global minimum 5.087, shallow local minimum
-2.289, flat inflection at 0) and the tilted double well (x^2 - 1)^2 + tilt x on [-2, 2]
(global minimum on the left, local on the right). From a regular grid of starts, the fraction
that ends within `tol` of the global minimum, against beta: plain GD, heavy ball and Nesterov
(momentum = beta, lr `lr`) and Adam (b1 = beta, lr `adam_lr`). GD's theory value is the share
of the domain inside the global minimum's basin of gradient flow. A map of which minimum each
(start, beta) reaches, and a GIF of many balls rolling at once, GD beside heavy ball.

Run: make momentum   (smoke: python -m studies.momentum --quick; about 30 s on 2 CPU cores,
quick about 10 s)
"""

import dataclasses
import functools
import os
import tempfile
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import animation, colors, ticker
from matplotlib.patches import Patch

from sandbox import basins, cli, config, descent, landscapes, plotting, sweep

NAME = "momentum"
# Part 2 optimizers: name -> the hyperparameter that beta sets. GD is heavy ball at beta = 0.
ESCAPE_OPTIMIZERS = {"momentum": "momentum", "nesterov": "momentum", "adam": "b1"}
ESCAPE_FUNCTIONS = ("x2sinx", "tilted_well")
# The rate of a run is fitted while its norm stays within these factors of the start's.
NORM_FLOOR, NORM_CEIL = 1e-280, 1e280
# Outcome labels of part 2 beyond basins.classify's (0 global, 1 local, -1 other, -2 diverged).
PLATEAU = 2  # stuck on x^2 sin x's flat inflection at x = 0
PLATEAU_TOL = 0.1


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the rate runs' starts
    # Part 1: heavy-ball rate on 0.5 (x^2 + kappa y^2).
    kappa: float = config.field(10.0, 1)  # condition number of the quadratic
    rate_num_lrs: int = config.count(64, 4096, lo=2)  # lrs at the centres of equal cells
    rate_lr_max: float = config.field(0.42, gt=0)  # of (0, rate_lr_max); (2 + 2 * 0.95) / 10 = 0.39
    rate_num_betas: int = config.count(20, 4096, lo=2)  # betas evenly spaced in [0, beta_max]
    rate_beta_max: float = config.field(0.95, 0, lt=1)  # the largest beta of the rate map
    rate_steps: int = config.count(1000, 10**6, lo=2)  # steps per rate run
    # Part 2: escaping minima. Three real critical points (two minima) need
    # |tilt| < 8 / (3 sqrt 3) = 1.54; the left minimum is the global one for tilt > 0.
    tilt: float = config.field(0.3, gt=0, lt=1.5)  # tilt of the tilted double well
    escape_starts: int = config.count(2048, 2**20, lo=2)  # regular grid over each domain
    # 0, then 1 - beta log-spaced from 0.5 down to 1 - escape_beta_max
    escape_num_betas: int = config.count(25, 4096, lo=2)  # betas of the escape sweep
    escape_beta_max: float = config.field(0.99, gt=0.5, lt=1)  # the largest beta of it
    escape_steps: int = config.count(3000, 10**6, lo=2)  # steps per escape run
    lr: float = config.field(0.01, gt=0)  # GD, heavy ball, Nesterov
    adam_lr: float = config.field(0.03, gt=0)  # Adam's lr
    tol: float = config.field(0.01, gt=0)  # distance to a minimum that counts as reaching it
    # The GIF: GD beside heavy ball at gif_beta on x^2 sin x.
    gif_balls: int = config.count(256, 4096, lo=2)  # balls of the GIF
    gif_beta: float = config.field(0.98, 0, lt=1)  # heavy ball's beta in the GIF
    gif_steps: int = config.count(400, 100_000, lo=2)  # steps of the GIF


QUICK = Config(
    rate_num_lrs=24,
    rate_num_betas=6,
    escape_starts=256,
    escape_num_betas=7,
    escape_steps=2000,
    gif_balls=32,
    gif_steps=60,
)


def heavy_ball_rate(lr, beta, lam) -> np.ndarray:
    """Theory: spectral radius of [[1 + beta - lr lam, -beta], [1, 0]] (arrays broadcast)."""
    lr, beta, lam = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (lr, beta, lam)))
    m = np.zeros((*lr.shape, 2, 2))
    m[..., 0, 0] = 1 + beta - lr * lam
    m[..., 0, 1] = -beta
    m[..., 1, 0] = 1
    return np.abs(np.linalg.eigvals(m)).max(axis=-1)


def tilted_well(x, tilt: float):
    """(x^2 - 1)^2 + tilt x, a 1-D double well whose left minimum is the deeper one."""
    return (x[..., 0] ** 2 - 1) ** 2 + tilt * x[..., 0]


def escape_problem(name: str, cfg: Config) -> dict:
    """fn, domain (lo, hi), minima [global, local], maximum between them, plateau point or None."""
    if name == "x2sinx":
        x2 = landscapes.get("x2sinx")
        return {
            "fn": x2.fn,
            "domain": tuple(x2.bounds[0]),
            "minima": x2.minima[:, 0],  # global 5.087, local -2.289
            "barrier": float(x2.maxima[0, 0]),  # 2.289, between the two minima
            "plateau": 0.0,
            "title": "x² sin x",
        }
    roots = np.sort(np.roots([4.0, 0.0, -4.0, cfg.tilt]).real)  # f' = 4x^3 - 4x + tilt
    return {
        "fn": functools.partial(tilted_well, tilt=cfg.tilt),
        "domain": (-2.0, 2.0),
        "minima": roots[[0, 2]],
        "barrier": float(roots[1]),
        "plateau": None,
        "title": f"(x² − 1)² + {cfg.tilt:g}x",
    }


def escape_betas(cfg: Config) -> np.ndarray:
    """[B]: 0, then 1 - beta log-spaced from 0.5 down to 1 - escape_beta_max."""
    rest = 1 - np.geomspace(0.5, 1 - cfg.escape_beta_max, cfg.escape_num_betas - 1)
    return np.concatenate([[0.0], rest])


def _outcomes(x_N: np.ndarray, diverged_N: np.ndarray, prob: dict, tol: float) -> np.ndarray:
    """Labels: 0 global minimum, 1 local, PLATEAU, -1 elsewhere, -2 diverged; int8 [N]."""
    labels = basins.classify(x_N[:, None], prob["minima"][:, None], tol, diverged_N)
    if prob["plateau"] is not None:
        stuck = (labels == basins.NOT_CONVERGED) & (np.abs(x_N - prob["plateau"]) < PLATEAU_TOL)
        labels[stuck] = PLATEAU
    return labels.astype(np.int8)


def _basin_share(prob: dict) -> float:
    """Share of the domain from which gradient flow reaches the global minimum."""
    lo, hi = prob["domain"]
    left = prob["minima"][0] < prob["barrier"]
    return ((prob["barrier"] - lo) if left else (hi - prob["barrier"])) / (hi - lo)


def _rate_runs(cfg: Config, key: jax.Array, lr_N: np.ndarray, beta_N: np.ndarray):
    """Heavy ball on the kappa quadratic in float64, one random unit start per run, recorded."""
    quad = landscapes.get("quadratic", kappa=cfg.kappa)
    # Random directions at least pi/8 away from both axes, so both eigenvalues show.
    angle_N = np.asarray(
        jax.random.uniform(key, (lr_N.size,), minval=np.pi / 8, maxval=3 * np.pi / 8),
        np.float64,
    )
    with jax.enable_x64(True):
        x0_Nx2 = np.stack([np.cos(angle_N), np.sin(angle_N)], axis=1)
        return sweep.descend(
            quad.fn,
            x0_Nx2,
            optimizer="momentum",
            steps=cfg.rate_steps,
            record_every=1,
            bound=NORM_CEIL,
            lr=lr_N,
            momentum=beta_N,
        )


def _state_norms(run, rate_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """|(x_t, x_{t-1})| [N, T] for t >= 1, and where it is fit for the rate [N, T]."""
    path_NxTx2 = run.path.astype(np.float64)
    # optax starts with v = 0, i.e. x_{-1} = x_0.
    z_NxTx4 = np.concatenate([path_NxTx2[:, 1:], path_NxTx2[:, :-1]], axis=-1)
    big_NxT = np.max(np.abs(z_NxTx4), axis=-1)  # scaled: squares of 1e-280 underflow
    safe_NxT = np.where(big_NxT > 0, big_NxT, 1.0)
    norm_NxT = big_NxT * np.sqrt(np.sum((z_NxTx4 / safe_NxT[..., None]) ** 2, axis=-1))
    valid_NxT = (norm_NxT > NORM_FLOOR * norm_NxT[:, :1]) & (norm_NxT < NORM_CEIL)
    step_T = np.arange(1, norm_NxT.shape[1] + 1)
    # A diverged run is frozen at its last good point: the steps after it are not data.
    last_N = np.where(run.diverged, run.diverged_step, rate_steps + 1)
    valid_NxT &= step_T[None, :] <= last_N[:, None]
    return norm_NxT, valid_NxT


def _thresholds(lr_L, beta_B, converges_BxL, kappa: float) -> dict:
    """Per beta: the bracket of grid lrs around the measured divergence threshold, and theory."""
    thresholds = {}
    for b, beta in enumerate(beta_B):
        bracket = list(descent.divergence_bracket(lr_L, converges_BxL[b]))
        theory = (2 + 2 * beta) / kappa
        thresholds[f"{beta:.4g}"] = {
            "bracket": bracket,
            "theory": theory,
            "contains_theory": bool(bracket[0] < theory <= bracket[1]),
        }
    return thresholds


def _optimum(lr_L, beta_B, measured_BxL, kappa: float) -> dict:
    """The classical optimum for eigenvalues in [1, kappa] beside the best grid point."""
    # alpha = 4 / (1 + sqrt kappa)^2, beta = ((sqrt kappa - 1) / (sqrt kappa + 1))^2,
    # rate sqrt(beta).
    sk = np.sqrt(kappa)
    best = np.unravel_index(np.nanargmin(measured_BxL), measured_BxL.shape)
    return {
        "theory": {
            "lr": 4 / (1 + sk) ** 2,
            "beta": ((sk - 1) / (sk + 1)) ** 2,
            "rate": (sk - 1) / (sk + 1),
        },
        "best_on_grid": {
            "lr": float(lr_L[best[1]]),
            "beta": float(beta_B[best[0]]),
            "rate": float(measured_BxL[best]),
        },
    }


def _rates(cfg: Config, key: jax.Array) -> tuple[dict, dict]:
    """Part 1: the (lr, beta) grid on the kappa quadratic, in float64."""
    beta_B = np.linspace(0.0, cfg.rate_beta_max, cfg.rate_num_betas)
    # Cell centres: with the default grid no lr falls exactly on a threshold (2 + 2 beta) /
    # kappa, where the rate is exactly 1 and "converges" is decided by rounding.
    lr_L = (np.arange(cfg.rate_num_lrs) + 0.5) * cfg.rate_lr_max / cfg.rate_num_lrs
    lr_BxL, beta_BxL = np.meshgrid(lr_L, beta_B)
    run = _rate_runs(cfg, key, lr_BxL.ravel(), beta_BxL.ravel())
    measured_BxL = descent.fitted_rate(*_state_norms(run, cfg.rate_steps)).reshape(beta_BxL.shape)
    theory_BxL = np.maximum(
        heavy_ball_rate(lr_BxL, beta_BxL, 1.0), heavy_ball_rate(lr_BxL, beta_BxL, cfg.kappa)
    )
    err_BxL = np.abs(measured_BxL - theory_BxL)
    converges_theory_BxL = lr_BxL * cfg.kappa < 2 + 2 * beta_BxL
    converges_measured_BxL = measured_BxL < 1
    arrays = {
        "rate_lr_L": lr_L,
        "rate_beta_B": beta_B,
        "rate_measured_BxL": measured_BxL,
        "rate_theory_BxL": theory_BxL,
    }
    summary = {
        "rate_max_abs_error": {
            "measured": float(np.nanmax(err_BxL)),
            "theory": 0.0,
            "note": f"{lr_BxL.size} (lr, beta) runs on 0.5 (x^2 + {cfg.kappa:g} y^2), "
            f"{cfg.rate_steps} steps, float64; theory max over lambda in (1, kappa) of "
            "max |eig [[1 + beta - lr lambda, -beta], [1, 0]]|",
        },
        "rate_median_abs_error": float(np.nanmedian(err_BxL)),
        "rate_unmeasured_runs": int(np.isnan(measured_BxL).sum()),
        "convergence_disagreements": {
            "measured": int(np.sum(converges_measured_BxL != converges_theory_BxL)),
            "theory": 0,
            "note": "grid points where (measured rate < 1) != (lr kappa < 2 + 2 beta)",
        },
        "divergence_threshold_by_beta": _thresholds(
            lr_L, beta_B, converges_measured_BxL, cfg.kappa
        ),
        "optimum": _optimum(lr_L, beta_B, measured_BxL, cfg.kappa),
    }
    return arrays, summary


def _escape(cfg: Config) -> tuple[dict, dict]:
    """Part 2: outcome of every (beta, start) for each function and optimizer."""
    beta_B = escape_betas(cfg)
    arrays, summary = {"escape_beta_B": beta_B}, {}
    for fname in ESCAPE_FUNCTIONS:
        prob = escape_problem(fname, cfg)
        lo, hi = prob["domain"]
        x0_N = np.linspace(lo, hi, cfg.escape_starts)
        x0_BNx1 = np.tile(x0_N, len(beta_B))[:, None].astype(np.float32)
        beta_BN = np.repeat(beta_B, cfg.escape_starts).astype(np.float32)
        per_fn = {}
        for opt, beta_name in ESCAPE_OPTIMIZERS.items():
            lr = cfg.adam_lr if opt == "adam" else cfg.lr
            run = sweep.descend(
                prob["fn"],
                x0_BNx1,
                optimizer=opt,
                steps=cfg.escape_steps,
                lr=lr,
                **{beta_name: beta_BN},
            )
            labels_BxN = _outcomes(run.x[:, 0], run.diverged, prob, cfg.tol)
            labels_BxN = labels_BxN.reshape(len(beta_B), -1)
            arrays[f"{fname}/{opt}/labels_BxN"] = labels_BxN
            frac_B = (labels_BxN == 0).mean(axis=1)
            b = int(np.argmax(frac_B))
            per_fn[opt] = {
                "lr": lr,
                "global_fraction_by_beta": [float(f) for f in frac_B],
                "best": {"beta": float(beta_B[b]), "global_fraction": float(frac_B[b])},
                "diverged_fraction": float((labels_BxN == basins.DIVERGED).mean()),
            }
        arrays[f"{fname}/x0_N"] = x0_N
        # Plain GD is heavy ball at beta = 0: Optax's trace with decay 0 passes the gradient
        # through unchanged, so these are exactly GD's updates.
        gd = per_fn["momentum"]["global_fraction_by_beta"][0]
        per_fn["sgd"] = {
            "lr": cfg.lr,
            "global_fraction": {
                "measured": gd,
                "theory": _basin_share(prob),
                "note": "share of the domain in the global minimum's gradient-flow basin",
            },
        }
        per_fn["momentum_gain_over_gd"] = per_fn["momentum"]["best"]["global_fraction"] - gd
        per_fn["minima"] = {"global": float(prob["minima"][0]), "local": float(prob["minima"][1])}
        summary[fname] = per_fn
    summary["betas"] = [float(b) for b in beta_B]
    return arrays, summary


def _gif_runs(cfg: Config) -> dict:
    """Paths of `gif_balls` balls on x^2 sin x, GD (beta = 0) and heavy ball, and outcomes."""
    prob = escape_problem("x2sinx", cfg)
    x0 = np.linspace(*prob["domain"], cfg.gif_balls).astype(np.float32)
    x0_Gx1 = np.concatenate([x0, x0])[:, None]
    kw = dict(
        optimizer="momentum",
        lr=cfg.lr,
        momentum=np.repeat(np.float32([0.0, cfg.gif_beta]), cfg.gif_balls),
    )
    rec = sweep.descend(prob["fn"], x0_Gx1, steps=cfg.gif_steps, record_every=1, **kw)
    end = sweep.descend(prob["fn"], x0_Gx1, steps=cfg.escape_steps, **kw)
    labels = _outcomes(end.x[:, 0], end.diverged, prob, cfg.tol)
    g = cfg.gif_balls
    return {
        "gif/sgd/path_GxT": rec.path[:g, :, 0],
        "gif/sgd/labels_G": labels[:g],
        "gif/momentum/path_GxT": rec.path[g:, :, 0],
        "gif/momentum/labels_G": labels[g:],
    }


def compute(cfg: Config) -> tuple[dict, dict]:
    """Part 1 (rates), part 2 (escaping minima) and the GIF's runs."""
    key = jax.random.key(cfg.seed)
    (rate_key,) = jax.random.split(key, 1)
    del key
    arrays, summary = _rates(cfg, rate_key)
    esc_arrays, esc_summary = _escape(cfg)
    arrays |= esc_arrays | _gif_runs(cfg)
    summary["escape"] = esc_summary
    return arrays, summary


# ------------------------------------------------------------------------------ figures

OPT_STYLE = {
    "momentum": ("heavy ball", "C0"),
    "nesterov": ("Nesterov", "C8"),
    "adam": ("Adam (β = b1)", "C3"),
}
OUTCOMES = (  # label, name, colour
    (0, "global minimum", "C2"),
    (1, "local minimum", "C1"),
    (PLATEAU, "stuck at x = 0", "C4"),
    (basins.NOT_CONVERGED, "elsewhere", (0.85, 0.85, 0.85)),
    (basins.DIVERGED, "diverged", "k"),
)


def _beta_axis(ax, beta_max: float) -> None:
    """x axis u = -log10(1 - beta): spreads out the betas near 1 where momentum matters."""
    ax.set_xscale("function", functions=(_u_of_beta, _beta_of_u))
    ticks = [b for b in (0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999) if b <= beta_max]
    ax.set_xticks(ticks, [f"{b:g}" for b in ticks])
    ax.set_xlim(0, beta_max)


def _u_of_beta(b):
    """u = -log10(1 - beta), beta clipped below 1."""
    return -np.log10(1 - np.clip(b, None, 1 - 1e-12))


def _beta_of_u(u):
    """beta = 1 - 10^-u, the inverse of `_u_of_beta`."""
    return 1 - 10.0 ** (-np.asarray(u, dtype=float))


def _theory_rate(lr, beta, kappa: float):
    """Theory rate on the kappa quadratic: the slower of its eigenvalues 1 and kappa."""
    return np.maximum(heavy_ball_rate(lr, beta, 1.0), heavy_ball_rate(lr, beta, kappa))


def _rate_map_panel(ax, arrays: dict, cfg: Config, summary: dict) -> None:
    """Measured rate over the (lr, beta) grid, theory contours, threshold and optimum."""
    lr_L, beta_B = arrays["rate_lr_L"], arrays["rate_beta_B"]
    norm = colors.TwoSlopeNorm(vmin=0.5, vcenter=1.0, vmax=1.5)
    mesh = ax.pcolormesh(
        *np.meshgrid(_centres_to_edges(lr_L), _centres_to_edges(beta_B)),
        np.clip(arrays["rate_measured_BxL"], 0.5, 1.5),
        cmap="RdBu_r",
        norm=norm,
    )
    ax.figure.colorbar(mesh, ax=ax, label="measured rate per step (clipped to [0.5, 1.5])")
    lr_fine = np.linspace(lr_L[0], lr_L[-1], 300)
    beta_fine = np.linspace(beta_B[0], beta_B[-1], 200)
    lf, bf = np.meshgrid(lr_fine, beta_fine)
    th_fine = _theory_rate(lf, bf, cfg.kappa)
    cs = ax.contour(lf, bf, th_fine, levels=[0.6, 0.8, 0.9], colors="k", linewidths=0.6)
    ax.clabel(cs, fontsize=6, fmt="%g")
    ax.plot((2 + 2 * beta_fine) / cfg.kappa, beta_fine, "k-", lw=1.6, label="α κ = 2 + 2β")
    opt = summary["optimum"]["theory"]
    ax.plot(opt["lr"], opt["beta"], "*", ms=10, mfc="gold", mec="k", label="optimum")
    ax.set(
        xlabel="learning rate α",
        ylabel="momentum β",
        title=f"0.5 (x² + {cfg.kappa:g} y²): rate, theory contours",
        xlim=(0, lr_L[-1]),
    )
    ax.grid(False)
    ax.legend(loc="lower right")


def _rate_lines_panel(ax, arrays: dict, cfg: Config, summary: dict) -> None:
    """Rate against lr for four betas: theory lines, measured dots."""
    lr_L, beta_B = arrays["rate_lr_L"], arrays["rate_beta_B"]
    meas = arrays["rate_measured_BxL"]
    lr_fine = np.linspace(lr_L[0], lr_L[-1], 300)
    picks = np.unique(np.round(np.linspace(0, len(beta_B) - 1, 4)).astype(int))
    for c, b in enumerate(picks):
        th_line = _theory_rate(lr_fine, beta_B[b], cfg.kappa)
        ax.plot(lr_fine, th_line, "-", color=f"C{c}", lw=1, label=f"β = {beta_B[b]:.2f}")
        ax.plot(lr_L, meas[b], "o", color=f"C{c}", ms=2.5)
    ax.axhline(1, color="k", lw=0.6, ls=":")
    err = summary["rate_max_abs_error"]["measured"]
    ax.set(
        xlabel="learning rate α",
        ylabel="rate per step (log scale)",
        yscale="log",
        title=f"theory max|σ| (lines), measured (dots);\nlargest error {err:.1e}",
    )
    ticks = [0.5, 0.7, 1, 1.5, 2, 3]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.title.set_fontsize(8)
    ax.legend(loc="upper left")


def _plot_rate(arrays: dict, cfg: Config, summary: dict):
    """Part 1: measured heavy-ball rates against theory."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.9), layout="constrained")
    _rate_map_panel(ax1, arrays, cfg, summary)
    _rate_lines_panel(ax2, arrays, cfg, summary)
    return fig


def _escape_fraction_panel(ax, arrays: dict, cfg: Config, fname: str, esc: dict) -> None:
    """Share of the starts that end at the global minimum against beta, per optimizer."""
    betas = arrays["escape_beta_B"]
    gd = esc[fname]["sgd"]["global_fraction"]["measured"]
    ax.axhline(gd, color="k", ls="--", lw=1, zorder=3, label=f"plain GD, lr {cfg.lr:g}")
    for opt, (label, color) in OPT_STYLE.items():
        frac_B = (arrays[f"{fname}/{opt}/labels_BxN"] == 0).mean(axis=1)
        lr = esc[fname][opt]["lr"]
        ax.plot(betas, frac_B, "-", color=color, marker=".", label=f"{label}, lr {lr:g}")
    theory = esc[fname]["sgd"]["global_fraction"]["theory"]
    ax.axhline(theory, color="0.5", lw=0.8, ls=":", label="gradient-flow basin")
    _beta_axis(ax, betas[-1])
    ax.set(
        xlabel="β (momentum, or Adam's b1)",
        ylabel="fraction at global minimum",
        title=f"{cfg.escape_starts} starts, {cfg.escape_steps} steps",
    )
    lo, hi = min(ax.get_ylim()[0], gd), max(ax.get_ylim()[1], gd)
    ax.set_ylim(max(0.0, lo - 0.1), min(1.0, hi + 0.1))


def _plot_escape(arrays: dict, cfg: Config, esc: dict):
    """Part 2: each function with its minima, over the share reaching the global one."""
    fig, axes = plt.subplots(
        2, 2, figsize=(plotting.FULL, 4.6), layout="constrained", height_ratios=(1, 1.3)
    )
    for col, fname in enumerate(ESCAPE_FUNCTIONS):
        prob = escape_problem(fname, cfg)
        ax = axes[0, col]
        plotting.curve_1d(ax, prob["fn"], prob["domain"])
        fmin = np.asarray(jax.vmap(prob["fn"])(prob["minima"][:, None].astype(np.float32)))
        ax.plot(prob["minima"][0], fmin[0], "*", ms=11, mfc="C2", mec="k", label="global")
        ax.plot(prob["minima"][1], fmin[1], "o", ms=6, mfc="C1", mec="k", label="local")
        ax.set(xlabel="x", ylabel="f(x)", title=prob["title"])
        ax.legend(loc="upper center")
        _escape_fraction_panel(axes[1, col], arrays, cfg, fname, esc)
        if col == 0:
            axes[1, col].legend(loc="upper left", fontsize=6)
    return fig


def _plot_escape_map(arrays: dict, cfg: Config):
    """Part 2: the outcome of heavy ball from every (start, beta), per function."""
    betas = arrays["escape_beta_B"]
    fig, axes = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
    cmap = colors.ListedColormap([c for _, _, c in sorted(OUTCOMES)])
    bounds = np.array(sorted(lab for lab, _, _ in OUTCOMES) + [PLATEAU + 1]) - 0.5
    cnorm = colors.BoundaryNorm(bounds, cmap.N)
    u_B = _u_of_beta(betas)
    for ax, fname in zip(axes, ESCAPE_FUNCTIONS, strict=True):
        x0_N = arrays[f"{fname}/x0_N"]
        labels = arrays[f"{fname}/momentum/labels_BxN"]
        ax.pcolormesh(
            _centres_to_edges(x0_N), _centres_to_edges(u_B), labels, cmap=cmap, norm=cnorm
        )
        prob = escape_problem(fname, cfg)
        for m, c in zip(prob["minima"], ("C2", "C1"), strict=True):
            ax.axvline(m, color=c, lw=0.8, ls="--")
        ax.axvline(prob["barrier"], color="k", lw=0.6, ls=":")
        ticks = [b for b in (0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99) if b <= betas[-1]]
        ax.set_yticks(_u_of_beta(np.array(ticks)), [f"{b:g}" for b in ticks])
        ax.set(xlabel="start x₀", ylabel="momentum β", title=f"heavy ball on {prob['title']}")
        ax.grid(False)
    present = {
        int(v) for k, v in arrays.items() if k.endswith("momentum/labels_BxN") for v in np.unique(v)
    }
    handles = [
        Patch(facecolor=c, edgecolor="k", label=n) for lab, n, c in OUTCOMES if lab in present
    ]
    axes[1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    """Figures: rate (part 1), escape and escape_map (part 2)."""
    with plt.style.context(plotting.STYLE):
        return {
            "rate": _plot_rate(arrays, cfg, summary),
            "escape": _plot_escape(arrays, cfg, summary["escape"]),
            "escape_map": _plot_escape_map(arrays, cfg),
        }


def _centres_to_edges(v: np.ndarray) -> np.ndarray:
    """Cell edges [n + 1] around n cell centres (for pcolormesh)."""
    v = np.asarray(v, dtype=np.float64)
    mid = (v[1:] + v[:-1]) / 2
    return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])


def animate_balls(arrays: dict, cfg: Config, path: Path, max_frames: int = 120) -> Path:
    """GIF: the GIF balls on x^2 sin x, GD beside heavy ball, coloured by where they end."""
    prob = escape_problem("x2sinx", cfg)
    colour_of = {lab: colors.to_rgba(c) for lab, _, c in OUTCOMES}
    opts = ("sgd", "momentum")
    with plt.style.context(plotting.STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(plotting.FULL, 2.5), dpi=100, layout="constrained")
        try:
            for ax, opt in zip(axes, opts, strict=True):
                labels_G = arrays[f"gif/{opt}/labels_G"]
                plotting.curve_1d(ax, prob["fn"], prob["domain"])
                share = 100 * np.mean(labels_G == 0)
                name = "plain GD" if opt == "sgd" else f"heavy ball β = {cfg.gif_beta:g}"
                ax.set(xlabel="x", ylabel="x² sin x", title=f"{name}: {share:.0f}% end at x = 5.09")
            handles = [Patch(facecolor=c, label=n) for _, n, c in OUTCOMES[:3]]
            axes[0].legend(handles=handles, loc="upper center", title="where a ball ends")
            # As in plotting.animate_paths: the static part is rendered once into a picture;
            # each frame draws only the balls and the counter on bare overlay Axes.
            fig.canvas.draw()
            background = np.asarray(fig.canvas.buffer_rgba()).copy()
            frames = [(ax.get_position(), ax.get_xlim(), ax.get_ylim()) for ax in axes]
            fig.set_layout_engine("none")
            fig.clear()
            fig.figimage(background, origin="upper", zorder=0)
            panels = []
            for (pos, xlim, ylim), opt in zip(frames, opts, strict=True):
                ov = fig.add_axes(pos, zorder=1)
                ov.set_axis_off()
                ov.set(xlim=xlim, ylim=ylim)
                path_GxT = arrays[f"gif/{opt}/path_GxT"]
                f_GxT = np.asarray(jax.vmap(prob["fn"])(path_GxT.reshape(-1, 1)))
                f_GxT = f_GxT.reshape(path_GxT.shape)
                rgba = np.array([colour_of[int(lab)] for lab in arrays[f"gif/{opt}/labels_G"]])
                balls = ov.scatter(
                    path_GxT[:, 0], f_GxT[:, 0], s=16, c=rgba, edgecolors="k", linewidths=0.3
                )
                counter = ov.text(0.03, 0.05, "", transform=ov.transAxes, fontsize=7)
                panels.append((balls, counter, path_GxT, f_GxT))
            idx = plotting.frame_indices(panels[0][2].shape[1], max_frames)

            def update(f):
                s = idx[f]
                for balls, counter, p, fv in panels:
                    balls.set_offsets(np.stack([p[:, s], fv[:, s]], axis=1))
                    counter.set_text(f"step {s}")
                return []

            anim = animation.FuncAnimation(fig, update, frames=len(idx), repeat=False)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".gif")
            os.close(fd)
            try:
                anim.save(tmp, writer=animation.PillowWriter(fps=15), dpi=fig.dpi)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600; figures are meant to be read
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        finally:
            plt.close(fig)
    return path


main = cli.study_main(
    __name__,
    compute,
    plot,
    artifacts=lambda a, c, s, f: animate_balls(a, c, f / "balls.gif"),
)


if __name__ == "__main__":
    main()
