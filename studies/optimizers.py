"""Which optimizer, on which landscape? Eight Optax optimizers, tuned fairly on eight functions.

Fair by construction: every optimizer starts from the same starts with the same step budget,
and each is tuned over a full grid: 32 log-spaced learning rates in [1e-6, 1] and, where it
has one, four values of its momentum-like parameter (momentum for momentum and nesterov,
decay for rmsprop, b1 for adam, adamw and lion). Each (function, optimizer) grid is one
`sweep.descend` call over settings x starts. Reported for the best setting (highest success
rate, then fewest median steps): the success rate (endpoint within `success_tol` of a global
minimum), the median number of steps until |grad f| <= `grad_tol` over successful runs, and
the median final loss. Also: heatmaps of success over lr x beta, and the lecture's picture of
all optimizers from one start on one surface, with its animation.

Run: make optimizers   (about two minutes on 2 CPU cores; smoke: --quick, seconds)
"""

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import matplotlib.pyplot as plt
import numpy as np

from sandbox import cli, config, engine, landscapes, optim, plotting, results, sweep

NAME = "optimizers"


Landscape2D = Literal[tuple(landscapes.names_2d_with_minimum())]
Optimizer = Literal[tuple(optim.names())]

# The momentum-like hyperparameter of each optimizer that has one.
BETA = {
    "momentum": "momentum",
    "nesterov": "momentum",
    "rmsprop": "decay",
    "adam": "b1",
    "adamw": "b1",
    "lion": "b1",
}


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the random starts
    functions: tuple[Landscape2D, ...] = config.field(
        (
            "rosenbrock",
            "himmelblau",
            "rastrigin",
            "beale",
            "ackley",
            "six_hump_camel",
            "styblinski_tang",
            "goldstein_price",
        ),
        distinct=True,
    )
    """2-D landscapes of the table (those with a global minimum)"""
    optimizers: tuple[Optimizer, ...] = config.field(optim.DETERMINISTIC, distinct=True)
    """optimizers of the table"""
    num_starts: int = config.count(512, 2**20)  # random starts per landscape
    steps: int = config.count(2000, 10**6)  # steps per run
    lr_range: tuple[float, float] = config.field((1e-6, 1.0), gt=0, increasing=True)
    """(lo, hi) of the log-spaced lrs tuned over"""
    num_lrs: int = config.count(32, 4096)  # lrs tuned over
    # Increasing: the rows of the lr x beta heatmaps.
    betas: tuple[float, ...] = config.field((0.5, 0.8, 0.9, 0.95), 0, lt=1, increasing=True)
    """betas tuned over"""
    success_tol: float = config.field(1e-2, gt=0)  # distance to a global minimum: success
    grad_tol: float = config.field(1e-3, gt=0)  # |grad f| that counts as converged
    # The lecture's picture: every optimizer from one start on one surface.
    picture_function: Landscape2D = "rosenbrock"  # the picture's surface
    picture_start: tuple[float, float] = (-1.2, 1.0)  # the classic Rosenbrock start
    picture_steps: int = config.count(600, 10**6)  # steps of each optimizer in the picture

    RELATIONS = (
        # A path counts only while it stays in the surface's box: one from outside never does.
        config.relation(
            "picture_start inside the bounds of picture_function",
            lambda c: _inside(c.picture_start, c.picture_function),
        ),
    )


def _inside(point: tuple[float, float], name: str) -> bool:
    b = landscapes.get(name).bounds
    return bool(np.all((np.asarray(point) >= b[:, 0]) & (np.asarray(point) <= b[:, 1])))


QUICK = Config(
    functions=("himmelblau", "rosenbrock"),
    optimizers=("sgd", "momentum", "adam", "lion"),
    num_starts=64,
    steps=300,
    num_lrs=8,
    betas=(0.5, 0.9),
    picture_steps=100,
)


def _grid(cfg: Config, optimizer: str) -> tuple[np.ndarray, np.ndarray | None]:
    """lr_G and beta_G (None without a beta) of every setting, lr-major."""
    lr_L = np.geomspace(*cfg.lr_range, cfg.num_lrs)
    if optimizer not in BETA:
        return lr_L, None
    lr_G, beta_G = np.meshgrid(lr_L, np.asarray(cfg.betas), indexing="ij")
    return lr_G.ravel(), beta_G.ravel()


def _tune(fn, lscape, starts_Sx2, cfg: Config, optimizer: str) -> dict:
    """One sweep over all settings x starts; per-setting success, steps and final loss."""
    lr_G, beta_G = _grid(cfg, optimizer)
    g, s = len(lr_G), len(starts_Sx2)
    hyper = {"lr": np.repeat(lr_G, s).astype(np.float32)}
    if beta_G is not None:
        hyper[BETA[optimizer]] = np.repeat(beta_G, s).astype(np.float32)
    run = sweep.descend(
        fn,
        np.tile(starts_Sx2, (g, 1)),
        optimizer=optimizer,
        steps=cfg.steps,
        tol=cfg.grad_tol,
        **hyper,
    )
    glob = lscape.global_minima
    dist_N = np.min(np.linalg.norm(run.x[:, None, :] - glob[None], axis=-1), axis=1)
    success_GxS = ((dist_N <= cfg.success_tol) & ~run.diverged).reshape(g, s)
    steps_GxS = np.where(
        success_GxS & (run.steps_to_tol.reshape(g, s) >= 0), run.steps_to_tol.reshape(g, s), -1
    )
    loss_GxS = np.where(run.diverged, np.inf, run.loss).reshape(g, s)
    rate_G = success_GxS.mean(axis=1)
    med_steps_G = np.array([np.median(r[r >= 0]) if np.any(r >= 0) else np.inf for r in steps_GxS])
    # Best: highest success rate, then fewest median steps, then lowest median loss.
    med_loss_G = np.median(loss_GxS, axis=1)
    best = int(np.lexsort((med_loss_G, med_steps_G, -rate_G))[0])
    return {
        "lr_G": lr_G,
        "beta_G": beta_G,
        "rate_G": rate_G,
        "med_steps_G": med_steps_G,
        "med_loss_G": med_loss_G,
        "best": best,
        "diverged_G": run.diverged.reshape(g, s).mean(axis=1),
    }


def _table(cfg: Config, key: jax.Array) -> tuple[dict, dict]:
    """Every (function, optimizer) cell tuned over its grid: (arrays, summary["table"])."""
    arrays, table = {}, {}
    cells = [(fi, fname, o) for fi, fname in enumerate(cfg.functions) for o in cfg.optimizers]
    starts = {}
    for fi, fname, oname in engine.bar(cells, desc=f"{NAME}: function x optimizer"):
        lscape = landscapes.get(fname)
        b = lscape.bounds
        if fname not in starts:
            starts[fname] = np.asarray(
                jax.random.uniform(
                    jax.random.fold_in(key, fi), (cfg.num_starts, 2), minval=b[:, 0], maxval=b[:, 1]
                ),
                np.float32,
            )
        t = _tune(lscape.fn, lscape, starts[fname], cfg, oname)
        i = t["best"]
        table.setdefault(fname, {})[oname] = {
            "best_lr": float(t["lr_G"][i]),
            **({"best_beta": float(t["beta_G"][i])} if t["beta_G"] is not None else {}),
            "success_rate": float(t["rate_G"][i]),
            "median_steps_to_tol": float(t["med_steps_G"][i]),
            "median_final_loss": float(t["med_loss_G"][i]),
            "settings_tried": len(t["lr_G"]),
        }
        arrays[f"{fname}/{oname}/success_G"] = t["rate_G"]
        arrays[f"{fname}/{oname}/lr_G"] = t["lr_G"]
        if t["beta_G"] is not None:
            arrays[f"{fname}/{oname}/beta_G"] = t["beta_G"]
    return arrays, table


def _picture_path(cfg: Config, oname: str) -> tuple[np.ndarray, dict]:
    """One optimizer's path [T, 2] in the picture, and the setting chosen for it."""
    # The grid setting with the lowest mean log-loss along a path that stays inside the box
    # (fast and steady beats a lucky chaotic endpoint); one recorded sweep over the grid.
    pl = landscapes.get(cfg.picture_function)
    start_1x2 = np.float32([cfg.picture_start])
    lr_G, beta_G = _grid(cfg, oname)
    hyper = {"lr": lr_G.astype(np.float32)}
    if beta_G is not None:
        hyper[BETA[oname]] = beta_G.astype(np.float32)
    r = sweep.descend(
        pl.fn,
        np.repeat(start_1x2, len(lr_G), 0),
        optimizer=oname,
        steps=cfg.picture_steps,
        record_every=1,
        **hyper,
    )
    gap_GxT = np.maximum(r.losses.astype(np.float64) - pl.f_min, 1e-12)
    # Paths that leave the picture's box are not candidates.
    inside_G = np.all((r.path >= pl.bounds[:, 0]) & (r.path <= pl.bounds[:, 1]), axis=(1, 2))
    score_G = np.where(r.diverged | ~inside_G, np.inf, np.mean(np.log10(gap_GxT), axis=1))
    i = int(np.argmin(score_G))
    chosen = {"lr": float(lr_G[i]), "final_loss": float(r.loss[i])}
    if beta_G is not None:
        chosen[BETA[oname]] = float(beta_G[i])
    return r.path[i], chosen


def compute(cfg: Config) -> tuple[dict, dict]:
    """The tuned table, then the picture of every optimizer from one start."""
    key = jax.random.key(cfg.seed)
    arrays, table = _table(cfg, key)
    paths, chosen = [], {}
    for oname in cfg.optimizers:
        path_Tx2, chosen[oname] = _picture_path(cfg, oname)
        paths.append(path_Tx2)
    arrays["picture_path_OxTx2"] = np.stack(paths)
    summary = {
        "table": table,
        "picture": {"function": cfg.picture_function, "start": cfg.picture_start, **chosen},
        "note": "per function and optimizer, the best of the lr x beta grid; success = "
        f"endpoint within {cfg.success_tol} of a global minimum after {cfg.steps} steps from "
        f"the same {cfg.num_starts} starts; steps = median over successful runs of the first "
        f"step with |grad f| <= {cfg.grad_tol}",
    }
    return arrays, summary


def markdown_table(summary: dict, cfg: Config) -> str:
    lines = [
        "| function | " + " | ".join(cfg.optimizers) + " |",
        "|---|" + "---|" * len(cfg.optimizers),
    ]
    for fname, row in summary["table"].items():
        cells = []
        for o in cfg.optimizers:
            r = row[o]
            steps = r["median_steps_to_tol"]
            steps = "-" if not np.isfinite(steps) else f"{steps:.0f}"
            cells.append(f"{100 * r['success_rate']:.0f}% / {steps}")
        lines.append(f"| {fname} | " + " | ".join(cells) + " |")
    return (
        "Success rate / median steps to |grad f| <= tol, best setting per cell.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    figs = {}
    with_beta = [o for o in cfg.optimizers if o in BETA]
    for fname in cfg.functions:
        if not with_beta:
            break
        with plt.style.context(plotting.STYLE):
            fig, axes = plotting.panel_grid(len(with_beta), 3, 2.2, 0.4)
            for ax, oname in zip(axes.flat, with_beta, strict=False):
                lr = arrays[f"{fname}/{oname}/lr_G"].reshape(cfg.num_lrs, -1)[:, 0]
                success = arrays[f"{fname}/{oname}/success_G"].reshape(cfg.num_lrs, -1)
                plotting.heatmap(
                    ax,
                    success.T,
                    lr,
                    np.asarray(cfg.betas),
                    xlabel="learning rate",
                    ylabel=BETA[oname],
                    log_x=True,
                    cbar_label="success",
                    vmin=0.0,
                    vmax=1.0,
                )
                ax.set_title(oname)
            fig.suptitle(f"{fname}: success rate over lr x beta ({cfg.num_starts} starts)")
        figs[f"heatmap_{fname}"] = fig

    pl = landscapes.get(cfg.picture_function)
    paths = arrays["picture_path_OxTx2"]
    with plt.style.context(plotting.STYLE):
        fig, ax = plt.subplots(figsize=(plotting.FULL * 0.7, plotting.FULL * 0.6))
        plotting.contour_paths(
            ax,
            pl.fn,
            pl.bounds,
            points={"minimum": pl.global_minima},
            log_levels=True,
            legend=False,
        )
        for i, oname in enumerate(cfg.optimizers):
            ax.plot(paths[i, :, 0], paths[i, :, 1], lw=1.3, color=f"C{i}", label=oname)
        ax.plot(*cfg.picture_start, "o", color="k", ms=6)
        ax.legend(loc="upper right", ncol=2, fontsize=7)
        ax.set(
            xlabel="x",
            ylabel="y",
            title=f"{cfg.picture_function} from {cfg.picture_start}: each optimizer at its "
            f"best setting, {cfg.picture_steps} steps",
        )
    figs["all_optimizers"] = fig
    return figs


def artifacts(arrays: dict, cfg: Config, summary: dict, folder: Path) -> None:
    """table.md and all_optimizers.gif, from the saved arrays and summary."""
    results.atomic_write_bytes(folder / "table.md", markdown_table(summary, cfg).encode())
    pl = landscapes.get(cfg.picture_function)
    plotting.animate_paths(
        pl.fn,
        pl.bounds,
        arrays["picture_path_OxTx2"],
        folder / "all_optimizers.gif",
        points={"minimum": pl.global_minima},
        colors_N=[f"C{i}" for i in range(len(cfg.optimizers))],
        tail=30,
        tail_paths=len(cfg.optimizers),
        log_levels=True,
        title=f"{len(cfg.optimizers)} optimizers on {cfg.picture_function}",
    )


main = cli.study_main(__name__, compute, plot, artifacts=artifacts)


if __name__ == "__main__":
    main()
