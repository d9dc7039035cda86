"""Normalization as conditioning: how many steps gradient descent needs, before and after rescaling.

On f = 0.5 (x^2 + kappa y^2) the curvatures are 1 and kappa. With the best fixed learning
rate, 2 / (L + mu) = 2 / (1 + kappa), every gradient component shrinks by
rho = (kappa - 1) / (kappa + 1) per step, so reaching |grad f| <= tol |grad f(x0)| takes
ceil(ln(1 / tol) / ln(1 / rho)) ~ (kappa / 2) ln(1 / tol) steps: linear in kappa. Measured
here for kappa from 1 to 10^4: the steps at the best learning rate of a sweep (the worst of
several starts, each with |grad f(x0)| = 1), the steps at the formula's rate, the log-log
slope of steps against kappa (theory 1), and the same after rescaling the coordinates
(u = x, v = sqrt(kappa) y makes kappa 1: one step at lr 1, slope 0).

Then least squares on two features of very different scales (1 and 1000 by default), raw
against standardized (centred, unit variance). The loss is a quadratic whose Hessian is
X^T X / n, so the raw problem has kappa ~ (1000 / 1)^2 and the standardized one kappa ~ 1.
Measured: steps until the loss gap L - L* falls to tol (L0 - L*), at the best swept and at
the formula learning rate (theory: ceil(ln(1 / tol) / (2 ln(1 / rho)))), and the contour
pictures with the paths (elongated against round).

Shape letters beyond sandbox/types.py: K condition numbers, U edge gaps of the lr sweep
(lr = (2 / L)(1 - u)), P recorded path points.

Run: make normalization   (smoke: python -m studies.normalization --quick; the default run
takes well under a minute on 2 cores, most of it the raw regression's 2.6 million steps)
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from sandbox import cli, config, descent, plotting, sweep

NAME = "normalization"


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the regression data
    # Quadratics 0.5 (x^2 + kappa y^2), kappa log-spaced from 1 to kappa_max; float32
    # resolves 1 - u only for u above ~1e-7: kappa beyond 1e6 needs finer lrs.
    kappa_max: float = config.field(1e4, 1, 1e6)  # the largest condition number
    num_kappas: int = config.count(13, 1000)  # condition numbers, log-spaced
    tol: float = config.field(1e-3, gt=0, lt=1)  # quadratics: |grad f| <= tol |grad f(x0)|
    num_starts: int = config.count(4, 1000)  # starts with unit gradients over (0, pi/2)
    slope_kappa_min: float = config.field(10.0, 1)  # the log-log slope's fit: kappa >= this
    # The lr sweep: lr = (2 / L)(1 - u), u log-spaced over edge_gap_range; the optimum
    # 2 / (L + mu) is u = 1 / (1 + kappa), so the range must reach below 1 / (1 + kappa).
    num_lrs: int = config.count(128, 100_000)  # lrs of the sweep
    # u = 1 - lr L / 2 of the sweep's ends
    edge_gap_range: tuple[float, float] = config.field((1e-7, 0.95), 1e-7, lt=1, increasing=True)
    step_budget: float = config.field(1.5, 1)  # steps per run: this times the theory's, plus 16
    # Least squares on two features of scales `feature_scales`.
    num_samples: int = config.count(200, 10**6, lo=3)  # samples of the regression
    # The raw problem's kappa is about (scale ratio)^2 and its steps about kappa: a ratio
    # of 1000 already takes millions of steps.
    feature_scales: tuple[float, float] = config.field(
        (1.0, 1000.0), gt=0, rule=(lambda s: max(s) <= 1000 * min(s), "at most 1000 apart")
    )
    """the two features' scales"""
    noise: float = config.field(0.1, 0)  # standard deviation of the targets' noise
    regression_tol: float = config.field(1e-3, gt=0, lt=1)  # L - L* <= tol (L0 - L*)
    max_records: int = config.count(4000, 10**6)  # recorded points per regression run

    RELATIONS = (
        config.relation("slope_kappa_min < kappa_max", lambda c: c.slope_kappa_min < c.kappa_max),
        config.relation(
            "at least 2 of the num_kappas kappas >= slope_kappa_min",
            lambda c: (
                (np.logspace(0, np.log10(c.kappa_max), c.num_kappas) >= c.slope_kappa_min).sum()
                >= 2
            ),
        ),
    )


QUICK = Config(
    kappa_max=1e3,
    num_kappas=7,
    num_starts=2,
    num_lrs=48,
    num_samples=100,
    feature_scales=(1.0, 100.0),
    max_records=1000,
)


def kappas(cfg: Config) -> np.ndarray:
    """[K] condition numbers, log-spaced from 1 to kappa_max."""
    return np.logspace(0, np.log10(cfg.kappa_max), cfg.num_kappas)


# ----------------------------------------------------------------------------- theory


def rate(kappa) -> np.ndarray:
    """rho = (kappa - 1) / (kappa + 1): GD's contraction per step at lr 2 / (L + mu)."""
    kappa = np.asarray(kappa, np.float64)
    return (kappa - 1) / (kappa + 1)


def steps_theory(kappa, tol: float, power: int = 1) -> np.ndarray:
    """Steps until rho^(power t) <= tol at lr 2 / (L + mu) (1 at kappa = 1: one exact step).

    power 1: the gradient norm (each component shrinks by rho); power 2: the loss gap.
    """
    rho = rate(kappa)
    safe = np.where(rho > 0, rho, 0.5)
    steps = np.ceil(np.log(1 / tol) / (power * np.log(1 / safe)) - 1e-9)
    return np.where(rho > 0, np.maximum(steps, 1), 1.0)


def steps_exact(a0_NxD, f_NxD, tol: float, budget: int) -> np.ndarray:
    """`descent.steps_to_tol` as floats, inf where the budget is not enough; [N]."""
    steps_N = descent.steps_to_tol(a0_NxD, f_NxD, tol, budget).astype(np.float64)
    return np.where(steps_N < 0, np.inf, steps_N)


def loglog_slope(x, y) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# ----------------------------------------------------------------------------- functions


def quadratic(p):
    """0.5 (x^2 + kappa (s y)^2) at p = (x, y, kappa, s); kappa and s never move.

    kappa and the scale s ride along as coordinates whose gradients are stopped, so one
    compiled sweep covers every kappa, raw (s = 1) and rescaled (s = 1 / sqrt(kappa): in
    v = sqrt(kappa) y the function is 0.5 (x^2 + v^2)) alike.
    """
    kappa, scale = jax.lax.stop_gradient(p[2]), jax.lax.stop_gradient(p[3])
    y = scale * p[1]
    return 0.5 * (p[0] ** 2 + kappa * y * y)


def least_squares(X: np.ndarray, y: np.ndarray, dtype=jnp.float32):
    """w [2] -> 0.5 mean((X w - y)^2), a pure jnp function closed over the data.

    Written through X^T X / n, X^T y / n and y^T y / n, the same quadratic, so a step costs
    O(d^2) instead of O(n d): the raw problem needs millions of steps.
    """
    n = len(y)
    A = jnp.asarray(X.T @ X / n, dtype)
    b = jnp.asarray(X.T @ y / n, dtype)
    c = float(y @ y / n)

    def loss(w):
        return 0.5 * (w @ (A @ w)) - b @ w + 0.5 * c

    return loss


def loss_gap(path_PxTx2: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(L(w) - L*) / (L(0) - L*) along recorded paths, in float64 on the host."""
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    H = X.T @ X / len(y)
    d = path_PxTx2.astype(np.float64) - w_star
    gap = 0.5 * np.einsum("...i,ij,...j->...", d, H, d)
    return gap / (0.5 * w_star @ H @ w_star)


def make_data(key: jax.Array, cfg: Config) -> dict:
    """Two independent features of scales `feature_scales`, y = sum_j x_j / scale_j + noise."""
    x_key, noise_key = jax.random.split(key)
    scales = np.asarray(cfg.feature_scales, np.float64)
    z = np.asarray(jax.random.normal(x_key, (cfg.num_samples, 2)), np.float64)
    X = z * scales
    # Each feature moves y by about 1: both directions matter for the loss.
    w_true = np.array([1.0, -1.0]) / scales
    eps = np.asarray(jax.random.normal(noise_key, (cfg.num_samples,)), np.float64)
    y = X @ w_true + cfg.noise * eps
    mean, std = X.mean(0), X.std(0)
    return {"raw": (X, y), "standardized": ((X - mean) / std, y - y.mean())}


# ----------------------------------------------------------------------------- compute


def _lr_grid(cfg: Config, top_curvature_K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u_U, lr_KxU): lr = (2 / L)(1 - u) below the stability edge 2 / L of each problem."""
    u_U = np.logspace(*np.log10(cfg.edge_gap_range), cfg.num_lrs)
    return u_U, (2 / np.asarray(top_curvature_K)[:, None]) * (1 - u_U)


def _quadratic_steps(cfg: Config, x0_KxSx4, lr_KxV, steps: int) -> np.ndarray:
    """Measured worst-case steps over the starts, [K, V]; inf where a run never got there.

    One call: every problem x lr x start is one run (K may stack several problems).
    """
    k, s = x0_KxSx4.shape[:2]
    v = lr_KxV.shape[1]
    x0 = np.broadcast_to(x0_KxSx4[:, None], (k, v, s, 4)).reshape(-1, 4)
    lr = np.broadcast_to(lr_KxV[:, :, None], (k, v, s)).reshape(-1)
    run = sweep.descend(
        quadratic,
        x0.astype(np.float32),
        steps=steps,
        lr=lr.astype(np.float32),
        tol=cfg.tol,
        bound=10 * float(np.max(x0[:, 2])),  # the kappa coordinate must stay in bound
    )
    steps_KxVxS = run.steps_to_tol.reshape(k, v, s).astype(np.float64)
    steps_KxVxS[(steps_KxVxS < 0) | run.diverged.reshape(k, v, s)] = np.inf
    return steps_KxVxS.max(axis=2)


def _quadratic_theory(grad0_KxSx2, curv_Kx2, lr_KxV, tol: float, budget: int) -> np.ndarray:
    """Exact worst-case steps over the starts, [K, V]: g_t = g_0 (1 - lr curv)^t."""
    k, s, _ = grad0_KxSx2.shape
    v = lr_KxV.shape[1]
    g0 = np.broadcast_to(grad0_KxSx2[:, None], (k, v, s, 2)).reshape(-1, 2)
    f = 1 - lr_KxV[:, :, None, None] * curv_Kx2[:, None, None, :]
    f = np.broadcast_to(f, (k, v, s, 2)).reshape(-1, 2)
    return steps_exact(g0, f, tol, budget).reshape(k, v, s).max(axis=2)


def _record_float64(X, y, x0_Nx2, lr_N, steps: int, record_every: int):
    """Recorded GD runs on the least-squares loss, in float64 (`descent.run_batched`).

    float64 because at kappa ~ 1e6 a float32 step along the slow direction,
    lr lambda_min (w - w*) ~ 1e-8, falls below half an ulp of w ~ 1 and is lost: float32 GD
    stalls near the tolerance instead of following the theory.
    """
    with jax.enable_x64(True):
        run = descent.run_batched(
            least_squares(X, y, jnp.float64),
            jnp.asarray(x0_Nx2, jnp.float64),
            {"lr": jnp.asarray(lr_N, jnp.float64)},
            optimizer="sgd",
            steps=steps,
            record_every=record_every,
        )
        return jax.device_get(run)


def _agreement(measured, exact) -> dict:
    """How closely measured step counts follow the exact ones, cell by cell.

    float32 rounds lr and 1 - lr * curvature: near the stability edge (edge gap u ~ 1e-4)
    that moves the contraction by ~6e-8 / u relative, and long counts by as much; hence the
    tolerance of one step plus 0.2%. inf (never within the budget) matches inf.
    """
    m, e = np.asarray(measured, np.float64), np.asarray(exact, np.float64)
    both = np.isfinite(m) & np.isfinite(e)
    m0, e0 = np.where(both, m, 0.0), np.where(both, e, 0.0)
    diff = np.abs(m0 - e0)
    ok = np.where(both, diff <= 1 + 2e-3 * e0, m == e)
    return {
        "cells_within_tolerance": {"measured": float(np.mean(ok)), "theory": 1.0},
        "tolerance": "1 step + 0.2%",
        "max_abs_steps": float(diff.max()),
        "max_rel": float(np.max(diff / np.maximum(e0, 1))),
        "cells": int(m.size),
    }


def _entry(measured, theory, grid_theory=None) -> dict:
    out = {"measured": float(measured), "theory": float(theory)}
    if grid_theory is not None:
        out["theory_same_lr_grid"] = float(grid_theory)
    return out


class _Problems(NamedTuple):
    """One form of the quadratics, a row per kappa: the starts (x0 [K, S, 4]), their
    gradients, the curvatures (mu, L) along the two axes and the lrs tried.

    The lr rows end with the formula lr (2 / (L + mu)) after the sweep's U lrs: V = U + 1.
    """

    x0_KxSx4: np.ndarray
    grad0_KxSx2: np.ndarray
    curv_Kx2: np.ndarray
    lr_KxV: np.ndarray


class _Quadratics(NamedTuple):
    """The quadratic problems: raw (L = kappa, mu = 1) and rescaled (L = mu = 1)."""

    kappa_K: np.ndarray
    u_U: np.ndarray
    lr_KxU: np.ndarray  # the raw form's swept lrs
    lr_formula_K: np.ndarray
    raw: _Problems
    rescaled: _Problems


def _quadratic_problems(cfg: Config) -> _Quadratics:
    """Starts, their gradients and the lrs of the raw and rescaled quadratics."""
    # Starts (cos t, sin t / kappa) have unit gradients (cos t, sin t), so the tolerance is
    # relative; t spreads over (0, pi/2).
    kappa_K = kappas(cfg)
    ones_K = np.ones_like(kappa_K)
    theta_S = 0.5 * np.pi * (np.arange(cfg.num_starts) + 0.5) / cfg.num_starts
    cos_S, sin_S = np.cos(theta_S), np.sin(theta_S)
    kap_KxS = np.broadcast_to(kappa_K[:, None], (cfg.num_kappas, cfg.num_starts))
    x0_KxSx4 = np.stack(np.broadcast_arrays(cos_S, sin_S / kap_KxS, kap_KxS, 1.0), axis=-1)
    grad0_KxSx2 = np.stack(np.broadcast_arrays(cos_S, sin_S + 0 * kap_KxS), -1)
    u_U, lr_KxU = _lr_grid(cfg, kappa_K)  # L = kappa, mu = 1
    lr_formula_K = 2 / (1 + kappa_K)
    lr_KxV = np.concatenate([lr_KxU, lr_formula_K[:, None]], axis=1)  # the formula lr last
    # Rescaled: the same starts in (x, v) = (x, sqrt(kappa) y), where L = mu = 1 and the
    # gradient is (cos t, sin t / sqrt(kappa)); its formula lr is 1.
    x0_res = np.stack(
        np.broadcast_arrays(cos_S, sin_S / np.sqrt(kap_KxS), kap_KxS, 1 / np.sqrt(kap_KxS)),
        axis=-1,
    )
    grad0_res = np.stack([cos_S + 0 * kap_KxS, sin_S / np.sqrt(kap_KxS)], -1)
    _, lr_res_KxU = _lr_grid(cfg, ones_K)
    lr_res_KxV = np.concatenate([lr_res_KxU, ones_K[:, None]], axis=1)
    raw = _Problems(x0_KxSx4, grad0_KxSx2, np.stack([ones_K, kappa_K], 1), lr_KxV)
    rescaled = _Problems(x0_res, grad0_res, np.stack([ones_K, ones_K], 1), lr_res_KxV)
    return _Quadratics(kappa_K, u_U, lr_KxU, lr_formula_K, raw, rescaled)


def _quadratic_counts(cfg: Config, q: _Quadratics, budget: int) -> dict[str, np.ndarray]:
    """Measured and exact worst-case steps, [K, V] each, raw and rescaled, in one sweep."""
    both_KxV = _quadratic_steps(
        cfg,
        np.concatenate([q.raw.x0_KxSx4, q.rescaled.x0_KxSx4]),
        np.concatenate([q.raw.lr_KxV, q.rescaled.lr_KxV]),
        budget,
    )

    def exact(p: _Problems) -> np.ndarray:
        return _quadratic_theory(p.grad0_KxSx2, p.curv_Kx2, p.lr_KxV, cfg.tol, budget)

    return {
        "steps": both_KxV[: len(q.kappa_K)],
        "rescaled": both_KxV[len(q.kappa_K) :],
        "exact": exact(q.raw),
        "rescaled_exact": exact(q.rescaled),
    }


def _per_kappa(q: _Quadratics, theory_K: np.ndarray, counts: dict) -> dict:
    """Summary entries of each kappa: steps at the best and formula lrs, raw and rescaled."""
    steps_KxV, res_KxV = counts["steps"], counts["rescaled"]
    exact_KxV, res_exact_KxV = counts["exact"], counts["rescaled_exact"]
    best_K, best_i = steps_KxV[:, :-1].min(axis=1), np.argmin(steps_KxV[:, :-1], axis=1)
    res_best_K = res_KxV[:, :-1].min(axis=1)
    per_kappa = {}
    for i, kap in enumerate(q.kappa_K):
        per_kappa[f"{kap:.4g}"] = {
            "steps_best_lr": _entry(best_K[i], theory_K[i], exact_KxV[i, :-1].min()),
            "steps_formula_lr": _entry(steps_KxV[i, -1], theory_K[i], exact_KxV[i, -1]),
            "best_lr": _entry(q.lr_KxU[i, best_i[i]], q.lr_formula_K[i]),
            "best_edge_gap": _entry(q.u_U[best_i[i]], 1 / (1 + kap)),
            "rescaled_steps_best_lr": _entry(res_best_K[i], 1, res_exact_KxV[i, :-1].min()),
            "rescaled_steps_lr_1": _entry(res_KxV[i, -1], 1, res_exact_KxV[i, -1]),
        }
    return per_kappa


def _quadratics(cfg: Config) -> tuple[dict, dict]:
    """Part 1, the quadratics: steps against kappa, raw and rescaled; (arrays, summary)."""
    q = _quadratic_problems(cfg)
    kappa_K = q.kappa_K
    theory_K = steps_theory(kappa_K, cfg.tol)
    budget = int(math.ceil(cfg.step_budget * theory_K.max())) + 16
    counts = _quadratic_counts(cfg, q, budget)
    steps_KxV, res_KxV = counts["steps"], counts["rescaled"]
    best_K = steps_KxV[:, :-1].min(axis=1)
    res_best_K = res_KxV[:, :-1].min(axis=1)
    arrays = {
        "kappa_K": kappa_K,
        "edge_gap_U": q.u_U,
        "steps_KxU": steps_KxV[:, :-1],
        "steps_formula_K": steps_KxV[:, -1],
        "steps_theory_K": theory_K,
        "rescaled_steps_KxU": res_KxV[:, :-1],
        "rescaled_steps_formula_K": res_KxV[:, -1],
    }
    fit = kappa_K >= cfg.slope_kappa_min
    summary = {
        "criterion": "|grad f(x_T)| <= tol with |grad f(x_0)| = 1; worst of "
        f"{cfg.num_starts} starts; best of {cfg.num_lrs} lrs (2/L)(1 - u) and the "
        "formula lr 2/(L + mu); theory_same_lr_grid: the exact count for the same lrs",
        "tol": cfg.tol,
        "steps_budget": budget,
        "slope_loglog": {
            "measured": loglog_slope(kappa_K[fit], best_K[fit]),
            "theory": 1.0,
            "theory_exact_formula": loglog_slope(kappa_K[fit], theory_K[fit]),
            "kappa_range": [float(kappa_K[fit].min()), float(kappa_K[fit].max())],
        },
        "slope_loglog_formula_lr": _entry(loglog_slope(kappa_K[fit], steps_KxV[fit, -1]), 1.0),
        "steps_over_kappa_at_kappa_max": {
            "measured": float(best_K[-1] / kappa_K[-1]),
            "theory": 0.5 * math.log(1 / cfg.tol),
            "note": "theory: (1/2) ln(1/tol), the large-kappa limit",
        },
        "agreement_with_exact": _agreement(steps_KxV, counts["exact"]),
        "rescaled_slope_loglog": _entry(loglog_slope(kappa_K[fit], res_best_K[fit]), 0),
        "rescaled_steps_lr_1_max": _entry(res_KxV[:, -1].max(), 1),
        "rescaled_agreement_with_exact": _agreement(res_KxV, counts["rescaled_exact"]),
        "per_kappa": _per_kappa(q, theory_K, counts),
    }
    return arrays, summary


def _regression_problem(cfg: Config, name: str, X: np.ndarray, y: np.ndarray) -> tuple[dict, dict]:
    """One least-squares problem (raw or standardized) from w = 0: (arrays, summary entry)."""
    H = X.T @ X / len(y)
    lam, Q = np.linalg.eigh(H)
    mu, L = lam
    kap = L / mu
    theory = float(steps_theory(kap, cfg.regression_tol, power=2))
    budget = int(math.ceil(cfg.step_budget * theory)) + 16
    record_every = max(1, -(-budget // cfg.max_records))
    _, lr_U = _lr_grid(cfg, np.array([L]))
    lr_V = np.concatenate([lr_U[0], [2 / (L + mu)]])
    run = _record_float64(X, y, np.zeros((len(lr_V), 2)), lr_V, budget, record_every)
    gap_VxP = loss_gap(np.asarray(run.path), X, y)
    reached = gap_VxP <= cfg.regression_tol
    steps_V = np.where(reached.any(1), reached.argmax(1) * record_every, np.inf)
    # Exact: the gap's eigen-components shrink by (1 - lr lambda_i)^2 per step.
    w_star = np.linalg.lstsq(X, y, rcond=None)[0]
    share = lam * (Q.T @ w_star) ** 2
    a0 = np.sqrt(share / share.sum())
    exact_V = steps_exact(
        np.broadcast_to(a0, (len(lr_V), 2)),
        1 - lr_V[:, None] * lam[None, :],
        math.sqrt(cfg.regression_tol),
        budget,
    )
    best = int(np.argmin(steps_V[:-1]))
    arrays = {
        f"{name}_X": X,
        f"{name}_y": y,
        f"{name}_lr_U": lr_V[:-1],
        f"{name}_steps_U": steps_V[:-1],
        f"{name}_best_path_Px2": np.asarray(run.path[best]),
        f"{name}_best_gap_P": gap_VxP[best],
        f"{name}_formula_gap_P": gap_VxP[-1],
        f"{name}_step_P": np.arange(gap_VxP.shape[1]) * record_every,
    }
    entry = {
        "kappa": float(kap),
        "hessian_eigenvalues": [float(mu), float(L)],
        "w_star": w_star.tolist(),
        "steps_best_lr": _entry(steps_V[best], theory, exact_V[:-1].min()),
        "steps_formula_lr": _entry(steps_V[-1], theory, exact_V[-1]),
        "best_lr": _entry(lr_V[best], 2 / (L + mu)),
        "steps_resolution": record_every,
        "steps_budget": budget,
    }
    return arrays, entry


def _regression(cfg: Config, data_key: jax.Array) -> tuple[dict, dict]:
    """Part 2, least squares raw against standardized: (arrays, summary)."""
    # sweep.descend records paths one run at a time on CPU (its recording path maps runs
    # with batch_size 1), too slow for millions of steps, and in float32 only (see
    # `_record_float64`).
    arrays, reg = {}, {}
    for name, (X, y) in make_data(data_key, cfg).items():
        run_arrays, reg[name] = _regression_problem(cfg, name, X, y)
        arrays.update(run_arrays)
    raw, std = reg["raw"], reg["standardized"]
    summary = {
        "criterion": "L(w_T) - L* <= tol (L(0) - L*); theory at lr 2/(L + mu): "
        "ceil(ln(1/tol) / (2 ln(1/rho))); measured steps are multiples of steps_resolution",
        "tol": cfg.regression_tol,
        "feature_scales": list(cfg.feature_scales),
        "num_samples": cfg.num_samples,
        **reg,
        "steps_ratio_raw_over_standardized": {
            "measured": raw["steps_best_lr"]["measured"] / std["steps_best_lr"]["measured"],
            "measured_formula_lr": raw["steps_formula_lr"]["measured"]
            / std["steps_formula_lr"]["measured"],
            "theory": raw["steps_formula_lr"]["theory"] / std["steps_formula_lr"]["theory"],
        },
    }
    return arrays, summary


def compute(cfg: Config) -> tuple[dict, dict]:
    """The quadratics, then least squares raw against standardized: (arrays, summary)."""
    key = jax.random.key(cfg.seed)
    (data_key,) = jax.random.split(key, 1)
    del key
    quad_arrays, quad_summary = _quadratics(cfg)
    reg_arrays, reg_summary = _regression(cfg, data_key)
    return {**quad_arrays, **reg_arrays}, {"quadratic": quad_summary, "regression": reg_summary}


# ----------------------------------------------------------------------------- plot


def _plot_steps_vs_kappa(ax, arrays: dict, cfg: Config, summary: dict) -> None:
    q = summary["quadratic"]
    kappa_K = arrays["kappa_K"]
    fine = np.logspace(0, np.log10(kappa_K.max()), 300)
    best_K = arrays["steps_KxU"].min(axis=1)
    ax.plot(fine, steps_theory(fine, cfg.tol), "k-", lw=0.9, label="theory ⌈ln(1/tol) / ln(1/ρ)⌉")
    ax.plot(fine, 0.5 * fine * math.log(1 / cfg.tol), "k:", lw=0.9, label="(κ/2) ln(1/tol)")
    ax.plot(kappa_K, best_K, "o", color="C0", ms=4, label="best lr of the sweep")
    ax.plot(kappa_K, arrays["steps_formula_K"], "x", color="C1", ms=5, label="lr = 2/(1 + κ)")
    ax.plot(
        kappa_K,
        arrays["rescaled_steps_KxU"].min(axis=1),
        "o",
        color="C2",
        ms=4,
        label="rescaled, best lr of the sweep",
    )
    ax.plot(
        kappa_K, arrays["rescaled_steps_formula_K"], "x", color="C3", ms=5, label="rescaled, lr = 1"
    )
    ax.set(xscale="log", yscale="log", xlabel="condition number κ (log scale)")
    ax.set_ylabel(f"steps to |∇f| ≤ {cfg.tol:g} |∇f(x0)| (log scale)")
    sl, rs = q["slope_loglog"], q["rescaled_slope_loglog"]
    ax.set_title(
        f"f = (x² + κy²)/2: log-log slope {sl['measured']:.3f} (theory 1);\n"
        f"rescaled (κ → 1): slope {round(rs['measured'], 3) + 0.0:.3f} (theory 0)",
        fontsize=8,
    )
    ax.set_ylim(0.5, None)
    ax.legend(loc="upper left", fontsize=6)


def _plot_lr_sweep(ax, arrays: dict, summary: dict) -> None:
    steps_KxU = arrays["steps_KxU"]
    u_U, kappa_K = arrays["edge_gap_U"], arrays["kappa_K"]
    log_steps = np.log10(np.where(np.isfinite(steps_KxU), steps_KxU, np.nan))
    plotting.heatmap(
        ax,
        log_steps,
        u_U,
        kappa_K,
        xlabel="u = 1 − lr κ/2 (log scale)",
        ylabel="κ (log scale)",
        log_x=True,
        log_y=True,
        cbar_label="log10 steps to tolerance",
    )
    ax.plot(1 / (1 + kappa_K), kappa_K, "--", color="C1", lw=1.2, label="lr = 2/(1 + κ)")
    ax.plot(
        u_U[np.argmin(steps_KxU, axis=1)],
        kappa_K,
        "o",
        color="C3",
        ms=3.5,
        mec="white",
        mew=0.5,
        label="best lr of the sweep",
    )
    ax.set_title(
        f"steps over the lr sweep (blank: not within {summary['quadratic']['steps_budget']} steps)",
        fontsize=8,
    )
    ax.legend(loc="lower left", fontsize=6)


def _regression_panel(ax, arrays: dict, summary: dict, name: str, title: str) -> None:
    X, y = arrays[f"{name}_X"], arrays[f"{name}_y"]
    w_star = np.asarray(summary["regression"][name]["w_star"])
    path = arrays[f"{name}_best_path_Px2"]
    h = 1.3 * float(np.max(np.abs(w_star)))
    bounds = np.stack([w_star - h, w_star + h], axis=1)
    plotting.contour_paths(
        ax,
        least_squares(X, y),
        bounds,
        paths=path[None],
        points={"minimum": w_star[None]},
        levels=20,
        log_levels=True,
        legend=False,
    )
    ax.set_aspect("equal")  # the contours' true shape
    r = summary["regression"][name]
    n = r["steps_best_lr"]["measured"]
    ax.set(xlabel="w1", ylabel="w2")
    ax.set_title(
        f"{title}\nκ = {r['kappa']:.3g}, {n:,.0f} step{'' if n == 1 else 's'} at best lr",
        fontsize=8,
    )
    ax.text(
        0.03,
        0.03,
        f"contour ellipses {math.sqrt(r['kappa']):,.0f}×\nlonger than wide (√κ)",
        transform=ax.transAxes,
        fontsize=6.5,
        zorder=7,
        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "none", "alpha": 0.85},
    )


def _plot_gaps(ax, arrays: dict, cfg: Config, summary: dict) -> None:
    for name, color in (("raw", "C3"), ("standardized", "C0")):
        step_P = arrays[f"{name}_step_P"]
        for key, ls, what in (("best", "-", "best lr"), ("formula", "--", "lr = 2/(L + μ)")):
            gap = np.maximum(arrays[f"{name}_{key}_gap_P"], 1e-12)
            ax.plot(step_P + 1, gap, ls, color=color, lw=1.1, label=f"{name}, {what}")
    ax.axhline(cfg.regression_tol, color="k", lw=0.7, ls=":", label=f"tol = {cfg.regression_tol:g}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="step + 1 (log scale)",
        ylabel="(L − L*) / (L(0) − L*) (log scale)",
        ylim=(1e-8, 3),
    )
    ratio = summary["regression"]["steps_ratio_raw_over_standardized"]
    ax.set_title(
        f"raw needs {ratio['measured']:,.0f}× the steps (at lr = 2/(L + μ):\n"
        f"{ratio['measured_formula_lr']:,.0f}×, theory {ratio['theory']:,.0f}×)",
        fontsize=8,
    )
    ax.legend(loc="lower left", bbox_to_anchor=(0.12, 0.0), fontsize=6)


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    figs = {}
    with plt.style.context(plotting.STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 3.1), layout="constrained")
        _plot_steps_vs_kappa(ax1, arrays, cfg, summary)
        _plot_lr_sweep(ax2, arrays, summary)
        figs["steps_vs_kappa"] = fig

        fig, axes = plt.subplots(1, 3, figsize=(plotting.FULL, 2.7), layout="constrained")
        scales = ", ".join(f"{s:g}" for s in cfg.feature_scales)
        _regression_panel(axes[0], arrays, summary, "raw", f"raw (feature scales {scales})")
        _regression_panel(axes[1], arrays, summary, "standardized", "standardized")
        _plot_gaps(axes[2], arrays, cfg, summary)
        figs["regression"] = fig
    return figs


main = cli.study_main(__name__, compute, plot)


if __name__ == "__main__":
    main()
