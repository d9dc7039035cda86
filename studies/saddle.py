"""Saddle points: where gradient descent stops without a minimum, and how it gets away.

The lecture's z = y^2 - x^2 and a bounded saddle, the double well (x^2 - 1)^2 + y^2, both with
a saddle at the origin. Measured here:

- GD started on the ridge x = 0 converges to the saddle: the gradient vanishes at a point
  whose Hessian is indefinite (eigenvalues -2, 2 and -4, 2), so it is not a minimum.
- Started at an offset eps from the ridge, GD escapes: near the saddle x grows by the factor
  q = 1 + alpha |lambda_min| per step (1 + 2 alpha on z), so the number of steps to leave the
  box |x|, |y| <= R is floor(log(R / eps) / log q) + 1. Measured for eps over eleven decades;
  the fitted steps per decade of eps sit beside ln 10 / ln q. Heavy-ball momentum escapes
  faster: x grows like r^t with r the larger root of r^2 = (1 + beta + alpha |lambda|) r - beta.
- From exactly the ridge, GD and momentum never escape; perturbed GD (Gaussian gradient
  noise of variance eta) always does. Its x is a sum of amplified noise, x_t ~ N(0, v_t) with
  v_t = alpha^2 eta (q^(2t) - 1) / (q^2 - 1), so P(escaped by t) = erfc(R / sqrt(2 v_t)).
  Escape-time distributions from thousands of runs (GD and momentum from random offsets,
  perturbed GD from the ridge) against these laws, and the median escape time against eta.

Shape letters beyond sandbox/types.py: E offsets eps, M noise levels eta.

Run: make saddle   (smoke: python -m studies.saddle --quick). Both take seconds of compute
(about 5 s of CPU for the default) and 10 to 20 s in all on 2 cores, mostly compilation and
figures.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import LogLocator

from sandbox import calculus, cli, config, descent, landscapes, optim, plotting, sweep

NAME = "saddle"
LANDSCAPES = ("saddle", "double_well")
_erfc = np.vectorize(math.erfc, otypes=[np.float64])
# The smallest normal float32: perturbed GD's eta is a float32 hyperparameter, and a
# subnormal one is flushed to 0 (measured: no run escapes at eta = 1e-38, all at 1.2e-38).
ETA_MIN = float(np.finfo(np.float32).tiny)
Z_75 = 0.6744897501960817  # P(|N(0, 1)| > Z_75) = 1/2


def noise_median_steps(lr: float, eta: float, radius: float, curvature: float = 2.0) -> int:
    """The median of the law below: the first t with P(T <= t) >= 1/2, that is with
    v_t >= (R / Z_75)^2, in closed form (|lambda_min| = 2 on z)."""
    q = 1 + lr * curvature
    need = (q * q - 1) * (radius / Z_75) ** 2 / (lr * lr * eta)
    return max(0, math.ceil(math.log1p(need) / (2 * math.log(q))))


def _medians_in_budget(etas, lr: float, radius: float, escape_steps: int) -> bool:
    return all(2 <= noise_median_steps(lr, eta, radius) <= escape_steps for eta in etas)


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the offsets and the gradient noise
    # Below 0.5, GD is stable along y (factor 1 - 2 alpha); below 0.25, also at the double
    # well's minima (curvature 8).
    lr: float = config.field(0.1, gt=0, lt=0.25)  # alpha of paths, distributions, noise
    # Paths on the surface, drawn in [-2, 2]^2: one start on the ridge x = 0, the others
    # offset from it.
    path_y0: float = config.field(1.8, gt=0, lt=2)  # the paths' starting y
    path_offsets: tuple[float, ...] = config.field((1e-1, -1e-3, 1e-6), gt=-2, lt=2)  # their x
    path_steps: int = config.count(120, 100_000)  # GD steps of each path
    # Escape against the offset eps: leaving the box of half-width R (z) or R_dw (double
    # well, below its minima at x = +-1), from (eps, R / 2).
    radius: float = config.field(1.0, gt=0)  # R, the box's half-width on z
    double_well_radius: float = config.field(0.5, gt=0, lt=1)  # R_dw, inside the minima
    eps_min: float = config.field(1e-12, gt=0)  # the smallest offset eps
    eps_max: float = config.field(1e-1, gt=0)  # the largest offset eps
    num_eps: int = config.count(45, 10_000, lo=2)  # offsets, log-spaced (a slope needs 2)
    escape_lrs: tuple[float, ...] = config.field((0.05, 0.1, 0.2), gt=0, lt=0.5)  # on z
    escape_steps: int = config.count(600, 1_000_000)  # budget; a run still inside: not escaped
    # Escape-time distributions, on z.
    num_runs: int = config.count(8192, 2**24)  # runs per method
    offset_scale: float = config.field(1e-6, gt=0)  # GD, momentum start at x ~ N(0, scale^2)
    momentum: float = config.field(0.9, 0, lt=1)  # beta of heavy-ball momentum
    noise_eta: float = config.field(1e-8, ETA_MIN)  # perturbed GD's noise variance, from ridge
    # At least two, for the fitted steps per decade of eta; the summary keys each by "%g".
    noise_etas: tuple[float, ...] = config.field(
        (1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2),
        ETA_MIN,
        min_len=2,
        rule=(lambda e: len({f"{x:g}" for x in e}) == len(e), "distinct to 6 significant digits"),
    )
    """noise variances of the median escape time against eta"""
    runs_per_eta: int = config.count(2048, 2**24)  # perturbed-GD runs per noise level

    RELATIONS = (
        config.relation(
            "eps_min < eps_max <= min(radius, double_well_radius) / 2",
            lambda c: c.eps_min < c.eps_max <= 0.5 * min(c.radius, c.double_well_radius),
        ),
        # The fit of the median against log eta needs every median measured (not past the
        # budget) and free to move with eta (all runs out in one step would pin it at 1).
        config.relation(
            "2 <= median escape time on z <= escape_steps, for each eta of noise_etas (by "
            "the law of perturbed GD with lr and radius)",
            lambda c: _medians_in_budget(c.noise_etas, c.lr, c.radius, c.escape_steps),
        ),
    )


QUICK = Config(num_eps=23, num_runs=2048, runs_per_eta=512, path_steps=80)


# ----------------------------------------------------------------------------- theory


# Host-side, in float64, compiled once per landscape function (op by op, a Hessian is slow).
_hessian_eigenvalues = jax.jit(calculus.hessian_eigenvalues, static_argnums=0)


def hessian_eigenvalues(name: str, x) -> np.ndarray:
    """Eigenvalues of the landscape's Hessian at x [2], ascending, in float64."""
    with jax.enable_x64(True):
        fn = landscapes.get(name).fn
        return np.asarray(_hessian_eigenvalues(fn, jnp.asarray(x, jnp.float64)))


def negative_curvature(name: str) -> float:
    """|lambda_min| of the Hessian at the landscape's saddle (2 for z, 4 for the double well)."""
    return float(-hessian_eigenvalues(name, landscapes.get(name).saddles[0])[0])


def escape_steps_gd(eps, lr: float, curvature: float, radius: float) -> np.ndarray:
    """First t with |eps| q^t > R, q = 1 + lr |lambda_min|: the GD escape time."""
    q = 1 + lr * curvature
    return np.floor(np.log(radius / np.abs(eps)) / np.log(q)) + 1


def momentum_growth(lr: float, beta: float, curvature: float) -> tuple[float, float, float]:
    """(r1, r2, c): heavy ball along the unstable direction is x_t = c x0 r1^t + (1-c) x0 r2^t."""
    a = 1 + beta + lr * curvature
    root = math.sqrt(a * a - 4 * beta)
    r1, r2 = (a + root) / 2, (a - root) / 2
    # x_1 = (1 + lr |lambda|) x_0: the first step has no velocity yet.
    c = (1 + lr * curvature - r2) / (r1 - r2)
    return r1, r2, c


def escape_steps_momentum(eps, lr, beta, curvature, radius) -> np.ndarray:
    """First t with |c eps| r1^t > R (the decaying r2 mode left out)."""
    r1, _, c = momentum_growth(lr, beta, curvature)
    return np.floor(np.log(radius / np.abs(c * np.asarray(eps))) / np.log(r1)) + 1


def noise_variance(t, lr: float, eta: float, curvature: float) -> np.ndarray:
    """Var x_t of perturbed GD from the ridge: alpha^2 eta (q^2t - 1) / (q^2 - 1)."""
    q = 1 + lr * curvature
    t = np.asarray(t, np.float64)
    return lr * lr * eta * np.expm1(2 * t * np.log(q)) / (q * q - 1)


def cdf_gd_offsets(t, lr, curvature, radius, scale) -> np.ndarray:
    """P(T <= t) for GD from x0 ~ N(0, scale^2): P(|x0| q^t > R)."""
    q = 1 + lr * curvature
    return _erfc(radius * q ** -np.asarray(t, np.float64) / (scale * math.sqrt(2)))


def cdf_momentum_offsets(t, lr, beta, curvature, radius, scale) -> np.ndarray:
    r1, _, c = momentum_growth(lr, beta, curvature)
    return _erfc(radius * r1 ** -np.asarray(t, np.float64) / (c * scale * math.sqrt(2)))


def cdf_noise(t, lr, eta, curvature, radius) -> np.ndarray:
    """P(T <= t) for perturbed GD from the ridge: P(|x_t| > R), x_t ~ N(0, v_t)."""
    v = np.maximum(noise_variance(t, lr, eta, curvature), 1e-300)
    return _erfc(radius / np.sqrt(2 * v))


def lower_median(values: np.ndarray) -> float:
    """Smallest value whose empirical CDF reaches 1/2 (an integer for integer data)."""
    return float(np.quantile(values, 0.5, method="inverted_cdf"))


def median_from_cdf(cdf_T: np.ndarray) -> float:
    """Smallest t (index) with cdf[t] >= 1/2."""
    return float(np.argmax(cdf_T >= 0.5)) if np.any(cdf_T >= 0.5) else math.nan


def ks_distance(steps_N: np.ndarray, cdf_T: np.ndarray) -> float:
    """max_t |empirical P(T <= t) - cdf[t]| over t = 0..len(cdf) - 1 (unescaped: T = inf)."""
    t = np.arange(len(cdf_T))
    emp = np.searchsorted(np.sort(steps_N), t, side="right") / len(steps_N)
    return float(np.max(np.abs(emp - cdf_T)))


def fit_steps_per_decade(eps_E: np.ndarray, steps_E: np.ndarray) -> float:
    """Least-squares slope of steps against log10(1 / eps), over the escaped runs."""
    ok = np.isfinite(steps_E)
    return float(np.polyfit(np.log10(1 / eps_E[ok]), steps_E[ok], 1)[0])


# ----------------------------------------------------------------------------- compute


def _escape_steps(fn: str, x0_Nx2, cfg: Config, *, bound: float, optimizer="sgd", **hyper):
    """[N] updates until each run left the box |x|, |y| <= bound; inf if it never did.

    `descent.run_batched`: every update checked, the one that crossed the bound kept.
    Nearly every run here leaves the box, that is diverges, and sweep.descend would run it
    twice: its fast path hands diverged runs to this same exact path, and compiles three
    programs for it (for noisy_sgd, whose threefry noise is costly to compile, that is most
    of this study's time).

    Args:
      fn: a landscape name.
      x0_Nx2: [N, 2] starts.
      cfg: the config (its `escape_steps` is the budget).
      bound: half-width R of the box.
      optimizer: a name of `optim.names()`.
      **hyper: its hyperparameters, each a scalar or an [N] array.
    """
    hyper = optim.resolve(optimizer, hyper)
    dtypes = {k: jnp.int32 if k in optim.INTEGER_HYPERS else jnp.float32 for k in hyper}
    out = descent.run_batched(
        landscapes.as_fn(fn),
        jnp.asarray(x0_Nx2, jnp.float32),
        {k: jnp.asarray(v, dtypes[k]) for k, v in hyper.items()},
        optimizer=optimizer,
        steps=cfg.escape_steps,
        bound=bound,
    )
    diverged, step = jax.device_get((out.diverged, out.diverged_step))
    return np.where(diverged, step + 1.0, np.inf)


def _hessian_report(name: str, x: np.ndarray, grad_norm: float) -> dict:
    lscape = landscapes.get(name)
    return {
        "final_point": x.tolist(),
        "distance_to_saddle": {
            "measured": float(np.linalg.norm(x - lscape.saddles[0])),
            "theory": 0.0,
        },
        "grad_norm": {"measured": grad_norm, "theory": 0.0},
        "hessian_eigenvalues": {
            "measured": hessian_eigenvalues(name, x).tolist(),
            "theory": hessian_eigenvalues(name, lscape.saddles[0]).tolist(),
        },
        "kind": {"measured": calculus.critical_point_kind(lscape.fn, x), "theory": "saddle"},
        "f_final": float(lscape.fn(jnp.asarray(x))),
    }


def _ridge(cfg: Config) -> tuple[dict, dict]:
    """Part 1, the paths: GD from the ridge stops at the saddle; (arrays, summary["ridge"])."""
    # The ridge start and the offset starts, recorded every step; the box of the plots is
    # the bound, so a path that leaves it stops at its edge. The ridge start goes last, so
    # its path is drawn on top of the offset ones.
    a = cfg.lr
    offsets = np.asarray((*cfg.path_offsets, 0.0), np.float64)
    starts_Px2 = np.stack([offsets, np.full(len(offsets), cfg.path_y0)], 1).astype(np.float32)
    arrays, summary = {}, {}
    for name in LANDSCAPES:
        run = sweep.descend(name, starts_Px2, steps=cfg.path_steps, lr=a, record_every=1, bound=2.0)
        arrays[f"{name}_path_PxTx2"] = run.path
        ridge = _hessian_report(name, run.x[-1].astype(np.float64), float(run.grad_norm[-1]))
        # On the ridge x stays 0 and y shrinks by (1 - 2 alpha) per step: |grad| = 2|y|.
        ridge["grad_norm"]["theory_exact"] = 2 * cfg.path_y0 * (1 - 2 * a) ** cfg.path_steps
        ridge.update(start=[0.0, cfg.path_y0], steps=cfg.path_steps)
        summary[name] = ridge
    return arrays, summary


def _gd_escapes(cfg: Config, offset_key: jax.Array) -> tuple[dict, np.ndarray]:
    """GD escape steps, on z and the double well; (arrays, [N] steps from the ridge).

    On z every alpha of `escape_lrs` against eps, and GD from random offsets and from the
    ridge, in one call; on the double well against eps.
    """
    a, r = cfg.lr, cfg.radius
    eps_E = np.logspace(np.log10(cfg.eps_min), np.log10(cfg.eps_max), cfg.num_eps)
    lrs_L = np.asarray(cfg.escape_lrs, np.float64)
    n, e = cfg.num_runs, cfg.num_eps
    x0_N = cfg.offset_scale * np.asarray(jax.random.normal(offset_key, (n,)), np.float64)
    x_all = np.concatenate([np.tile(eps_E, len(lrs_L)), x0_N, np.zeros(n)])
    lr_all = np.concatenate([np.repeat(lrs_L, e), np.full(2 * n, a)])
    steps_all = _escape_steps(
        "saddle", np.stack([x_all, np.full(len(x_all), r / 2)], 1), cfg, bound=r, lr=lr_all
    )
    arrays = {
        "eps_E": eps_E,
        "escape_lrs_L": lrs_L,
        "saddle_steps_LxE": steps_all[: len(lrs_L) * e].reshape(len(lrs_L), e),
        "offset_x0_N": x0_N,
        "gd_offsets_steps_N": steps_all[len(lrs_L) * e : len(lrs_L) * e + n],
    }
    gd_ridge_steps = steps_all[len(lrs_L) * e + n :]
    dw_r = cfg.double_well_radius
    arrays["double_well_steps_E"] = _escape_steps(
        "double_well", np.stack([eps_E, np.full(e, dw_r / 2)], 1), cfg, bound=dw_r, lr=a
    )
    return arrays, gd_ridge_steps


def _momentum_escapes(cfg: Config, eps_E, x0_N) -> tuple[dict, np.ndarray]:
    """Momentum escape steps on z, from (eps, R / 2); (arrays, [N] steps from the ridge).

    Against eps, from GD's random offsets, and from the ridge, in one call.
    """
    n, e, r = cfg.num_runs, cfg.num_eps, cfg.radius
    x_mom = np.concatenate([eps_E, x0_N, np.zeros(n)])
    mom_steps = _escape_steps(
        "saddle",
        np.stack([x_mom, np.full(len(x_mom), r / 2)], 1),
        cfg,
        bound=r,
        optimizer="momentum",
        lr=cfg.lr,
        momentum=cfg.momentum,
    )
    arrays = {
        "momentum_steps_E": mom_steps[:e],
        "momentum_offsets_steps_N": mom_steps[e : e + n],
    }
    return arrays, mom_steps[e + n :]


def _noisy_escapes(cfg: Config, seed_key: jax.Array) -> dict:
    """Perturbed GD escape steps from the ridge: arrays of every eta and of `noise_eta`.

    `runs_per_eta` runs at every eta of `noise_etas`, then `num_runs` at `noise_eta`; each
    run its own seed.
    """
    r = cfg.radius
    etas_M = np.asarray(cfg.noise_etas, np.float64)
    m = cfg.runs_per_eta
    eta_all = np.concatenate([np.repeat(etas_M, m), np.full(cfg.num_runs, cfg.noise_eta)])
    seeds = np.asarray(
        jax.random.randint(seed_key, (len(eta_all),), 0, np.iinfo(np.int32).max), np.int32
    )
    noisy_steps = _escape_steps(
        "saddle",
        np.tile([[0.0, r / 2]], (len(eta_all), 1)),
        cfg,
        bound=r,
        optimizer="noisy_sgd",
        lr=cfg.lr,
        eta=eta_all,
        gamma=0.0,
        seed=seeds,
    )
    return {
        "noise_etas_M": etas_M,
        "noise_steps_MxN": noisy_steps[: len(etas_M) * m].reshape(len(etas_M), m),
        "noise_ridge_steps_N": noisy_steps[len(etas_M) * m :],
    }


def _slope_entry(eps_E, measured_E, theory_E, steps_per_decade: float, **note) -> dict:
    """Steps per decade of eps and the largest step error, measured against theory."""
    return {
        "steps_per_decade": {
            "measured": fit_steps_per_decade(eps_E, measured_E),
            "theory": steps_per_decade,
        },
        "max_abs_step_error": {
            "measured": float(np.max(np.abs(measured_E - theory_E))),
            "theory": 0.0,
            **note,
        },
    }


def _escape_vs_offset(cfg: Config, arrays: dict, curv: dict) -> dict:
    """summary["escape_vs_offset"]: steps per decade of eps and the exact step counts."""
    a, beta, r = cfg.lr, cfg.momentum, cfg.radius
    eps_E = arrays["eps_E"]
    esc = {}
    for i, lr in enumerate(arrays["escape_lrs_L"]):
        measured = arrays["saddle_steps_LxE"][i]
        theory = escape_steps_gd(eps_E, lr, curv["saddle"], r)
        esc[f"saddle_gd_lr_{lr:g}"] = {
            **_slope_entry(
                eps_E, measured, theory, math.log(10) / math.log(1 + lr * curv["saddle"])
            ),
            "escaped_fraction": float(np.mean(np.isfinite(measured))),
        }
    dw_E = arrays["double_well_steps_E"]
    esc[f"double_well_gd_lr_{a:g}"] = {
        **_slope_entry(
            eps_E,
            dw_E,
            escape_steps_gd(eps_E, a, curv["double_well"], cfg.double_well_radius),
            math.log(10) / math.log(1 + a * curv["double_well"]),
            note="the linear theory ignores the quartic term, which slows the last steps",
        ),
        "escaped_fraction": float(np.mean(np.isfinite(dw_E))),
    }
    r1, _, _ = momentum_growth(a, beta, curv["saddle"])
    mom_E = arrays["momentum_steps_E"]
    esc[f"saddle_momentum_lr_{a:g}_beta_{beta:g}"] = {
        **_slope_entry(
            eps_E,
            mom_E,
            escape_steps_momentum(eps_E, a, beta, curv["saddle"], r),
            math.log(10) / math.log(r1),
        ),
        "growth_per_step": {"theory": r1, "gd_theory": 1 + a * curv["saddle"]},
        "escaped_fraction": float(np.mean(np.isfinite(mom_E))),
    }
    return {
        "eps_range": [cfg.eps_min, cfg.eps_max],
        "decades": math.log10(cfg.eps_max / cfg.eps_min),
        "start_y": "R / 2",
        "theory_formula": "steps = floor(ln(R / eps) / ln q) + 1, q = 1 + alpha |lambda_min|",
        **esc,
    }


def _escape_distributions(
    cfg: Config, arrays: dict, curv: dict, ridge_steps: dict
) -> tuple[dict, dict]:
    """Escape-time distributions against their laws: (cdf_*_T arrays, summary entry).

    `ridge_steps` holds the [N] steps of GD and momentum from the ridge (none escape).
    """
    a, r = cfg.lr, cfg.radius
    t_T = np.arange(cfg.escape_steps + 1)
    cdfs = {
        "gd_offsets": cdf_gd_offsets(t_T, a, curv["saddle"], r, cfg.offset_scale),
        "momentum_offsets": cdf_momentum_offsets(
            t_T, a, cfg.momentum, curv["saddle"], r, cfg.offset_scale
        ),
        "noise_ridge": cdf_noise(t_T, a, cfg.noise_eta, curv["saddle"], r),
    }
    dist = {}
    for k, cdf_T in cdfs.items():
        steps_N = arrays[f"{k}_steps_N"]
        dist[k] = {
            "runs": int(len(steps_N)),
            "median_steps": {
                "measured": lower_median(steps_N),
                "theory": median_from_cdf(cdf_T),
            },
            "ks_distance": {
                "measured": ks_distance(steps_N, cdf_T),
                "theory": 0.0,
                "note": f"sampling alone: about {0.87 / math.sqrt(len(steps_N)):.3f} (median)",
            },
            "escaped_fraction": {"measured": float(np.mean(np.isfinite(steps_N))), "theory": 1.0},
        }
    for k in ("gd_ridge", "momentum_ridge"):
        dist[k] = {
            "escaped_fraction": {
                "measured": float(np.mean(np.isfinite(ridge_steps[k]))),
                "theory": 0.0,
            }
        }
    summary = {
        "offset_scale": cfg.offset_scale,
        "momentum": cfg.momentum,
        "noise_eta": cfg.noise_eta,
        **dist,
    }
    return {f"cdf_{k}_T": cdf_T for k, cdf_T in cdfs.items()}, summary


def _escape_vs_noise(cfg: Config, arrays: dict, curv: dict) -> dict:
    """summary["escape_vs_noise"]: median escape time of perturbed GD against eta."""
    a, r = cfg.lr, cfg.radius
    t_T = np.arange(cfg.escape_steps + 1)
    etas_M = arrays["noise_etas_M"]
    noise = {}
    for j, eta in enumerate(etas_M):
        cdf_T = cdf_noise(t_T, a, eta, curv["saddle"], r)
        steps_N = arrays["noise_steps_MxN"][j]
        noise[f"{eta:g}"] = {
            "median_steps": {"measured": lower_median(steps_N), "theory": median_from_cdf(cdf_T)},
            "ks_distance": {"measured": ks_distance(steps_N, cdf_T), "theory": 0.0},
        }
    q = 1 + a * curv["saddle"]
    med_M = np.array([lower_median(steps_N) for steps_N in arrays["noise_steps_MxN"]])
    ok = np.isfinite(med_M)  # a median past the budget (few runs_per_eta) is left out
    return {
        "runs_per_eta": cfg.runs_per_eta,
        # Median T ~ log(R / (0.674 sigma)) / log q with sigma ~ sqrt(eta): -1 / (2 log10 q)
        # steps per decade of eta.
        "steps_per_decade_of_eta": {
            "measured": float(np.polyfit(np.log10(etas_M[ok]), med_M[ok], 1)[0])
            if np.sum(ok) >= 2
            else math.nan,
            "theory": -1 / (2 * math.log10(q)),
        },
        **noise,
    }


def compute(cfg: Config) -> tuple[dict, dict]:
    """The paths, then the escape runs, then their summaries: (arrays, summary)."""
    key = jax.random.key(cfg.seed)
    offset_key, seed_key = jax.random.split(key)
    del key
    curv = {name: negative_curvature(name) for name in LANDSCAPES}
    arrays, ridge = _ridge(cfg)
    summary = {
        "lr": cfg.lr,
        "radius": cfg.radius,
        "double_well_radius": cfg.double_well_radius,
        "negative_curvature": curv,
        "ridge": ridge,
    }
    # Escape from (eps, R / 2) and from the ridge (0, R / 2).
    gd_arrays, gd_ridge_steps = _gd_escapes(cfg, offset_key)
    arrays.update(gd_arrays)
    mom_arrays, mom_ridge_steps = _momentum_escapes(cfg, arrays["eps_E"], arrays["offset_x0_N"])
    arrays.update(mom_arrays)
    arrays.update(_noisy_escapes(cfg, seed_key))
    ridge_steps = {"gd_ridge": gd_ridge_steps, "momentum_ridge": mom_ridge_steps}
    summary["escape_vs_offset"] = _escape_vs_offset(cfg, arrays, curv)
    cdf_arrays, summary["escape_distributions"] = _escape_distributions(
        cfg, arrays, curv, ridge_steps
    )
    arrays.update(cdf_arrays)
    summary["escape_vs_noise"] = _escape_vs_noise(cfg, arrays, curv)
    return arrays, summary


# ----------------------------------------------------------------------------- plot

_BOX = np.array([[-2.0, 2.0], [-2.0, 2.0]])  # the plots' window, also the paths' bound
_METHODS = (  # escape-time distributions: array key, label, colour
    ("gd_offsets", "GD", "C0"),
    ("momentum_offsets", "momentum", "C2"),
    ("noise_ridge", "perturbed GD", "C3"),
)


def _plot_paths(fig, cfg: Config, arrays: dict, summary: dict) -> None:
    """One row per landscape: the surface with the paths, and the contours with them."""
    titles = {"saddle": "z = y² − x²", "double_well": "f = (x² − 1)² + y²"}
    ticks = [-2, -1, 0, 1, 2]
    for row, name in enumerate(LANDSCAPES):
        lscape = landscapes.get(name)
        paths = arrays[f"{name}_path_PxTx2"]
        ax3 = fig.add_subplot(2, 2, 2 * row + 1, projection="3d")
        plotting.surface3d(ax3, lscape.fn, _BOX, paths=paths, n=61)
        ax3.set(xlabel="x", ylabel="y", xticks=ticks, yticks=ticks, title=titles[name])
        ax3.view_init(elev=30, azim=-55)
        ax = fig.add_subplot(2, 2, 2 * row + 2)
        plotting.contour_paths(
            ax,
            lscape.fn,
            _BOX,
            paths=paths,
            points={"saddle": lscape.saddles, "minimum": lscape.minima},
            levels=25,
            legend=False,
        )
        # Each path is one line of all its points (then its start and end markers).
        lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1]
        starts = [*(f"x0 = {o:g}" for o in cfg.path_offsets), "x0 = 0 (ridge)"]
        ax.legend(lines, starts, loc="upper left", fontsize=6.5)
        ridge = summary["ridge"][name]
        eig = ridge["hessian_eigenvalues"]["measured"]
        # The Hessian is diagonal at both saddles: its eigenvectors are the axes.
        for tip, text, xy in (
            ((1.0, 0.0), f"λ = {eig[0]:+.3g}", (0.3, -0.22)),
            ((0.0, -1.0), f"λ = {eig[1]:+.3g}", (0.1, -1.0)),
        ):
            ax.annotate(
                "",
                xy=tip,
                xytext=(0, 0),
                arrowprops={"arrowstyle": "-|>", "color": "white", "lw": 1.4},
                zorder=6,
            )
            ax.text(*xy, text, color="white", fontsize=7, zorder=6, va="center")
        ax.set(xlabel="x", ylabel="y")
        ax.set_title(f"GD, α = {cfg.lr:g}, {cfg.path_steps} steps from (x0, {cfg.path_y0:g})")
        ax.set_aspect("equal")
        ax.text(
            0.03,
            0.03,
            f"from the ridge, after {ridge['steps']} steps:\n"
            f"|∇f| = {ridge['grad_norm']['measured']:.1e}, Hessian eigenvalues "
            f"{eig[0]:+.3g}, {eig[1]:+.3g}:\na {ridge['kind']['measured']}, not a minimum",
            transform=ax.transAxes,
            fontsize=6.5,
            va="bottom",
            zorder=7,
            bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85},
        )


def _plot_escape_vs_offset(ax, cfg: Config, arrays: dict, summary: dict) -> None:
    eps_E = arrays["eps_E"]
    esc = summary["escape_vs_offset"]
    curv = summary["negative_curvature"]
    fine = np.logspace(np.log10(eps_E[0]), np.log10(eps_E[-1]), 400)
    series = [  # label, measured steps, summary entry, theory steps on `fine`
        (
            f"z, GD α = {lr:g}",
            arrays["saddle_steps_LxE"][i],
            esc[f"saddle_gd_lr_{lr:g}"],
            np.log(cfg.radius / fine) / np.log(1 + lr * curv["saddle"]),
        )
        for i, lr in enumerate(arrays["escape_lrs_L"])
    ]
    series.append(
        (
            f"double well, GD α = {cfg.lr:g}",
            arrays["double_well_steps_E"],
            esc[f"double_well_gd_lr_{cfg.lr:g}"],
            np.log(cfg.double_well_radius / fine) / np.log(1 + cfg.lr * curv["double_well"]),
        )
    )
    r1, _, c = momentum_growth(cfg.lr, cfg.momentum, curv["saddle"])
    series.append(
        (
            f"z, momentum α = {cfg.lr:g}, β = {cfg.momentum:g}",
            arrays["momentum_steps_E"],
            esc[f"saddle_momentum_lr_{cfg.lr:g}_beta_{cfg.momentum:g}"],
            np.log(cfg.radius / (c * fine)) / np.log(r1),
        )
    )
    for i, (label, steps_E, s, theory) in enumerate(series):
        slope = s["steps_per_decade"]
        ax.plot(
            eps_E,
            steps_E,
            "s" if "momentum" in label else "o",
            ms=2.8,
            color=f"C{i}",
            label=f"{label}: {slope['measured']:.2f} (theory {slope['theory']:.2f})",
        )
        ax.plot(fine, theory, "-", lw=0.8, color=f"C{i}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(numticks=7))
    ax.set(
        xlabel="offset ε from the ridge (log scale)",
        ylabel="steps to leave |x|, |y| ≤ R",
    )
    # Room above the data for the legend.
    top = max(np.max(s[1][np.isfinite(s[1])], initial=1.0) for s in series)
    ax.set_ylim(0, 1.6 * top)
    ax.set_title("escape from (ε, R/2): dots measured, lines ln(R/ε) / ln q", fontsize=8)
    ax.legend(loc="upper right", fontsize=5.8, title="steps per decade of ε")


def _plot_escape_vs_noise(ax, cfg: Config, arrays: dict, summary: dict) -> None:
    etas_M, steps_MxN = arrays["noise_etas_M"], arrays["noise_steps_MxN"]
    q25, q50, q75 = (
        np.array([np.quantile(s, p, method="inverted_cdf") for s in steps_MxN])
        for p in (0.25, 0.5, 0.75)
    )
    ax.errorbar(
        etas_M,
        q50,
        yerr=[q50 - q25, q75 - q50],
        fmt="o",
        ms=3.5,
        capsize=2,
        color="C3",
        label=f"measured median and quartiles\n({steps_MxN.shape[1]} runs per η)",
    )
    fine = np.logspace(np.log10(etas_M.min()), np.log10(etas_M.max()), 200)
    t_T = np.arange(cfg.escape_steps + 1)
    curv = summary["negative_curvature"]["saddle"]
    median = [median_from_cdf(cdf_noise(t_T, cfg.lr, e, curv, cfg.radius)) for e in fine]
    ax.plot(fine, median, "k-", lw=0.9, label="theory median")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(numticks=7))
    slope = summary["escape_vs_noise"]["steps_per_decade_of_eta"]
    ax.set(xlabel="gradient-noise variance η (log scale)", ylabel="steps to leave |x|, |y| ≤ R")
    ax.set_title(
        f"perturbed GD from the ridge (0, R/2), α = {cfg.lr:g}:\n"
        f"{slope['measured']:.2f} steps per decade of η (theory {slope['theory']:.2f})",
        fontsize=8,
    )
    ax.legend(loc="upper right")


def _plot_distributions(ax1, ax2, cfg: Config, arrays: dict, summary: dict) -> None:
    dist = summary["escape_distributions"]
    labels = {
        "gd_offsets": f"GD from x0 ~ N(0, ({cfg.offset_scale:g})²)",
        "momentum_offsets": f"momentum β = {cfg.momentum:g}, same starts",
        "noise_ridge": f"perturbed GD η = {cfg.noise_eta:g} from x0 = 0",
    }
    lo, hi = np.inf, 0
    for k, _, color in _METHODS:
        steps_N, cdf_T = arrays[f"{k}_steps_N"], arrays[f"cdf_{k}_T"]
        finite = steps_N[np.isfinite(steps_N)]
        lo, hi = min(lo, finite.min() - 3), max(hi, finite.max() + 3)
        bins = np.arange(finite.min() - 1, finite.max() + 2) - 0.5
        ax1.hist(finite, bins=bins, color=color, alpha=0.45, label=labels[k])
        t_T = np.arange(len(cdf_T))
        pmf_T = np.diff(cdf_T, prepend=0.0) * len(steps_N)
        ax1.step(t_T, pmf_T, where="mid", color=color, lw=1.0)
        s = np.sort(finite)
        ks = dist[k]["ks_distance"]["measured"]
        ax2.step(
            s,
            np.arange(1, len(s) + 1) / len(steps_N),
            where="post",
            color=color,
            lw=1.4,
            label=f"{labels[k].split(' from')[0].split(',')[0]}: KS distance {ks:.3f}",
        )
        ax2.plot(t_T, cdf_T, "k--", lw=0.7, zorder=3)
    gd_ridge = dist["gd_ridge"]["escaped_fraction"]["measured"]
    mom_ridge = dist["momentum_ridge"]["escaped_fraction"]["measured"]
    for ax in (ax1, ax2):
        ax.set_xlim(lo, hi)
    ax1.set(xlabel="steps to leave |x|, |y| ≤ R", ylabel="runs per step")
    ax1.set_title(f"{dist['gd_offsets']['runs']} runs each; lines: theory", fontsize=8)
    ax1.legend(loc="upper right", fontsize=6)
    ax2.set(xlabel="steps t", ylabel="P(escaped by step t)", ylim=(0, 1.02))
    ax2.set_title("empirical CDF (colour) against theory (dashed)", fontsize=8)
    ax2.legend(loc="lower right", fontsize=6)
    ax1.text(
        0.97,
        0.62,
        f"from x0 = 0 without noise:\nGD {100 * gd_ridge:.0f}%, momentum "
        f"{100 * mom_ridge:.0f}% escape",
        transform=ax1.transAxes,
        ha="right",
        va="center",
        fontsize=6.5,
    )


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    figs = {}
    with plt.style.context(plotting.STYLE):
        fig = plt.figure(figsize=(plotting.FULL, 6.2), layout="constrained")
        _plot_paths(fig, cfg, arrays, summary)
        figs["surface_paths"] = fig

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 3.0), layout="constrained")
        _plot_escape_vs_offset(ax1, cfg, arrays, summary)
        _plot_escape_vs_noise(ax2, cfg, arrays, summary)
        figs["escape_time"] = fig

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
        _plot_distributions(ax1, ax2, cfg, arrays, summary)
        figs["escape_distributions"] = fig
    return figs


main = cli.study_main(__name__, compute, plot)


if __name__ == "__main__":
    main()
