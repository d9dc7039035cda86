"""Too small, right, too large: what the learning rate does, from a parabola to a fractal.

Measured here, each beside its theory: (1) on quadratics 0.5 (x^2 + kappa y^2) (L = kappa),
the final loss of GD against the learning rate and the measured divergence boundary against
2/L; the steps to a gradient tolerance against their exact count, fewest near 2/(mu + L);
the three regimes (too small, 2/(mu + L), too large) and their per-step rates against
max |1 - lr lambda|. (2) The lecture's parabola x^2 at lr 0.98: it oscillates, x_t+1 / x_t =
1 - 2 lr = -0.96. (3) Start x lr phase maps on Himmelblau (which minimum each start reaches
at each lr) and the lr at which each minimum stops attracting against 2 / lambda_max there.
(4) The fractal boundary of trainability (Sohl-Dickstein 2024): a one-hidden-layer tanh
network (`sandbox.fractal`, as many data points as weights) trained by full-batch GD with
one learning rate per layer, in float64, over a log-spaced (lr1, lr2) grid, each run scored
converged (> 0, its speed) or diverged (< 0); three zooms that recompute the grid on
smaller windows centred on a boundary point; the box-counting dimension of the boundary at
every level, with its fit range (the paper: 1.17 to 1.98 over its settings).

Run: make learning_rate   (python -m studies.learning_rate; smoke: --quick, about 15 s).
Default: width 8, a 512 x 512 grid of 500-step runs plus three 160 x 160 zooms: 355
CPU-seconds, about 3 minutes on a 2-core CPU to itself (4 to 5.5 minutes measured while
other jobs shared the two cores); the fractal grids are nearly all of it, the rest ~20 s.
`--scale paper`: width 16 and four 1024 x 1024 grids of 1000 steps, about 400 times the
default's work (~15 hours on a 2-core CPU): the setting for an accelerator.
"""

import argparse
import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import MaxNLocator

from sandbox import basins, calculus, fractal, landscapes, plotting, results, sweep

NAME = "learning_rate"


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    # (1) Quadratics 0.5 (x^2 + kappa y^2): final loss against lr.
    kappas: tuple[float, ...] = (1.0, 4.0, 16.0)
    quad_lr_range: tuple[float, float] = (1e-3, 3.0)
    quad_num_lrs: int = 2048
    quad_steps: int = 500
    quad_start: tuple[float, float] = (1.0, 1.0)
    quad_tol: float = 1e-4  # gradient norm that counts as converged, for steps to tolerance
    # The three regimes on one quadratic: lr as multiples of 2/L (the middle one is replaced
    # by the optimal constant step 2/(mu + L)).
    regime_kappa: float = 4.0
    regime_small: float = 0.05
    regime_large: float = 1.05
    regime_steps: int = 25
    regime_start: tuple[float, float] = (-1.8, 1.2)
    # (2) The lecture's parabola x^2.
    parabola_lr: float = 0.98
    parabola_steps: int = 30
    # (3) Himmelblau: start x lr phase maps along two lines, and basin shares vs lr.
    phase_starts: int = 512
    phase_num_lrs: int = 384
    phase_lr_range: tuple[float, float] = (1e-4, 5e-2)
    basin_grid_n: int = 128
    basin_num_lrs: int = 160
    basin_lr_range: tuple[float, float] = (1e-3, 4e-2)
    himmelblau_steps: int = 1000
    himmelblau_tol: float = 1e-2  # reached: this close to a minimum ...
    himmelblau_grad_tol: float = 1e-3  # ... and settled there (a 2-cycle around it is not)
    # (4) The fractal: per-layer learning rates of a tanh MLP, float64.
    width: int = 8
    steps: int = 500
    grid_n: int = 512
    log10_lr1: tuple[float, float] = (-1.0, 7.0)
    log10_lr2: tuple[float, float] = (0.0, 3.0)
    zoom_levels: int = 3
    zoom_grid_n: int = 160
    zoom_target: tuple[float, float] = (1.0, 1.71)  # (log10 lr1, log10 lr2) to zoom near
    zoom_half_width: float = 0.1  # decades, first zoom; each next one zoom_factor smaller
    zoom_factor: float = 8.0
    box_sizes: tuple[int, ...] = (2, 4, 8, 16)  # pixels: the fit range
    # Runs vmapped together by lax.map, per device: small enough that a batch whose runs
    # all blew up early stops early (`fractal.train`), large enough to vectorize.
    batch_size: int = 64

    def __post_init__(self):
        for name in (
            "quad_num_lrs",
            "quad_steps",
            "regime_steps",
            "parabola_steps",
            "phase_starts",
            "phase_num_lrs",
            "basin_num_lrs",
            "himmelblau_steps",
            "width",
            "batch_size",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}")
        for name, lowest in (("basin_grid_n", 2), ("grid_n", 8), ("zoom_grid_n", 8)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lowest:
                raise ValueError(f"`{name}` must be an integer >= {lowest}, got {v!r}")
        if (
            isinstance(self.steps, bool)
            or not isinstance(self.steps, int)
            or self.steps < fractal.WINDOW
        ):
            raise ValueError(
                f"`steps` must be an integer >= {fractal.WINDOW} (the score's window), "
                f"got {self.steps!r}"
            )
        if not isinstance(self.zoom_levels, int) or self.zoom_levels < 0:
            raise ValueError(f"`zoom_levels` must be an integer >= 0, got {self.zoom_levels!r}")
        if not self.kappas or not all(math.isfinite(k) and k >= 1 for k in self.kappas):
            raise ValueError(f"`kappas` must be finite numbers >= 1, got {self.kappas}")
        for name in (
            "regime_kappa",
            "regime_small",
            "regime_large",
            "parabola_lr",
            "himmelblau_tol",
            "himmelblau_grad_tol",
            "quad_tol",
            "zoom_half_width",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"`{name}` must be a positive finite number, got {v!r}")
        if self.regime_kappa < 1:
            raise ValueError(f"`regime_kappa` must be >= 1, got {self.regime_kappa}")
        if not self.regime_small < 1 < self.regime_large:
            raise ValueError(
                f"`regime_small` must be < 1 < `regime_large` (multiples of 2/L), "
                f"got {self.regime_small}, {self.regime_large}"
            )
        if not (math.isfinite(self.zoom_factor) and self.zoom_factor > 1):
            raise ValueError(f"`zoom_factor` must be a finite number > 1, got {self.zoom_factor}")
        for name in ("quad_lr_range", "phase_lr_range", "basin_lr_range"):
            lo, hi = getattr(self, name)
            if not (0 < lo < hi and math.isfinite(hi)):
                raise ValueError(f"`{name}` must be (lo, hi) with 0 < lo < hi, got {(lo, hi)}")
        for name in ("log10_lr1", "log10_lr2"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"`{name}` must be (lo, hi) with lo < hi, got {(lo, hi)}")
        for name in ("quad_start", "regime_start", "zoom_target"):
            v = getattr(self, name)
            if len(v) != 2 or not all(math.isfinite(c) for c in v):
                raise ValueError(f"`{name}` must be two finite numbers, got {v}")
        if not any(self.quad_start):
            raise ValueError("`quad_start` must not be the minimum (0, 0)")
        n_min = min(self.grid_n, self.zoom_grid_n)
        if (
            len(self.box_sizes) < 2
            or len(set(self.box_sizes)) != len(self.box_sizes)
            or not all(isinstance(s, int) and 1 <= s <= n_min // 2 for s in self.box_sizes)
        ):
            raise ValueError(
                f"`box_sizes` must be >= 2 distinct integers in [1, {n_min // 2}] "
                f"(half the smallest grid), got {self.box_sizes}"
            )


QUICK = Config(
    quad_num_lrs=256,
    quad_steps=200,
    phase_starts=64,
    phase_num_lrs=48,
    basin_grid_n=24,
    basin_num_lrs=40,
    himmelblau_steps=500,
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

# Lines of starts of the Himmelblau phase maps: (label, start, end).
PHASE_LINES = (("y0 = 0", (-6.0, 0.0), (6.0, 0.0)), ("x0 = 0", (0.0, -6.0), (0.0, 6.0)))


# ----------------------------------------------------------------------------- helpers


def _bracket(lr_L: np.ndarray, ok_L: np.ndarray) -> tuple[float, float]:
    """(largest lr with ok, the next lr of the grid above it); nan where there is none."""
    if not ok_L.any():
        return float("nan"), float(lr_L[0])
    i = int(np.flatnonzero(ok_L).max())
    return float(lr_L[i]), float(lr_L[i + 1]) if i + 1 < len(lr_L) else float("nan")


def _steps_to_tol(lr_L: np.ndarray, kappa: float, cfg: Config) -> np.ndarray:
    """Exact updates until |grad| <= tol of GD on 0.5 (x^2 + kappa y^2); -1 if not by then."""
    t = np.arange(cfg.quad_steps + 1)
    lr = lr_L.astype(np.float64)[:, None]
    x0, y0 = cfg.quad_start
    with np.errstate(over="ignore"):  # modes that grow: inf is "not reached", as it should
        g2 = ((1 - lr) ** t * x0) ** 2 + (kappa * (1 - lr * kappa) ** t * y0) ** 2
    ok = g2 <= cfg.quad_tol**2
    return np.where(ok.any(axis=1), ok.argmax(axis=1), -1).astype(np.int32)


def _fewest(lr_L: np.ndarray, steps_L: np.ndarray) -> list[float]:
    """[lowest, highest] lr with the fewest steps to tolerance."""
    reached = steps_L >= 0
    fewest = reached & (steps_L == steps_L[reached].min())
    return [float(lr_L[fewest].min()), float(lr_L[fewest].max())]


def _rate(norm_T: np.ndarray) -> float:
    """Geometric-mean ratio |x_t+1| / |x_t| over the second half of a path.

    The second half, once the fast modes have died out: the slowest mode sets the rate.
    """
    ok = (norm_T > 1e-30) & np.isfinite(norm_T)
    n = int(np.argmin(ok)) if not ok.all() else len(norm_T)
    if n < 3:
        return 0.0
    a = (n - 1) // 2
    return float((norm_T[n - 1] / norm_T[a]) ** (1.0 / (n - 1 - a)))


def _local_mean(a_HxW: np.ndarray, r: int) -> np.ndarray:
    """Mean of a over the (2r + 1)^2 window around each pixel (edges repeated)."""
    k = 2 * r + 1
    c = np.pad(a_HxW.astype(np.float64), r, mode="edge").cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))  # c[i, j]: sum over the padded image's [:i, :j]
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def _zoom_centre(trainable_HxW, lim1, lim2, target, radius_px, half_px) -> tuple[float, float]:
    """(log10 lr1, log10 lr2) of the next zoom's centre: a boundary pixel near `target`.

    The boundary pixel nearest `target` whose surrounding window of the next zoom's size
    (half-width `half_px`) is 20% to 80% trainable, so that the zoom shows both sides; if
    none within `radius_px` is, the most evenly split one there (or the nearest pixel).
    """
    h, w = trainable_HxW.shape
    ii, jj = np.nonzero(fractal.boundary(trainable_HxW))
    if ii.size == 0:
        raise ValueError(
            "the fractal grid has no boundary (all runs trainable or all diverged); "
            "widen `log10_lr1` / `log10_lr2`"
        )
    ti = (target[1] - lim2[0]) / (lim2[1] - lim2[0]) * (h - 1)
    tj = (target[0] - lim1[0]) / (lim1[1] - lim1[0]) * (w - 1)
    dist = np.hypot(ii - ti, jj - tj)
    near = dist <= max(radius_px, dist.min())
    frac = _local_mean(trainable_HxW, max(1, round(half_px)))[ii, jj]
    balance = np.where(near, np.minimum(frac, 1 - frac), -1.0)
    mixed = balance >= 0.2
    k = int(np.argmin(np.where(mixed, dist, np.inf))) if mixed.any() else int(np.argmax(balance))
    c1 = lim1[0] + jj[k] * (lim1[1] - lim1[0]) / (w - 1)
    c2 = lim2[0] + ii[k] * (lim2[1] - lim2[0]) / (h - 1)
    return float(c1), float(c2)


def _pixel_decades(lim: tuple[float, float], n: int) -> float:
    return (lim[1] - lim[0]) / (n - 1)


# ----------------------------------------------------------------------------- compute


def _quadratics(cfg: Config) -> tuple[dict, dict]:
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
        lo, hi = _bracket(lr_L, r_L < 1)
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

    # The three regimes on one quadratic.
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
    arrays |= {
        "regime_lr_R": np.float64(list(lrs.values())),
        "regime_path_RxTx2": run.path,
        "regime_loss_RxT": run.losses,
    }
    summary["regimes"] = {
        name: {
            "lr": lr,
            "lr_over_2_over_L": lr * kappa / 2,
            # The slowest mode sets the long-run rate: max_i |1 - lr lambda_i|.
            "rate_per_step": {
                "measured": _rate(norm_RxT[r]),
                "theory": max(abs(1 - lr), abs(1 - lr * kappa)),
            },
        }
        for r, (name, lr) in enumerate(lrs.items())
    }
    summary["regimes"]["kappa"] = kappa
    return arrays, summary


def _parabola(cfg: Config) -> tuple[dict, dict]:
    par = sweep.descend(
        lambda x: x[0] ** 2,
        np.float32([[1.0]]),
        steps=cfg.parabola_steps,
        lr=cfg.parabola_lr,
        record_every=1,
    )
    x_T = par.path[0, :, 0].astype(np.float64)
    ratio_T = x_T[1:] / x_T[:-1]
    arrays = {"parabola_path_T": par.path[0, :, 0]}
    summary = {
        "parabola": {
            "lr": cfg.parabola_lr,
            "ratio_per_step": {
                "measured": float(np.median(ratio_T)),
                "max_abs_deviation": float(np.max(np.abs(ratio_T - (1 - 2 * cfg.parabola_lr)))),
                "theory": 1 - 2 * cfg.parabola_lr,
            },
            "oscillates": bool(np.all(np.sign(x_T[1:]) == -np.sign(x_T[:-1]))),
            "final_x": float(x_T[-1]),
        }
    }
    return arrays, summary


def _labels(run: sweep.Sweep, minima: np.ndarray, cfg: Config) -> np.ndarray:
    """Index of the minimum each run settled at; -1 not converged, -2 diverged.

    Near a minimum and with a small gradient: above lr = 2 / lambda_max a run can end
    bouncing on a 2-cycle around the minimum, near it but not converging.
    """
    labels = basins.classify(run.x, minima, cfg.himmelblau_tol, run.diverged)
    labels[(labels >= 0) & ~(run.grad_norm <= cfg.himmelblau_grad_tol)] = basins.NOT_CONVERGED
    return labels


def _himmelblau(cfg: Config) -> tuple[dict, dict]:
    h = landscapes.get("himmelblau")
    minima = h.minima
    k = len(minima)
    with jax.enable_x64(True):
        lam_max_k = np.array(
            [float(calculus.hessian_eigenvalues(h.fn, jnp.asarray(m))[-1]) for m in minima]
        )
    kw = dict(steps=cfg.himmelblau_steps)

    # Start x lr phase maps: W starts along a line, H lrs.
    lr_H = np.geomspace(*cfg.phase_lr_range, cfg.phase_num_lrs).astype(np.float32)
    t = np.linspace(0.0, 1.0, cfg.phase_starts)
    phase = []
    for _, a, b in PHASE_LINES:
        starts_Wx2 = (np.float64(a) + t[:, None] * (np.float64(b) - np.float64(a))).astype(
            np.float32
        )
        x0 = np.tile(starts_Wx2, (len(lr_H), 1))
        run = sweep.descend(h.fn, x0, lr=np.repeat(lr_H, len(starts_Wx2)), **kw)
        labels = _labels(run, minima, cfg)
        phase.append(labels.reshape(len(lr_H), len(starts_Wx2)).astype(np.int8))

    # Shares of a grid of starts reaching each minimum, against lr.
    lr_B = np.geomspace(*cfg.basin_lr_range, cfg.basin_num_lrs).astype(np.float32)
    starts_Gx2 = sweep.grid(h.bounds, cfg.basin_grid_n)
    g = len(starts_Gx2)
    run = sweep.descend(h.fn, np.tile(starts_Gx2, (len(lr_B), 1)), lr=np.repeat(lr_B, g), **kw)
    labels_BxG = _labels(run, minima, cfg).reshape(-1, g)
    shares_BxC = np.stack([basins.fractions(row, k) for row in labels_BxG])

    vanish = {}
    for i, m in enumerate(minima):
        lo, hi = _bracket(lr_B, shares_BxC[:, i] > 0)
        vanish[f"({m[0]:.3f}, {m[1]:.3f})"] = {
            "lambda_max": float(lam_max_k[i]),
            "measured": math.sqrt(lo * hi) if hi == hi else lo,
            "bracket": [lo, hi],
            "theory": float(2 / lam_max_k[i]),
        }
    arrays = {
        "phase_lr_H": lr_H,
        "phase_t_W": t,
        "phase_labels_AxHxW": np.stack(phase),
        "basin_lr_B": lr_B,
        "basin_shares_BxC": shares_BxC,
        "lambda_max_k": lam_max_k,
    }
    summary = {
        "himmelblau_last_lr_reaching_minimum": vanish,
        "himmelblau_note": f"GD {cfg.himmelblau_steps} steps, reached = within "
        f"{cfg.himmelblau_tol:g} of the minimum with |grad| <= {cfg.himmelblau_grad_tol:g}; "
        f"{cfg.basin_grid_n}^2 starts x "
        f"{cfg.basin_num_lrs} lrs; a minimum is a stable fixed point of GD iff "
        "lr < 2 / lambda_max there",
    }
    return arrays, summary


def _fractal(cfg: Config, key: jax.Array) -> tuple[dict, dict]:
    with jax.enable_x64(True):
        params, data = fractal.problem(key, cfg.width)
        run = functools.partial(fractal.score_grid, steps=cfg.steps, batch_size=cfg.batch_size)
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
            half_px = hw / _pixel_decades(lims[level][1], n)
            radius_px = half_px if level == 0 else n / 4
            c1, c2 = _zoom_centre(s_HxW > 0, *lims[level], target, radius_px, half_px)
            lims.append(((c1 - hw, c1 + hw), (c2 - hw, c2 + hw)))
            sizes.append(cfg.zoom_grid_n)
            target = (c1, c2)

        # Two neighbouring pixels across the boundary of the deepest view: their curves.
        deep = scores[-1]
        (a1, b1), (a2, b2) = lims[-1]
        n = sizes[-1]
        bi, bj = np.nonzero(fractal.boundary(deep > 0) & (deep > 0))
        if bi.size == 0:
            raise ValueError(
                "the deepest zoom has no boundary (all runs trainable or all diverged); "
                "try another `zoom_target` or a smaller `zoom_factor`"
            )
        centre = (n - 1) / 2
        k = int(np.argmin((bi - centre) ** 2 + (bj - centre) ** 2))
        i, j = int(bi[k]), int(bj[k])
        nbrs = [(i + di, j + dj) for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0))]
        ni, nj = next((p, q) for p, q in nbrs if 0 <= p < n and 0 <= q < n and deep[p, q] < 0)
        l1 = np.logspace(a1, b1, n)
        l2 = np.logspace(a2, b2, n)
        pairs = np.array([[l1[j], l2[i]], [l1[nj], l2[ni]]])
        curves = jax.jit(
            jax.vmap(lambda lr: fractal.losses(params, data, lr[0], lr[1], cfg.steps))
        )(jnp.asarray(pairs))
        pair_scores = [float(fractal.score(c)) for c in curves]
        curves = np.asarray(curves, np.float64)

    levels = []
    for level, (s_HxW, lim, n) in enumerate(zip(scores, lims, sizes, strict=True)):
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
            px1, px2 = _pixel_decades(lim[0], n), _pixel_decades(lim[1], n)
            entry |= {
                "dimension": dim,
                "fit_range_px": [int(fit.sizes[0]), int(fit.sizes[-1])],
                "fit_range_decades_lr1": [float(fit.sizes[0] * px1), float(fit.sizes[-1] * px1)],
                "fit_range_decades_lr2": [float(fit.sizes[0] * px2), float(fit.sizes[-1] * px2)],
                "fit_rms_residual_ln": fit.residual,
                "box_counts": fit.counts.tolist(),
            }
        levels.append(entry)
    dims = [e["dimension"] for e in levels if "dimension" in e]
    zoom_dims = dims[1:]
    arrays = {f"fractal_score_{lv}_HxW": s.astype(np.float32) for lv, s in enumerate(scores)}
    arrays |= {
        "fractal_window_Vx2x2": np.asarray(lims, np.float64),
        "fractal_pair_2x2": pairs,
        "fractal_pair_loss_2xT": curves,
    }
    summary = {
        "fractal": {
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
        "fractal_neighbours": {
            "lr_pairs": pairs.tolist(),
            "relative_distance": float(np.max(np.abs(pairs[0] / pairs[1] - 1))),
            "scores": pair_scores,
            "final_loss_ratio": [
                float(c[-1] / c[0]) if np.isfinite(c[-1]) else float("inf") for c in curves
            ],
        },
    }
    return arrays, summary


def compute(cfg: Config) -> tuple[dict, dict]:
    key = jax.random.key(cfg.seed)
    arrays, summary = {}, {}
    for part in (_quadratics(cfg), _parabola(cfg), _himmelblau(cfg), _fractal(cfg, key)):
        arrays |= part[0]
        summary |= part[1]
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


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    figs = {}
    with plt.style.context(plotting.STYLE):
        # (1) Final loss and steps to tolerance against lr on quadratics.
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
        figs["quadratic_lr"] = fig

        # The three regimes on one quadratic.
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
        figs["regimes"] = fig

        # (2) The parabola at lr 0.98.
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.6), layout="constrained")
        par_T = arrays["parabola_path_T"].astype(np.float64)
        plotting.curve_1d(ax1, lambda x: x[0] ** 2, (-1.1, 1.1), path_T=par_T)
        ax1.set(xlabel="x", ylabel="f(x) = x²", title=f"lr {cfg.parabola_lr:g}: bouncing across")
        t = np.arange(len(par_T))
        rho = 1 - 2 * cfg.parabola_lr
        ax2.plot(t, np.abs(rho) ** t, "k--", lw=0.8, label=f"±|1 − 2 lr|^t = ±{abs(rho):.2f}^t")
        ax2.plot(t, -(np.abs(rho) ** t), "k--", lw=0.8)
        ax2.plot(t, par_T, "o-", color="C3", ms=3, lw=0.8, label="x_t")
        ax2.axhline(0, color="0.5", lw=0.6)
        m = summary["parabola"]["ratio_per_step"]["measured"]
        ax2.set(xlabel="step t", ylabel="x_t", title=f"x_t+1 / x_t = {m:.4f} (theory {rho:.2f})")
        ax2.legend(loc="upper right")
        figs["parabola"] = fig

        # (3) Himmelblau: start x lr phase maps and basin shares.
        h = landscapes.get("himmelblau")
        k = len(h.minima)
        lr_H = arrays["phase_lr_H"]
        t_W = arrays["phase_t_W"]
        palette = plotting.basin_palette(k)
        table = np.concatenate([[plotting.DIVERGED_COLOR, plotting.NOT_CONVERGED_COLOR], palette])
        cmap = colors.ListedColormap(table)
        norm = colors.BoundaryNorm(np.arange(-2.5, k), cmap.N)
        fig, axes = plt.subplots(1, 3, figsize=(plotting.FULL, 2.9), layout="constrained")
        lam = arrays["lambda_max_k"]
        for a, (ax, (label, start, end)) in enumerate(zip(axes[:2], PHASE_LINES, strict=True)):
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
                title=f"starts on {label} × lr",
            )
        ax = axes[2]
        lr_B = arrays["basin_lr_B"]
        shares = arrays["basin_shares_BxC"]
        for i in range(k):
            ax.semilogx(lr_B, shares[:, i], color=palette[i])
            ax.axvline(2 / lam[i], color=palette[i], ls="--", lw=0.9)
        ax.semilogx(lr_B, shares[:, k], color="0.6")
        ax.semilogx(lr_B, shares[:, k + 1], color="k")
        ax.set(
            xlabel="learning rate (log scale)",
            ylabel="share of a grid of starts",
            title="shares; dashed: 2 / λ_max per minimum",
        )
        handles = [
            Patch(color=palette[i], label=f"({m[0]:.2f}, {m[1]:.2f})")
            for i, m in enumerate(h.minima)
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
        figs["himmelblau_phase"] = fig

        # (4) The fractal: full view and zooms.
        lims = arrays["fractal_window_Vx2x2"]
        nv = len(lims)
        ncols = 2 if nv > 1 else 1
        nrows = -(-nv // ncols)
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(plotting.FULL, 3.0 * nrows + 0.4),
            layout="constrained",
            squeeze=False,
        )
        levels = summary["fractal"]["levels"]
        for v in range(nv):
            ax = axes.flat[v]
            e = levels[v]
            dim = f", dim {e['dimension']:.2f}" if "dimension" in e else ""
            span = lims[v][1][1] - lims[v][1][0]
            mag = (lims[0][1][1] - lims[0][1][0]) / span
            title = "full view" if v == 0 else f"zoom {v}: {span:.2g} decades ({mag:.0f}x)"
            image = _fractal_image(ax, arrays[f"fractal_score_{v}_HxW"], lims[v], title=title + dim)
            ax.title.set_fontsize(8)
            if v + 1 < nv:
                (a1, b1), (a2, b2) = lims[v + 1]
                ax.add_patch(
                    Rectangle((a1, a2), b1 - a1, b2 - a2, fill=False, ec="k", lw=1.2, zorder=4)
                )
                if v == 0:  # a marker too: the first zoom window is small in the full view
                    ax.plot((a1 + b1) / 2, (a2 + b2) / 2, "k+", ms=10, mew=1.2, zorder=4)
        for ax in axes.flat[nv:]:
            ax.set_axis_off()
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
        figs["fractal"] = fig

        # Box counting at every level, and the two neighbouring runs of the deepest zoom.
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
        for v, e in enumerate(levels):
            if "dimension" not in e:
                continue
            sizes = np.asarray(cfg.box_sizes, dtype=float)
            sizes.sort()
            counts = np.asarray(e["box_counts"], dtype=float)
            ax1.loglog(sizes, counts, "o", color=f"C{v}", ms=4)
            slope, icpt = np.polyfit(np.log(sizes), np.log(counts), 1)
            ax1.loglog(
                sizes,
                np.exp(icpt) * sizes**slope,
                "-",
                color=f"C{v}",
                lw=0.9,
                label=f"{'full' if v == 0 else f'zoom {v}'}: dim {e['dimension']:.2f}",
            )
        bd = summary["boundary_dimension"]
        ax1.set(
            xlabel="box edge s (pixels, log)",
            ylabel="boxes N(s) on the boundary (log)",
            title=f"box counting: median dim {bd['measured']:.2f} (paper 1.17–1.98)",
        )
        ax1.title.set_fontsize(8)
        ax1.legend()
        ax1.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax1.minorticks_off()
        pairs = arrays["fractal_pair_2x2"]
        curves = arrays["fractal_pair_loss_2xT"]
        steps_T = np.arange(curves.shape[1])
        rel = summary["fractal_neighbours"]["relative_distance"]
        top = 10 * fractal.BLOWUP
        for c, (pair, curve) in enumerate(zip(pairs, curves, strict=True)):
            ratio = curve / curve[0]
            ax2.semilogy(
                steps_T,
                np.clip(np.where(np.isfinite(ratio), ratio, top), None, top),
                color="C0" if c == 0 else "C3",
                lw=1,
                label=f"lr1 = {pair[0]:.7g}, lr2 = {pair[1]:.7g}",
            )
        ax2.axhline(fractal.BLOWUP, color="k", ls="--", lw=0.7, label="diverged from here on")
        ax2.set(
            xlabel="step",
            ylabel="loss / initial loss (log, clipped)",
            title=f"two neighbouring pixels of the deepest zoom ({rel:.1e} apart)",
        )
        ax2.title.set_fontsize(8)
        ax2.legend(fontsize=6)
        figs["fractal_dimension"] = fig
    return figs


def _edges(v: np.ndarray, log: bool = False) -> np.ndarray:
    v = np.log10(np.asarray(v, np.float64)) if log else np.asarray(v, np.float64)
    mid = (v[1:] + v[:-1]) / 2
    e = np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])
    return 10**e if log else e


# ----------------------------------------------------------------------------- main


class _ScaleParser(argparse.ArgumentParser):
    def error(self, message: str):  # results.cli prints it on one line, exit status 2
        raise ValueError(message)


def _scale(argv: Sequence[str] | None) -> tuple[str, list[str] | None]:
    """Takes `--scale default|paper` out of argv; the rest goes to the common parser."""
    p = _ScaleParser(prog=f"python -m studies.{NAME}", add_help=False)
    p.add_argument("--scale", choices=("default", "paper"), default="default")
    ns, rest = p.parse_known_args(argv)
    return ns.scale, rest


@results.cli
def main(argv: Sequence[str] | None = None) -> None:
    scale, rest = _scale(argv)
    args = results.parse_study_args(NAME, rest, __doc__)
    if scale == "paper" and args.quick:
        raise ValueError("give `--quick` or `--scale paper`, not both")
    cfg = QUICK if args.quick else PAPER if scale == "paper" else Config()
    out = None
    if scale == "paper" and args.out is None:
        out = results.check_writable(results.RESULTS_ROOT / f"{NAME}-paper")
    out, cfg, arrays, summary = results.run_study(NAME, args, cfg, compute, plot, out=out)
    print(f"{NAME}: results in {out}")


if __name__ == "__main__":
    main()
