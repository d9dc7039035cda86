"""How gradient descent searches for a minimum: J = theta1^2 + theta2^2.

theta <- theta - alpha * grad J contracts every step by |1 - 2 alpha| (grad J = 2 theta),
so it converges iff alpha < 1. Measured here: the learning process from several starts
(figure and GIF), the per-step contraction against |1 - 2 alpha|, the divergence threshold
from a sweep of alpha over [0.001, 1.2] (theory 1.0), and the lecture's 1-D examples:
x^2 sin x with step 0.005 for 50 iterations from x = 2.5, and a parabola at lr 0.98 that
oscillates around its minimum.

Run: make descent   (smoke: python -m studies.descent --quick; about ten seconds)
"""

import dataclasses
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

from sandbox import cli, config, descent, landscapes, plotting, sweep

NAME = "descent"


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the sweep's random starts and the GIF's balls
    # The learning process.
    lr: float = config.field(0.1, gt=0)  # alpha of the paths and the GIF
    starts: tuple[tuple[float, float], ...] = (
        (1.8, 1.5),
        (-1.6, 1.8),
        (-1.9, -1.0),
        (1.0, -1.9),
        (0.3, 1.95),
    )
    """(x, y) starts of the learning-process figure"""
    steps: int = config.count(30, 100_000)  # GD steps of the paths and the GIF
    # Contraction per step against |1 - 2 alpha|.
    contraction_lrs: tuple[float, ...] = config.field(
        (0.05, 0.1, 0.25, 0.4, 0.6, 0.75, 0.9, 0.98, 1.02, 1.1), gt=0
    )
    """alphas whose contraction per step is measured"""
    contraction_steps: int = config.count(20, 100_000)  # steps of each contraction run
    # Divergence threshold: alpha swept over [lr_min, lr_max] from random starts.
    lr_min: float = config.field(0.001, gt=0)  # the sweep's smallest alpha
    lr_max: float = config.field(1.2, gt=0)  # the sweep's largest alpha
    num_lrs: int = config.count(4096, 2**20)  # alphas of the sweep
    starts_per_lr: int = config.count(16, 4096)  # random starts per alpha
    sweep_steps: int = config.count(500, 100_000)  # GD steps per run of the sweep
    # The GIF: many balls at once.
    gif_balls: int = config.count(64, 4096)  # balls of the GIF
    # 1-D examples of the lecture.
    x2sinx_lr: float = config.field(0.005, gt=0)  # step size on x^2 sin x
    x2sinx_steps: int = config.count(50, 100_000)  # steps on x^2 sin x
    x2sinx_start: float = 2.5  # start on x^2 sin x
    parabola_lr: float = config.field(0.98, gt=0)  # step size on the parabola
    parabola_steps: int = config.count(30, 100_000)  # steps on the parabola

    RELATIONS = (config.relation("lr_min < lr_max", lambda c: c.lr_min < c.lr_max),)


QUICK = Config(num_lrs=256, starts_per_lr=2, sweep_steps=200, gif_balls=16)


def _contraction(cfg: Config, fn) -> tuple[dict, dict]:
    """Per-step contraction against |1 - 2 alpha|: (arrays, summary entries)."""
    # The geometric mean of |theta_t+1| / |theta_t| along a path.
    lrs_C = np.asarray(cfg.contraction_lrs, np.float32)
    con = sweep.descend(
        fn,
        np.tile(np.float32([[1.0, 0.5]]), (len(lrs_C), 1)),
        steps=cfg.contraction_steps,
        lr=lrs_C,
        record_every=1,
        bound=1e30,
    )
    norm_CxT = np.linalg.norm(con.path.astype(np.float64), axis=-1)
    measured_C = np.array([descent.geometric_rate(row) for row in norm_CxT])
    theory_C = np.abs(1 - 2 * lrs_C.astype(np.float64))
    arrays = {
        "contraction_lr_C": lrs_C,
        "contraction_measured_C": measured_C,
        "contraction_theory_C": theory_C,
    }
    summary = {
        "contraction_max_abs_error": {
            "measured": float(np.max(np.abs(measured_C - theory_C))),
            "theory": 0.0,
            "note": "geometric-mean |theta_t+1|/|theta_t| vs |1 - 2 alpha| per alpha",
        },
        "contraction": {
            f"{a:g}": {"measured": float(m), "theory": float(t)}
            for a, m, t in zip(lrs_C, measured_C, theory_C, strict=True)
        },
    }
    return arrays, summary


def _divergence_threshold(cfg: Config, fn, box: np.ndarray, key: jax.Array) -> tuple[dict, dict]:
    """The alpha where GD stops converging, from an alpha sweep: (arrays, summary entry)."""
    # Alpha grid x random starts; a run converges when it ends closer to the minimum than
    # it started.
    lr_L = np.linspace(cfg.lr_min, cfg.lr_max, cfg.num_lrs, dtype=np.float32)
    s = cfg.starts_per_lr
    x0_Nx2 = np.asarray(
        jax.random.uniform(key, (len(lr_L) * s, 2), minval=box[:, 0], maxval=box[:, 1]),
        np.float32,
    )
    run = sweep.descend(fn, x0_Nx2, steps=cfg.sweep_steps, lr=np.repeat(lr_L, s))
    ratio_LxS = (np.linalg.norm(run.x, axis=1) / np.linalg.norm(x0_Nx2, axis=1)).reshape(-1, s)
    ratio_LxS = np.where(run.diverged.reshape(-1, s), np.inf, ratio_LxS)
    converged_L = np.all(ratio_LxS < 1, axis=1)
    last_ok, first_bad = descent.divergence_bracket(lr_L, converged_L)
    arrays = {"lr_L": lr_L, "ratio_LxS": ratio_LxS, "converged_L": converged_L}
    summary = {
        "measured": 0.5 * (last_ok + first_bad),
        "bracket": [last_ok, first_bad],
        "theory": 1.0,
        "note": f"{cfg.num_lrs} alphas x {s} starts, {cfg.sweep_steps} steps",
    }
    return arrays, summary


def _one_d(cfg: Config) -> tuple[dict, dict]:
    """The lecture's 1-D examples, x^2 sin x and the oscillating parabola: (arrays, summary)."""
    x2 = landscapes.get("x2sinx")
    one_d = sweep.descend(
        x2.fn,
        np.float32([[cfg.x2sinx_start]]),
        steps=cfg.x2sinx_steps,
        lr=cfg.x2sinx_lr,
        record_every=1,
    )
    x2_path_T = one_d.path[0, :, 0]
    nearest_min = x2.minima[np.argmin(np.abs(x2.minima[:, 0] - x2_path_T[-1])), 0]
    par = sweep.descend(
        lambda x: x[0] ** 2,
        np.float32([[1.0]]),
        steps=cfg.parabola_steps,
        lr=cfg.parabola_lr,
        record_every=1,
    )
    par_path_T = par.path[0, :, 0].astype(np.float64)
    par_ratio = float(np.median(par_path_T[1:] / par_path_T[:-1]))
    arrays = {"x2sinx_path_T": x2_path_T, "parabola_path_T": par.path[0, :, 0]}
    summary = {
        "x2sinx": {
            "start": cfg.x2sinx_start,
            "lr": cfg.x2sinx_lr,
            "steps": cfg.x2sinx_steps,
            "final_x": float(x2_path_T[-1]),
            "final_f": float(one_d.loss[0]),
            "nearest_local_minimum": float(nearest_min),
        },
        "parabola_lr_0.98": {
            "lr": cfg.parabola_lr,
            "ratio_per_step": {"measured": par_ratio, "theory": 1 - 2 * cfg.parabola_lr},
            "oscillates": bool(np.all(np.diff(np.sign(par_path_T[par_path_T != 0])) != 0)),
        },
    }
    return arrays, summary


def compute(cfg: Config) -> tuple[dict, dict]:
    """The learning process, the contraction, the threshold, the GIF, the 1-D examples."""
    key = jax.random.key(cfg.seed)
    sweep_key, gif_key = jax.random.split(key)
    del key
    bowl = landscapes.get("bowl")
    box = bowl.bounds

    # The learning process from several starts.
    starts_Sx2 = np.asarray(cfg.starts, np.float32)
    proc = sweep.descend(bowl.fn, starts_Sx2, steps=cfg.steps, lr=cfg.lr, record_every=1)
    con_arrays, con_summary = _contraction(cfg, bowl.fn)
    thr_arrays, thr_summary = _divergence_threshold(cfg, bowl.fn, box, sweep_key)
    # Many balls at once, for the GIF.
    balls_Bx2 = np.asarray(
        jax.random.uniform(gif_key, (cfg.gif_balls, 2), minval=box[:, 0], maxval=box[:, 1]),
        np.float32,
    )
    gif = sweep.descend(bowl.fn, balls_Bx2, steps=cfg.steps, lr=cfg.lr, record_every=1)
    one_d_arrays, one_d_summary = _one_d(cfg)

    arrays = {
        "path_SxTx2": proc.path,
        "loss_SxT": proc.losses,
        **con_arrays,
        **thr_arrays,
        "gif_path_BxTx2": gif.path,
        **one_d_arrays,
    }
    summary = {**con_summary, "divergence_threshold": thr_summary, **one_d_summary}
    return arrays, summary


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    bowl = landscapes.get("bowl")
    figs = {}
    with plt.style.context(plotting.STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 3.0), layout="constrained")
        plotting.contour_paths(
            ax1, bowl.fn, bowl.bounds, paths=arrays["path_SxTx2"], points={"minimum": bowl.minima}
        )
        ax1.set(xlabel="θ1", ylabel="θ2", title=f"J = θ1² + θ2², α = {cfg.lr:g}")
        ax1.set_aspect("equal")
        steps_T = np.arange(arrays["loss_SxT"].shape[1])
        plotting.loss_curves(
            ax2, steps_T, arrays["loss_SxT"], labels=[f"start {tuple(s)}" for s in cfg.starts]
        )
        ax2.set(xlabel="step t", ylabel="J(θ_t) (log)", title="the learning process")
        figs["learning_process"] = fig

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
        a = np.linspace(0, max(cfg.contraction_lrs) * 1.05, 200)
        ax1.plot(a, np.abs(1 - 2 * a), "k-", lw=1, label="theory |1 − 2α|")
        ax1.plot(
            arrays["contraction_lr_C"], arrays["contraction_measured_C"], "o", label="measured"
        )
        ax1.axhline(1, color="C3", ls=":", lw=0.8)
        ax1.set(xlabel="learning rate α", ylabel="|θ_t+1| / |θ_t|", title="contraction per step")
        ax1.legend()
        lr_L, ratio = arrays["lr_L"], arrays["ratio_LxS"]
        med = np.median(np.where(np.isfinite(ratio), ratio, np.nan), axis=1)
        ax2.semilogy(lr_L, np.maximum(med, 1e-40), lw=1)
        thr = summary["divergence_threshold"]
        ax2.axvline(1.0, color="k", ls="--", lw=0.8, label="theory α = 1")
        ax2.axvline(
            thr["measured"], color="C3", ls=":", lw=1.2, label=f"measured {thr['measured']:.4f}"
        )
        ax2.set(
            xlabel="learning rate α",
            ylabel="|θ_T| / |θ_0| (median, log)",
            title=f"after {cfg.sweep_steps} steps",
        )
        ax2.legend(loc="lower left")
        figs["learning_rate"] = fig

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
        x2 = landscapes.get("x2sinx")
        plotting.curve_1d(ax1, x2.fn, x2.bounds[0], path_T=arrays["x2sinx_path_T"])
        ax1.set(
            xlabel="x",
            ylabel="f(x) = x² sin x",
            title=f"step {cfg.x2sinx_lr:g}, {cfg.x2sinx_steps} iterations from x = "
            f"{cfg.x2sinx_start:g}",
        )
        par_T = arrays["parabola_path_T"]
        plotting.curve_1d(ax2, lambda x: x[0] ** 2, (-1.1, 1.1), path_T=par_T)
        ax2.set(xlabel="x", ylabel="f(x) = x²", title=f"lr {cfg.parabola_lr:g}: oscillation")
        figs["one_d"] = fig
    return figs


def animate(arrays: dict, cfg: Config, summary: dict, folder: Path) -> None:
    """descent.gif: the balls of the learning-process figure, step by step."""
    del summary
    bowl = landscapes.get("bowl")
    plotting.animate_paths(
        bowl.fn,
        bowl.bounds,
        arrays["gif_path_BxTx2"],
        folder / "descent.gif",
        points={"minimum": bowl.minima},
        title=f"GD on J = θ1² + θ2², α = {cfg.lr:g}",
        tail=8,
    )


main = cli.study_main(__name__, compute, plot, artifacts=animate)


if __name__ == "__main__":
    main()
