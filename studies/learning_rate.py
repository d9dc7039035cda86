"""Too small, right, too large: what the learning rate does on quadratics and on Himmelblau.

Measured here, each beside its theory: (1) on quadratics 0.5 (x^2 + kappa y^2) (L = kappa),
the final loss of GD against the learning rate and the measured divergence boundary against
2/L; the steps to a gradient tolerance against their exact count, fewest near 2/(mu + L);
the three regimes (too small, 2/(mu + L), too large) and their per-step rates against
max |1 - lr lambda|. (2) Start x lr phase maps on Himmelblau, starts along two lines: which
minimum each start settles at for each lr, "not converged" below (too small) and
"diverged" above (too large), with each minimum's 2 / lambda_max, the lr above which GD can
no longer settle there, drawn across the maps. The lecture's parabola at lr 0.98 is
measured in `studies.descent`, each Himmelblau basin vanishing at its 2 / lambda_max in
`studies.local_minima`, the fractal boundary of trainability in `studies.fractal`.

Run: make learning_rate   (python -m studies.learning_rate; smoke: --quick, 16 s measured,
10 s of it computing, on 2 CPU cores shared with other jobs). Default: 2048 lrs x 3
quadratics of 500 steps and two phase maps of 512 starts x 384 lrs (393,216 Himmelblau runs
of 1000 steps), not run here: well under the ~20 s once measured for them together with a
basin sweep of 2.6 million more runs (gone: `studies.local_minima` measures it).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from matplotlib.patches import Patch

from sandbox import basins, calculus, cli, config, descent, landscapes, plotting, sweep

NAME = "learning_rate"


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the phase maps' starts
    # (1) Quadratics 0.5 (x^2 + kappa y^2): final loss against lr.
    kappas: tuple[float, ...] = config.field((1.0, 4.0, 16.0), 1)  # their condition numbers
    # (lo, hi) of the log-spaced lrs
    quad_lr_range: tuple[float, float] = config.field((1e-3, 3.0), gt=0, increasing=True)
    quad_num_lrs: int = config.count(2048, 2**20)  # lrs per quadratic
    quad_steps: int = config.count(500, 10**6)  # GD steps per run
    quad_start: tuple[float, float] = config.field(
        (1.0, 1.0), rule=(lambda v: any(v), "not the minimum (0, 0)")
    )
    """the runs' start (x, y)"""
    quad_tol: float = config.field(1e-4, gt=0)  # converged: gradient norm below this
    # The three regimes on one quadratic: lr as multiples of 2/L (the middle one is replaced
    # by the optimal constant step 2/(mu + L)).
    regime_kappa: float = config.field(4.0, 1)  # condition number of the regimes' quadratic
    regime_small: float = config.field(0.05, gt=0)  # the small lr, a multiple of 2/L
    regime_large: float = config.field(1.05, gt=0)  # the large lr, a multiple of 2/L
    regime_steps: int = config.count(25, 10**6)  # GD steps of each regime's path
    regime_start: tuple[float, float] = (-1.8, 1.2)  # the regimes' start (x, y)
    # (2) Himmelblau: start x lr phase maps along two lines.
    phase_starts: int = config.count(512, 2**16)  # starts along each line
    phase_num_lrs: int = config.count(384, 2**16)  # lrs of the phase maps
    phase_lr_range: tuple[float, float] = config.field((1e-4, 5e-2), gt=0, increasing=True)
    """(lo, hi) of the phase maps' log-spaced lrs"""
    himmelblau_steps: int = config.count(1000, 10**6)  # GD steps per run on Himmelblau
    himmelblau_tol: float = config.field(1e-2, gt=0)  # reached: this close to a minimum ...
    himmelblau_grad_tol: float = config.field(1e-3, gt=0)  # ... and settled: |grad| below this

    RELATIONS = (
        config.relation(
            "regime_small < 1 < regime_large (multiples of 2/L)",
            lambda c: c.regime_small < 1 < c.regime_large,
        ),
    )


QUICK = Config(
    quad_num_lrs=256, quad_steps=200, phase_starts=64, phase_num_lrs=48, himmelblau_steps=500
)

# Lines of starts of the Himmelblau phase maps: (label, start, end).
PHASE_LINES = (("y0 = 0", (-6.0, 0.0), (6.0, 0.0)), ("x0 = 0", (0.0, -6.0), (0.0, 6.0)))


# ----------------------------------------------------------------------------- helpers


def _steps_to_tol(lr_L: np.ndarray, kappa: float, cfg: Config) -> np.ndarray:
    """Exact updates until |grad| <= tol of GD on 0.5 (x^2 + kappa y^2); -1 if not by then."""
    lr = lr_L.astype(np.float64)
    x0, y0 = cfg.quad_start
    # The gradient's components x and kappa y shrink by 1 - lr and 1 - lr kappa per step.
    a0_Lx2 = np.tile([x0, kappa * y0], (len(lr), 1))
    f_Lx2 = np.stack([1 - lr, 1 - lr * kappa], axis=1)
    return descent.steps_to_tol(a0_Lx2, f_Lx2, cfg.quad_tol, cfg.quad_steps).astype(np.int32)


def _fewest(lr_L: np.ndarray, steps_L: np.ndarray) -> list[float]:
    """[lowest, highest] lr with the fewest steps to tolerance."""
    reached = steps_L >= 0
    fewest = reached & (steps_L == steps_L[reached].min())
    return [float(lr_L[fewest].min()), float(lr_L[fewest].max())]


# ----------------------------------------------------------------------------- compute


def _quadratics(cfg: Config) -> tuple[dict, dict]:
    """Final loss and steps to tolerance against lr on each quadratic 0.5 (x^2 + kappa y^2)."""
    lr_L = np.geomspace(*cfg.quad_lr_range, cfg.quad_num_lrs).astype(np.float32)
    x0_Lx2 = np.tile(np.float32([cfg.quad_start]), (len(lr_L), 1))
    ratio, diverged, brackets = [], [], {}
    steps, steps_theory, best = [], [], {}
    for kappa in cfg.kappas:
        q = landscapes.quadratic(kappa)
        run = sweep.descend(q.fn, x0_Lx2, steps=cfg.quad_steps, lr=lr_L, tol=cfg.quad_tol)
        loss0 = float(q.fn(jnp.float32(cfg.quad_start)))
        r_L = np.where(run.diverged, np.inf, run.loss.astype(np.float64) / loss0)
        ratio.append(r_L)
        diverged.append(run.diverged)
        steps.append(run.steps_to_tol)
        steps_theory.append(_steps_to_tol(lr_L, kappa, cfg))
        # Right: the fewest steps to tolerance. Near 2/(mu + L), where both modes contract by
        # (kappa - 1)/(kappa + 1) per step; exactly where the exact count is least (the
        # stiff mode's larger gradient weighs more, which moves it a little below).
        measured_lrs, theory_lrs = _fewest(lr_L, steps[-1]), _fewest(lr_L, steps_theory[-1])
        best[f"{kappa:g}"] = {
            "measured": measured_lrs,
            "fewest_steps": int(steps[-1][steps[-1] >= 0].min()),
            "theory": theory_lrs,
            "rate_optimal_2_over_mu_plus_L": 2 / (1 + kappa),
        }
        # Converged: the loss went down. Below 2/L every mode contracts; above it the stiff
        # mode grows by |1 - lr L| > 1 per step.
        lo, hi = descent.divergence_bracket(lr_L, r_L < 1)
        brackets[f"{kappa:g}"] = {
            "L": kappa,
            "measured": math.sqrt(lo * hi),
            "bracket": [lo, hi],
            "theory": 2.0 / kappa,
        }
    rel = max(abs(b["measured"] / b["theory"] - 1) for b in brackets.values())
    grid_ratio = float(lr_L[1] / lr_L[0])
    steps_KxL, theory_KxL = np.stack(steps), np.stack(steps_theory)
    both = (steps_KxL >= 0) & (theory_KxL >= 0)
    arrays = {
        "quad_lr_L": lr_L,
        "quad_kappa_K": np.asarray(cfg.kappas, np.float64),
        "quad_ratio_KxL": np.stack(ratio),
        "quad_diverged_KxL": np.stack(diverged),
        "quad_steps_to_tol_KxL": steps_KxL,
        "quad_steps_to_tol_theory_KxL": theory_KxL,
    }
    summary = {
        "divergence_boundary": brackets,
        "divergence_boundary_max_rel_error": {
            "measured": rel,
            "theory": 0.0,
            "note": f"{cfg.quad_num_lrs} log-spaced lrs, neighbours {grid_ratio:.4f}x apart; "
            f"{cfg.quad_steps} steps from {cfg.quad_start}; converged = final loss < initial",
        },
        "steps_to_tol": {
            "max_abs_error_steps": int(np.abs(steps_KxL - theory_KxL)[both].max()),
            "reached_mismatches": int(np.sum((steps_KxL >= 0) != (theory_KxL >= 0))),
            "theory": "first t with |grad| = sqrt(((1 - lr)^t x0)^2 + (kappa (1 - lr kappa)^t "
            f"y0)^2) <= {cfg.quad_tol:g}",
            "best_lr": best,
        },
    }
    return arrays, summary


def _regimes(cfg: Config) -> tuple[dict, dict]:
    """Too small, right (2/(mu + L)), too large on one quadratic: paths and per-step rates."""
    kappa = cfg.regime_kappa
    q = landscapes.quadratic(kappa)
    lrs = {
        "too small": cfg.regime_small * 2 / kappa,
        "right": 2 / (1 + kappa),
        "too large": cfg.regime_large * 2 / kappa,
    }
    run = sweep.descend(
        q.fn,
        np.tile(np.float32([cfg.regime_start]), (3, 1)),
        steps=cfg.regime_steps,
        lr=np.float32(list(lrs.values())),
        record_every=1,
        bound=1e30,
    )
    norm_RxT = np.linalg.norm(run.path.astype(np.float64), axis=-1)
    arrays = {
        "regime_lr_R": np.float64(list(lrs.values())),
        "regime_path_RxTx2": run.path,
        "regime_loss_RxT": run.losses,
    }
    regimes = {
        name: {
            "lr": lr,
            "lr_over_2_over_L": lr * kappa / 2,
            # The slowest mode sets the long-run rate: max_i |1 - lr lambda_i|.
            "rate_per_step": {
                "measured": descent.geometric_rate(norm_RxT[r], from_half=True),
                "theory": max(abs(1 - lr), abs(1 - lr * kappa)),
            },
        }
        for r, (name, lr) in enumerate(lrs.items())
    }
    return arrays, {"regimes": regimes | {"kappa": kappa}}


def _labels(run: sweep.Sweep, minima: np.ndarray, cfg: Config) -> np.ndarray:
    """Index of the minimum each run settled at; -1 not converged, -2 diverged.

    Near a minimum and with a small gradient: above lr = 2 / lambda_max a run can end
    bouncing on a 2-cycle around the minimum, near it but not converging.
    """
    labels = basins.classify(run.x, minima, cfg.himmelblau_tol, run.diverged)
    labels[(labels >= 0) & ~(run.grad_norm <= cfg.himmelblau_grad_tol)] = basins.NOT_CONVERGED
    return labels


def _himmelblau(cfg: Config) -> tuple[dict, dict]:
    """Start x lr phase maps: W starts along each line of PHASE_LINES, H lrs."""
    h = landscapes.get("himmelblau")
    with jax.enable_x64(True):
        lam_max_k = np.array(
            [float(calculus.hessian_eigenvalues(h.fn, jnp.asarray(m))[-1]) for m in h.minima]
        )
    lr_H = np.geomspace(*cfg.phase_lr_range, cfg.phase_num_lrs).astype(np.float32)
    t = np.linspace(0.0, 1.0, cfg.phase_starts)
    phase = []
    for _, a, b in PHASE_LINES:
        starts_Wx2 = (np.float64(a) + t[:, None] * (np.float64(b) - np.float64(a))).astype(
            np.float32
        )
        x0 = np.tile(starts_Wx2, (len(lr_H), 1))
        run = sweep.descend(
            h.fn, x0, lr=np.repeat(lr_H, len(starts_Wx2)), steps=cfg.himmelblau_steps
        )
        labels = _labels(run, h.minima, cfg)
        phase.append(labels.reshape(len(lr_H), len(starts_Wx2)).astype(np.int8))
    labels_AxHxW = np.stack(phase)
    arrays = {
        "phase_lr_H": lr_H,
        "phase_t_W": t,
        "phase_labels_AxHxW": labels_AxHxW,
        "lambda_max_k": lam_max_k,
    }
    summary = {
        "himmelblau_phase": {
            "stable_below_2_over_lambda_max": {
                f"({m[0]:.3f}, {m[1]:.3f})": {
                    "lambda_max": float(lam),
                    "theory_2_over_lambda_max": float(2 / lam),
                }
                for m, lam in zip(h.minima, lam_max_k, strict=True)
            },
            "not_converged_at_smallest_lr": float(np.mean(labels_AxHxW[:, 0] == -1)),
            "diverged_at_largest_lr": float(np.mean(labels_AxHxW[:, -1] == -2)),
            "minima_reached": sorted({int(v) for v in np.unique(labels_AxHxW) if v >= 0}),
            "note": f"GD {cfg.himmelblau_steps} steps, reached = within "
            f"{cfg.himmelblau_tol:g} of the minimum with |grad| <= {cfg.himmelblau_grad_tol:g}; "
            "a minimum is a stable fixed point of GD iff lr < 2 / lambda_max there",
        }
    }
    return arrays, summary


def compute(cfg: Config) -> tuple[dict, dict]:
    arrays, summary = {}, {}
    for part in (_quadratics(cfg), _regimes(cfg), _himmelblau(cfg)):
        arrays |= part[0]
        summary |= part[1]
    return arrays, summary


# ----------------------------------------------------------------------------- plot


def _quadratics_figure(arrays: dict, cfg: Config, summary: dict):
    """Final loss and steps to tolerance against lr on each quadratic."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.9), layout="constrained")
    lr_L = arrays["quad_lr_L"]
    for c, kappa in enumerate(arrays["quad_kappa_K"]):
        b = summary["divergence_boundary"][f"{kappa:g}"]
        r_L = arrays["quad_ratio_KxL"][c]
        shown = np.clip(np.where(np.isfinite(r_L), r_L, 1e8), 1e-12, 1e8)
        ax.loglog(lr_L, shown, color=f"C{c}", lw=1, label=f"κ = L = {kappa:g}")
        ax.axvline(b["theory"], color=f"C{c}", ls="--", lw=0.8)
        ax.plot(b["measured"], 1.0, "o", color=f"C{c}", mec="k", ms=5, zorder=5)
        n_L = arrays["quad_steps_to_tol_KxL"][c].astype(float)
        th_L = arrays["quad_steps_to_tol_theory_KxL"][c].astype(float)
        ax2.loglog(lr_L, np.where(n_L >= 0, np.maximum(n_L, 0.8), np.nan), color=f"C{c}")
        ax2.loglog(lr_L, np.where(th_L >= 0, np.maximum(th_L, 0.8), np.nan), "k:", lw=0.8)
        ax2.axvline(b["theory"], color=f"C{c}", ls="--", lw=0.8)
        best = summary["steps_to_tol"]["best_lr"][f"{kappa:g}"]
        lr_best = math.sqrt(best["measured"][0] * best["measured"][1])
        ax2.plot(lr_best, best["fewest_steps"], "v", color=f"C{c}", mec="k", ms=5)
    ax.axhline(1.0, color="0.5", lw=0.6)
    ax.set_ylim(1e-12, 1e8)
    ax.set(
        xlabel="learning rate (log scale)",
        ylabel="final / initial loss (log, clipped)",
        title=f"after {cfg.quad_steps} steps; dots: measured boundary",
    )
    ax.legend(loc="upper left")
    ax2.set(
        xlabel="learning rate (log scale)",
        ylabel=f"steps to |∇f| ≤ {cfg.quad_tol:g} (log)",
        title="too small · right (▼ fewest) · too large",
    )
    ax2.plot([], [], "k:", lw=0.8, label="theory (exact)")
    ax2.plot([], [], "k--", lw=0.8, label="2/L")
    ax2.legend(loc="lower left")
    fig.suptitle("GD on 0.5 (x² + κ y²): the learning rate against L = κ", fontsize=9)
    return fig


def _regimes_figure(arrays: dict, cfg: Config, summary: dict):
    """The three regimes on one quadratic: their paths and loss curves."""
    q = landscapes.quadratic(cfg.regime_kappa)
    fig, axes = plt.subplots(1, 4, figsize=(plotting.FULL, 2.2), layout="constrained")
    reg = summary["regimes"]
    names = ("too small", "right", "too large")
    for r, (ax, name) in enumerate(zip(axes[:3], names, strict=True)):
        plotting.contour_paths(ax, q.fn, q.bounds, paths=arrays["regime_path_RxTx2"][r : r + 1])
        ax.set_aspect("equal")
        ax.set(xlabel="x", ylabel="y" if r == 0 else "")
        ax.set_title(f"{name}: lr = {reg[name]['lr']:.3g}", fontsize=8)
    steps_T = np.arange(arrays["regime_loss_RxT"].shape[1])
    plotting.loss_curves(
        axes[3],
        steps_T,
        arrays["regime_loss_RxT"],
        labels=[f"{n} ({reg[n]['rate_per_step']['measured']:.2f}/step)" for n in names],
    )
    axes[3].set_title(f"κ = {cfg.regime_kappa:g}, 2/L = {2 / cfg.regime_kappa:.3g}", fontsize=8)
    axes[3].legend(fontsize=6)
    return fig


def _phase_figure(arrays: dict, cfg: Config):
    """Himmelblau start x lr phase maps, each minimum's 2 / lambda_max across them."""
    h = landscapes.get("himmelblau")
    k = len(h.minima)
    lr_H = arrays["phase_lr_H"]
    t_W = arrays["phase_t_W"]
    lam = arrays["lambda_max_k"]
    palette = plotting.basin_palette(k)
    table = np.concatenate([[plotting.DIVERGED_COLOR, plotting.NOT_CONVERGED_COLOR], palette])
    cmap = colors.ListedColormap(table)
    norm = colors.BoundaryNorm(np.arange(-2.5, k), cmap.N)
    fig, axes = plt.subplots(1, 2, figsize=(plotting.FULL, 2.9), layout="constrained")
    for a, (ax, (label, start, end)) in enumerate(zip(axes, PHASE_LINES, strict=True)):
        coord = 0 if start[0] != end[0] else 1
        s_W = start[coord] + t_W * (end[coord] - start[coord])
        ax.pcolormesh(
            *np.meshgrid(_edges(s_W), _edges(lr_H, log=True)),
            arrays["phase_labels_AxHxW"][a],
            cmap=cmap,
            norm=norm,
        )
        ax.set_yscale("log")
        ax.grid(False)
        for i in range(k):
            ax.axhline(2 / lam[i], color=palette[i], ls="--", lw=0.9)
        ax.set(
            xlabel=f"start {'x0' if coord == 0 else 'y0'} (on the line {label})",
            ylabel="learning rate (log scale)" if a == 0 else "",
            title=f"starts on {label} × lr; dashed: 2 / λ_max",
        )
    handles = [
        Patch(color=palette[i], label=f"({m[0]:.2f}, {m[1]:.2f})") for i, m in enumerate(h.minima)
    ]
    handles += [
        Patch(color=plotting.NOT_CONVERGED_COLOR, label="not converged (too small)"),
        Patch(color=plotting.DIVERGED_COLOR, label="diverged (too large)"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=6)
    fig.suptitle(
        f"Himmelblau, GD {cfg.himmelblau_steps} steps: which minimum each start reaches",
        fontsize=9,
    )
    return fig


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    with plt.style.context(plotting.STYLE):
        return {
            "quadratic_lr": _quadratics_figure(arrays, cfg, summary),
            "regimes": _regimes_figure(arrays, cfg, summary),
            "himmelblau_phase": _phase_figure(arrays, cfg),
        }


def _edges(v: np.ndarray, log: bool = False) -> np.ndarray:
    v = np.log10(np.asarray(v, np.float64)) if log else np.asarray(v, np.float64)
    mid = (v[1:] + v[:-1]) / 2
    e = np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])
    return 10**e if log else e


# ----------------------------------------------------------------------------- main


main = cli.study_main(__name__, compute, plot)


if __name__ == "__main__":
    main()
