"""How much does the start decide? Success and speed over thousands of starts, per optimizer.

Part 1: `num_starts` starts drawn uniformly in the bounds of each function (himmelblau,
rosenbrock, rastrigin, ackley, six_hump_camel; the same starts for every optimizer). Every
optimizer of `optimizers` (Optax defaults for everything but the learning rate; noisy_sgd
gets one noise seed per run) takes `steps` updates from every start at each learning rate
of `lrs`, one small grid shared by all optimizers, and keeps the lr with the highest success
rate (ties: the larger lr). Success: the endpoint lies within `tol` of a global minimum; a
diverged run fails. At that lr the runs are repeated with their paths recorded every
`record_every` steps; steps to converge is the first recorded step after which a successful
run stays within `tol` of its global minimum. summary.json: per function and optimizer, the
chosen lr, the success rate (and at every lr of the grid), the share diverged and the
quartiles of the steps to converge. Figures: success and median steps per function x
optimizer, the distribution of steps, and maps of where each start ends and how fast.

Part 2: a tanh MLP (`mlp_widths`, plain full-batch GD) on scikit-learn's bundled digits,
its weights drawn N(0, (scale / sqrt(fan_in))^2) for scales from 0.01x to 100x of the usual
fan-in scale. Measured: the final training loss, test accuracy and the gradient norm of
every weight matrix at initialization, against scale. Small scales vanish: the signal and
the first layer's gradient shrink like scale^(depth - 1) (the slope is checked against that
theory value) and the loss stays at chance, ln 10. Large scales explode: saturated tanh
units and huge logits give losses far above chance that GD cannot bring down.

Run: make initialization   (smoke: python -m studies.initialization --quick; 3 to 5 minutes
on 2 CPU cores, quick about 20 s)
"""

import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from matplotlib import colors
from matplotlib.lines import Line2D

from sandbox import basins, cli, config, data, engine, landscapes, optim, plotting, sweep
from sandbox.models import fc

NAME = "initialization"


TEST_FROM = 1437  # digits 1437..1796 (the last 20%) are the MLP's test set
Landscape = Literal[tuple(landscapes.names_2d_with_minimum())]
Optimizer = Literal[tuple(optim.names())]


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the starts, the noise and the MLPs
    # Part 1: optimizers from many starts.
    functions: tuple[Landscape, ...] = (
        "himmelblau",
        "rosenbrock",
        "rastrigin",
        "ackley",
        "six_hump_camel",
    )
    """2-D landscapes with a global minimum"""
    optimizers: tuple[Optimizer, ...] = (*optim.DETERMINISTIC, "noisy_sgd")
    """optimizers compared"""
    num_starts: int = config.count(4096, 2**20)  # random starts per landscape
    steps: int = config.count(2000, 10**6)  # steps per run
    lrs: tuple[float, ...] = config.field((1e-3, 3e-3, 1e-2, 3e-2, 1e-1), gt=0)  # lrs tried
    tol: float = config.field(1e-2, gt=0)  # distance to a global minimum that counts as success
    record_every: int = config.count(10, 10**6)  # resolution of the steps to converge
    map_optimizers: tuple[Optimizer, ...] = ("sgd", "momentum", "adam")  # rows of the start maps
    # Part 2: tanh MLP on digits against the initialization scale.
    mlp_widths: tuple[int, ...] = config.field(
        (64, 32, 32, 32, 10),
        1,
        4096,
        min_len=2,
        rule=(lambda w: w[0] == 64 and w[-1] == 10, "from 64 (8x8 pixels) to 10 (classes)"),
    )
    """layer widths of the MLP"""
    mlp_log10_scale: tuple[float, float] = config.field((-2.0, 2.0), increasing=True)
    """(lo, hi) of the log10 initialization scales"""
    mlp_num_scales: int = config.count(17, 1000)  # initialization scales, log-spaced
    mlp_seeds: int = config.count(2, 1000)  # MLPs per scale
    mlp_steps: int = config.count(300, 10**6)  # full-batch GD steps per MLP
    mlp_lr: float = config.field(0.5, gt=0)  # the MLPs' lr
    mlp_train: int = config.count(1437, TEST_FROM)  # training set: the first mlp_train digits

    RELATIONS = (
        config.relation("record_every divides steps", lambda c: c.steps % c.record_every == 0),
        config.relation(
            "map_optimizers among optimizers",
            lambda c: set(c.map_optimizers) <= set(c.optimizers),
        ),
    )


QUICK = Config(
    functions=("himmelblau", "six_hump_camel"),
    optimizers=("sgd", "momentum", "adam"),
    num_starts=512,
    steps=500,
    lrs=(3e-3, 1e-2, 3e-2),
    mlp_num_scales=5,
    mlp_seeds=1,
    mlp_steps=60,
    mlp_train=512,
)


# ------------------------------------------------------------------ part 1: many starts


def _hyper(opt: str, lr, seeds_N: np.ndarray) -> dict:
    """The optimizer's hyperparameters: lr, and for noisy_sgd its run's noise seed."""
    hyper = {"lr": lr}
    if "seed" in optim.hyperparameters(opt):
        hyper["seed"] = seeds_N.astype(np.int32)
    return hyper


def steps_to_converge(path_NxTx2, targets_kx2, tol: float, record_every: int) -> np.ndarray:
    """First recorded step after which a run stays within `tol` of one of the targets.

    Args:
      path_NxTx2: [N, T', 2] points after 0, k, 2k, ... updates (k = record_every).
      targets_kx2: [k, 2] global minima.
      tol: distance.
      record_every: k.

    Returns:
      [N] int32 steps; -1 where the last recorded point is not within `tol`.
    """
    p = np.asarray(path_NxTx2, np.float64)
    dist_NxT = np.full(p.shape[:2], np.inf)
    for t in np.asarray(targets_kx2, np.float64):
        dist_NxT = np.minimum(dist_NxT, np.linalg.norm(p - t, axis=-1))
    inside_NxT = dist_NxT <= tol
    # Index of the last recorded point outside (-1 when there is none).
    last_out_N = p.shape[1] - 1 - np.argmax(~inside_NxT[:, ::-1], axis=1)
    last_out_N = np.where(inside_NxT.all(axis=1), -1, last_out_N)
    return np.where(inside_NxT[:, -1], (last_out_N + 1) * record_every, -1).astype(np.int32)


def _sweep_lrs(land, x0_Nx2: np.ndarray, opt: str, lr_L, seeds_LN, cfg: Config):
    """Every lr at once, unrecorded: labels [L, N] (`basins.classify`) and diverged [L, N]."""
    nl, n = len(lr_L), len(x0_Nx2)
    run = sweep.descend(
        land.fn,
        np.tile(x0_Nx2, (nl, 1)),
        optimizer=opt,
        steps=cfg.steps,
        **_hyper(opt, np.repeat(lr_L, n), seeds_LN),
    )
    # Labels against every stored minimum (global ones first): which minimum a start
    # reaches; success = a global one.
    label_LxN = basins.classify(run.x, land.minima, cfg.tol, run.diverged).reshape(nl, n)
    return label_LxN, run.diverged.reshape(nl, n)


def _recorded_steps(land, x0_Px2: np.ndarray, opt: str, lr, seeds_P, cfg: Config):
    """Steps to converge [P] of the successful runs at one lr, rerun recorded; and mismatches.

    The same updates (and noise seeds) as the unrecorded pass, for the step from which each
    run stays at its global minimum.
    """
    rec = sweep.descend(
        land.fn,
        x0_Px2,
        optimizer=opt,
        steps=cfg.steps,
        record_every=cfg.record_every,
        **_hyper(opt, lr, seeds_P),
    )
    steps_P = steps_to_converge(rec.path, land.global_minima, cfg.tol, cfg.record_every)
    steps_P[rec.diverged] = -1
    # The recorded rerun takes the same updates, fused differently, so it rounds
    # differently. A run still creeping towards its minimum at the last step (an
    # Adam run along Rosenbrock's valley) can then end just outside `tol` while
    # the first pass ended just inside: it entered at about the last step.
    mismatches = int(np.sum(steps_P < 0))
    steps_P[steps_P < 0] = cfg.steps
    return steps_P, mismatches


def _one_cell(land, x0_Nx2: np.ndarray, opt: str, lr_L: np.ndarray, cfg: Config) -> dict:
    """One function x optimizer: success and divergence per lr, the best lr, labels and steps."""
    nl, n = len(lr_L), len(x0_Nx2)
    seeds_LN = np.arange(nl * n)  # noisy_sgd: run (lr l, start i) has seed l n + i
    label_LxN, diverged_LxN = _sweep_lrs(land, x0_Nx2, opt, lr_L, seeds_LN, cfg)
    ok_LxN = (label_LxN >= 0) & (label_LxN < len(land.global_minima))
    success_L = ok_LxN.mean(axis=1)
    # Highest success; among equals the larger lr (the faster one, as a rule).
    best = nl - 1 - int(np.argmax(success_L[::-1]))
    steps_N = np.full(n, -1, np.int32)
    idx = np.flatnonzero(ok_LxN[best])
    mismatches = 0
    if idx.size:
        steps_N[idx], mismatches = _recorded_steps(
            land, x0_Nx2[idx], opt, lr_L[best], seeds_LN[best * n + idx], cfg
        )
    return {
        "success_L": success_L,
        "diverged_L": diverged_LxN.mean(axis=1),
        "best": best,
        "label_N": label_LxN[best],
        "steps_N": steps_N,
        "mismatches": mismatches,
    }


def _cell_summary(lr_L: np.ndarray, cell: dict) -> dict:
    """summary.json entry of one function x optimizer from `_one_cell`'s result."""
    best, steps_N = cell["best"], cell["steps_N"]
    conv = steps_N[steps_N >= 0]
    q = np.percentile(conv, [10, 25, 50, 75, 90]) if conv.size else [np.nan] * 5
    return {
        "lr": float(lr_L[best]),
        "success_rate": float(cell["success_L"][best]),
        "success_rate_by_lr": {
            f"{a:g}": float(r) for a, r in zip(lr_L, cell["success_L"], strict=True)
        },
        "diverged_rate": float(cell["diverged_L"][best]),
        "steps_to_converge": dict(
            zip(("p10", "p25", "median", "p75", "p90"), map(float, q), strict=True)
        ),
        "recorded_rerun_mismatches": {
            "count": cell["mismatches"],
            "note": "successes whose recorded rerun ended just outside tol (rounding); "
            "their step count is the last step",
        },
    }


def _many_starts(cfg: Config, key: jax.Array) -> tuple[dict, dict]:
    """Part 1: every optimizer from the same `num_starts` starts on each function."""
    lr_L = np.asarray(cfg.lrs, np.float64)
    n, nl = cfg.num_starts, len(lr_L)
    shape = (len(cfg.functions), len(cfg.optimizers))
    starts_FxNx2 = np.zeros((len(cfg.functions), n, 2), np.float32)
    success_rate_FxOxL = np.zeros((*shape, nl))
    diverged_rate_FxOxL = np.zeros((*shape, nl))
    best_lr_FxO = np.zeros(shape)
    label_FxOxN = np.zeros((*shape, n), np.int8)
    steps_FxOxN = np.full((*shape, n), -1, np.int32)
    summary = {}
    for f, fname in enumerate(cfg.functions):
        land = landscapes.get(fname)
        b = land.bounds
        starts = jax.random.uniform(
            jax.random.fold_in(key, f), (n, 2), minval=b[:, 0], maxval=b[:, 1]
        )
        starts_FxNx2[f] = np.asarray(starts, np.float32)
        per_fn = {}
        cells = list(enumerate(cfg.optimizers))
        for o, opt in engine.bar(cells, desc=f"{NAME}: {fname} ({f + 1}/{len(cfg.functions)})"):
            cell = _one_cell(land, starts_FxNx2[f], opt, lr_L, cfg)
            success_rate_FxOxL[f, o] = cell["success_L"]
            diverged_rate_FxOxL[f, o] = cell["diverged_L"]
            best_lr_FxO[f, o] = lr_L[cell["best"]]
            label_FxOxN[f, o] = cell["label_N"]
            steps_FxOxN[f, o] = cell["steps_N"]
            per_fn[opt] = _cell_summary(lr_L, cell)
        ranked = sorted(
            cfg.optimizers,
            key=lambda o: (-per_fn[o]["success_rate"], per_fn[o]["steps_to_converge"]["median"]),
        )
        per_fn["best_optimizer"] = ranked[0]
        summary[fname] = per_fn
    arrays = {
        "lr_L": lr_L,
        "starts_FxNx2": starts_FxNx2,
        "success_rate_FxOxL": success_rate_FxOxL,
        "diverged_rate_FxOxL": diverged_rate_FxOxL,
        "best_lr_FxO": best_lr_FxO,
        "label_FxOxN": label_FxOxN,
        "steps_FxOxN": steps_FxOxN,
    }
    return arrays, summary


# ---------------------------------------------------------------- part 2: MLP on digits


def mlp_normals(key: jax.Array, widths: tuple[int, ...], num: int) -> list[np.ndarray]:
    """Standard normal draws for `num` networks: [num, fan_in, fan_out] per weight matrix.

    One flat draw, cut into layers: drawing layer by layer compiles one random-number
    kernel per shape, which takes longer than the whole MLP sweep on CPU.
    """
    shapes = list(zip(widths[:-1], widths[1:], strict=True))
    flat = np.asarray(jax.random.normal(key, (num, sum(a * b for a, b in shapes))))
    cuts = np.cumsum([a * b for a, b in shapes])[:-1]
    return [
        z.reshape(num, a, b) for z, (a, b) in zip(np.split(flat, cuts, axis=1), shapes, strict=True)
    ]


def mlp_loss(params, x, y):
    """Mean softmax cross-entropy of the logits of x [B, 64] against labels y [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(fc.apply(params, x), y).mean()


def _mlp_run(normals, scale, *, cfg: Config, train, test):
    """One network: init at `scale`, `mlp_steps` steps of full-batch GD.

    Returns (init loss, final loss, test accuracy, [depth] gradient norms at init,
    [mlp_steps] losses along the way).
    """
    params = fc.scaled_init(normals, scale)
    loss0, grads = jax.value_and_grad(mlp_loss)(params, *train)
    gnorm_D = jnp.stack([jnp.linalg.norm(g_w) for g_w, _ in grads])

    def step(p, _):
        loss, g = jax.value_and_grad(mlp_loss)(p, *train)
        return jax.tree.map(lambda a, d: a - cfg.mlp_lr * d, p, g), loss

    params, loss_T = jax.lax.scan(step, params, None, length=cfg.mlp_steps)
    final = mlp_loss(params, *train)
    acc = jnp.mean(jnp.argmax(fc.apply(params, test[0]), axis=-1) == test[1])
    # Diverged networks: inf, not NaN, so they sort and plot as "worst".
    final, loss_T = (jnp.where(jnp.isfinite(v), v, jnp.inf) for v in (final, loss_T))
    return loss0, final, acc, gnorm_D, loss_T


def _digits(cfg: Config) -> tuple[tuple, tuple]:
    """(train, test), each (x [B, 64], y [B]), standardized by the training set's pixels."""
    x, y = data.digits()
    xtr, ytr, xte, yte = x[: cfg.mlp_train], y[: cfg.mlp_train], x[TEST_FROM:], y[TEST_FROM:]
    xtr, xte = data.standardize_features(xtr, xte)
    return (jnp.asarray(xtr), jnp.asarray(ytr)), (jnp.asarray(xte), jnp.asarray(yte))


def _by_scale(scale_M: np.ndarray, v_M: np.ndarray) -> dict:
    """{scale: value} for summary.json, scales to 3 significant digits."""
    return {f"{s:.3g}": float(v) for s, v in zip(scale_M, v_M, strict=True)}


def _mlp_summary(arrays: dict, cfg: Config) -> dict:
    """summary.json of part 2: medians by scale, the vanishing and exploding ranges, slope."""
    scale_M = arrays["mlp_scale_M"]
    gnorm_SxMxD = arrays["mlp_grad_norm_SxMxD"]
    chance = math.log(10)
    med_M = np.median(arrays["mlp_final_loss_SxM"], axis=0)
    best = int(np.argmin(med_M))
    no_learning_M = med_M >= 0.9 * chance
    below = np.flatnonzero(no_learning_M[:best])
    above = np.flatnonzero(no_learning_M[best:]) + best
    # Small scales: the first layer's gradient ~ scale^(depth - 1) (every layer is linear
    # there, tanh(z) ~ z, and the softmax is uniform); fitted over the scales <= 0.1.
    depth = len(cfg.mlp_widths) - 1
    small = scale_M <= 0.1 + 1e-6
    g1_M = np.median(gnorm_SxMxD[:, :, 0], axis=0)
    slope = (
        float(np.polyfit(np.log(scale_M[small]), np.log(g1_M[small]), 1)[0])
        if small.sum() >= 2
        else float("nan")
    )
    return {
        "chance_loss": chance,
        "final_loss_by_scale": _by_scale(scale_M, med_M),
        "test_accuracy_by_scale": _by_scale(scale_M, np.median(arrays["mlp_test_acc_SxM"], axis=0)),
        "init_loss_by_scale": _by_scale(scale_M, np.median(arrays["mlp_init_loss_SxM"], axis=0)),
        "best_scale": {"scale": float(scale_M[best]), "final_loss": float(med_M[best])},
        "vanishing": {
            "up_to_scale": float(scale_M[below.max()]) if below.size else None,
            "note": "scales below the best whose median final loss stays >= 0.9 ln 10",
        },
        "exploding": {
            "from_scale": float(scale_M[above.min()]) if above.size else None,
            "note": "scales above the best whose median final loss is >= 0.9 ln 10",
        },
        "first_layer_grad_slope_small_scale": {
            "measured": slope,
            "theory": depth - 1,
            "note": "log-log slope of |dL/dW1| at init against scale, scales <= 0.1",
        },
    }


def _mlp(cfg: Config, key: jax.Array) -> tuple[dict, dict]:
    """Part 2: S seeds x M init scales of the tanh MLP on digits, trained by full-batch GD."""
    train, test = _digits(cfg)
    scale_M = np.logspace(*cfg.mlp_log10_scale, cfg.mlp_num_scales).astype(np.float32)
    normals_S = mlp_normals(key, cfg.mlp_widths, cfg.mlp_seeds)
    run = functools.partial(_mlp_run, cfg=cfg, train=train, test=test)
    grid = jax.vmap(jax.vmap(run, in_axes=(None, 0)), in_axes=(0, None))  # -> [S, M]
    loss0_SxM, final_SxM, acc_SxM, gnorm_SxMxD, loss_SxMxT = jax.device_get(
        jax.jit(grid)(normals_S, jnp.asarray(scale_M))
    )
    arrays = {
        "mlp_scale_M": scale_M,
        "mlp_init_loss_SxM": loss0_SxM,
        "mlp_final_loss_SxM": final_SxM,
        "mlp_test_acc_SxM": acc_SxM,
        "mlp_grad_norm_SxMxD": gnorm_SxMxD,
        "mlp_loss_SxMxT": loss_SxMxT,
    }
    return arrays, _mlp_summary(arrays, cfg)


def compute(cfg: Config) -> tuple[dict, dict]:
    """Part 1 (many starts) and part 2 (the MLP), from independent keys."""
    key = jax.random.key(cfg.seed)
    starts_key, mlp_key = jax.random.split(key)
    del key
    arrays, summary = _many_starts(cfg, starts_key)
    mlp_arrays, mlp_summary = _mlp(cfg, mlp_key)
    return arrays | mlp_arrays, {"functions": summary, "mlp": mlp_summary}


# ---------------------------------------------------------------------------- figures

FIG_ROW = 1.45  # inches per row of start maps


def _annotated_heatmap(ax, values_FxO, text_FxO, cfg: Config, cbar_label: str, **kw):
    """Heatmap function x optimizer with a colour bar, each cell labelled in a legible colour."""
    mesh = ax.imshow(values_FxO, aspect="auto", **kw)
    ax.figure.colorbar(mesh, ax=ax, label=cbar_label, pad=0.01)
    for (i, j), text in np.ndenumerate(text_FxO):
        v = values_FxO[i, j]
        r, g, b, _ = mesh.cmap(mesh.norm(v)) if np.isfinite(v) else (1, 1, 1, 1)
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # luminance of the cell's colour
        ax.text(j, i, text, ha="center", va="center", fontsize=6, color="w" if dark else "k")
    ax.set_xticks(range(len(cfg.optimizers)), cfg.optimizers, rotation=30, ha="right")
    ax.set_yticks(range(len(cfg.functions)), cfg.functions)
    ax.grid(False)


def _plot_success(arrays: dict, cfg: Config, per: dict):
    """Success rate (with the chosen lr) and median steps to converge, function x optimizer."""
    success_FxO = np.array(
        [[per[f][o]["success_rate"] for o in cfg.optimizers] for f in cfg.functions]
    )
    median_FxO = np.array(
        [[per[f][o]["steps_to_converge"]["median"] for o in cfg.optimizers] for f in cfg.functions]
    )
    lr_FxO = arrays["best_lr_FxO"]
    nf = len(success_FxO)
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(plotting.FULL, 1.2 + 0.85 * nf), layout="constrained"
    )
    text = np.array(
        [
            [f"{100 * s:.0f}%\nlr {a:g}" for s, a in zip(rs, ra, strict=True)]
            for rs, ra in zip(success_FxO, lr_FxO, strict=True)
        ]
    )
    _annotated_heatmap(ax1, success_FxO, text, cfg, "success rate", vmin=0, vmax=1, cmap="viridis")
    ax1.set_title(
        f"reaching a global minimum (within {cfg.tol:g}) from {cfg.num_starts} starts in "
        f"{cfg.steps} steps, best lr of {', '.join(f'{a:g}' for a in cfg.lrs)}"
    )
    ax1.title.set_fontsize(8)
    text = np.array(
        [["–" if not np.isfinite(m) else f"{m:.0f}" for m in row] for row in median_FxO]
    )
    finite = median_FxO[np.isfinite(median_FxO)]
    lo = max(cfg.record_every, finite.min()) if finite.size else 1
    hi = max(lo * 10, finite.max()) if finite.size else 10
    _annotated_heatmap(
        ax2,
        np.where(np.isfinite(median_FxO), np.maximum(median_FxO, lo), np.nan),
        text,
        cfg,
        "median steps (log scale)",
        norm=colors.LogNorm(lo, hi),
        cmap="magma_r",
    )
    ax2.set_title("median steps to converge, over the successful starts")
    ax2.title.set_fontsize(8)
    return fig


def _plot_steps(arrays: dict, cfg: Config):
    """Per function: the share of the successful starts converged by step t, per optimizer."""
    steps = arrays["steps_FxOxN"]
    nf = len(cfg.functions)
    fig, axes = plotting.panel_grid(nf + 1, 3, 2.0)  # the last panel holds the legend
    t_T = np.arange(cfg.record_every, cfg.steps + 1, cfg.record_every)
    for f, fname in enumerate(cfg.functions):
        ax = axes.flat[f]
        for o, opt in enumerate(cfg.optimizers):
            s_K = np.sort(steps[f, o][steps[f, o] >= 0])
            if s_K.size:
                frac_T = np.searchsorted(s_K, t_T, side="right") / s_K.size
                ax.step(t_T, frac_T, where="post", color=f"C{o % 10}", label=opt)
        ax.set(
            xscale="log",
            xlabel="step t (log scale)",
            ylabel="share converged by t",
            ylim=(-0.02, 1.02),
            xlim=(cfg.record_every, cfg.steps),
            title=fname,
        )
    legend_ax = axes.flat[nf]
    legend_ax.set_axis_off()
    handles = [
        Line2D([], [], color=f"C{o % 10}", label=opt) for o, opt in enumerate(cfg.optimizers)
    ]
    legend_ax.legend(handles=handles, loc="center", title="optimizer (its best lr)")
    fig.suptitle(
        "steps to converge: share of the successful starts within tol of their global "
        "minimum from step t on (success rates: success.png)",
        fontsize=8,
    )
    return fig


def _plot_start_map(arrays: dict, cfg: Config, name: str):
    """Map of the starts, map_optimizers x functions: `name` "which_minimum" or "how_fast"."""
    steps, labels = arrays["steps_FxOxN"], arrays["label_FxOxN"]
    lr_FxO = arrays["best_lr_FxO"]
    rows = [cfg.optimizers.index(o) for o in cfg.map_optimizers]
    fig, axes = plt.subplots(
        len(rows),
        len(cfg.functions),
        figsize=(plotting.FULL, 0.6 + FIG_ROW * len(rows)),
        layout="constrained",
        squeeze=False,
    )
    for f, fname in enumerate(cfg.functions):
        land = landscapes.get(fname)
        x_Nx2 = arrays["starts_FxNx2"][f]
        for r, o in enumerate(rows):
            ax = axes[r, f]
            if name == "which_minimum":
                art = _draw_labels(ax, x_Nx2, labels[f, o], land)
            else:
                art = _draw_steps(ax, x_Nx2, steps[f, o], cfg)
            ax.set(xlim=land.bounds[0], ylim=land.bounds[1], xticks=[], yticks=[])
            ax.grid(False)
            if r == 0:
                ax.set_title(fname, fontsize=7)
            if f == 0:
                ax.set_ylabel(f"{cfg.optimizers[o]}\nlr {lr_FxO[f, o]:g}", fontsize=7)
            else:
                ax.set_ylabel(f"lr {lr_FxO[f, o]:g}", fontsize=6)
    if name == "which_minimum":
        fig.suptitle(
            "which minimum each start reaches (colour: stored minimum, global ones "
            "starred; gray: none within tol; black: diverged)",
            fontsize=8,
        )
    else:
        fig.colorbar(art, ax=axes, label="steps to converge (log scale)", shrink=0.8)
        fig.suptitle("how fast each start converges (gray: never)", fontsize=8)
    return fig


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    """Figures: success, steps, which_minimum and how_fast (part 1); mlp (part 2)."""
    with plt.style.context(plotting.STYLE):
        figs = {
            "success": _plot_success(arrays, cfg, summary["functions"]),
            "steps": _plot_steps(arrays, cfg),
        }
        for name in ("which_minimum", "how_fast"):
            figs[name] = _plot_start_map(arrays, cfg, name)
        figs["mlp"] = _plot_mlp(arrays, cfg, summary["mlp"])
    return figs


def _draw_labels(ax, x_Nx2, labels_N, land):
    """Starts coloured by the minimum they reach, and the minima (global ones starred)."""
    k = len(land.minima)
    table = np.concatenate(
        [[plotting.DIVERGED_COLOR, plotting.NOT_CONVERGED_COLOR], plotting.basin_palette(k)]
    )
    rgba = table[labels_N.astype(int) + 2]
    art = ax.scatter(*x_Nx2.T, c=rgba, s=0.6, lw=0, rasterized=True)
    g = len(land.global_minima)
    ax.scatter(
        *land.minima[:g].T,
        marker="*",
        s=40,
        c=plotting.basin_palette(k)[:g],
        edgecolors="k",
        linewidths=0.6,
        zorder=3,
    )
    ax.scatter(
        *land.minima[g:].T,
        marker="o",
        s=10,
        c=plotting.basin_palette(k)[g:],
        edgecolors="k",
        linewidths=0.4,
        zorder=3,
    )
    return art


def _draw_steps(ax, x_Nx2, steps_N, cfg: Config):
    """Starts coloured by their steps to converge (log scale); gray where never."""
    ok = steps_N >= 0
    ax.scatter(*x_Nx2[~ok].T, c=[plotting.NOT_CONVERGED_COLOR], s=0.6, lw=0, rasterized=True)
    return ax.scatter(
        *x_Nx2[ok].T,
        c=np.maximum(steps_N[ok], cfg.record_every),
        norm=colors.LogNorm(cfg.record_every, cfg.steps),
        cmap="viridis",
        s=0.6,
        lw=0,
        rasterized=True,
    )


def _mlp_loss_panel(ax, arrays: dict, cfg: Config, chance: float) -> None:
    """Final loss (median, range over seeds) and loss at init against the init scale."""
    scale_M = arrays["mlp_scale_M"]
    final_SxM = arrays["mlp_final_loss_SxM"]
    med = np.median(final_SxM, axis=0)
    ax.fill_between(
        scale_M, final_SxM.min(axis=0), final_SxM.max(axis=0), color="C0", alpha=0.3, lw=0
    )
    ax.plot(scale_M, med, "o-", color="C0", ms=3, label="final (median, range over seeds)")
    ax.plot(
        scale_M,
        np.median(arrays["mlp_init_loss_SxM"], axis=0),
        "s--",
        color="0.4",
        ms=2.5,
        lw=0.8,
        label="at initialization",
    )
    ax.axhline(chance, color="k", lw=0.8, ls="--", label="chance, ln 10")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="init scale × 1/√fan_in (log scale)",
        ylabel="training loss (log scale)",
        title=f"tanh MLP {'-'.join(map(str, cfg.mlp_widths))}, {cfg.mlp_steps} GD steps, "
        f"lr {cfg.mlp_lr:g}",
    )
    ax.title.set_fontsize(8)
    ax.legend(loc="upper center", fontsize=6)
    ax.text(0.02, 0.03, "vanishing", transform=ax.transAxes, color="C0", fontsize=7)
    ax.text(0.98, 0.03, "exploding", transform=ax.transAxes, color="C3", fontsize=7, ha="right")


def _mlp_grad_panel(ax, arrays: dict, slope: float) -> None:
    """Gradient norm of every weight matrix at init against the scale, and the theory slope."""
    scale_M = arrays["mlp_scale_M"]
    gnorm_SxMxD = arrays["mlp_grad_norm_SxMxD"]
    depth = gnorm_SxMxD.shape[-1]
    for d in range(depth):
        ax.plot(
            scale_M,
            np.median(gnorm_SxMxD[:, :, d], axis=0),
            "o-",
            ms=2.5,
            color=plt.cm.viridis(d / max(1, depth - 1)),
            label=f"W{d + 1}",
        )
    g1 = np.median(gnorm_SxMxD[:, :, 0], axis=0)
    ref = g1[0] * (scale_M / scale_M[0]) ** (depth - 1)
    keep = scale_M <= 1
    ax.plot(scale_M[keep], ref[keep], "k:", lw=1, label=f"∝ scale^{depth - 1}")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="init scale × 1/√fan_in (log scale)",
        ylabel="|∂L/∂W| at init (log scale)",
        title=f"gradients at init; small-scale slope of W1 {slope:.2f} (theory {depth - 1})",
    )
    ax.title.set_fontsize(8)
    ax.legend(loc="lower right", fontsize=6)


def _plot_mlp(arrays: dict, cfg: Config, summary: dict):
    """Part 2: training loss and gradients at init against the init scale, regimes shaded."""
    scale_M = arrays["mlp_scale_M"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.8), layout="constrained")
    van, exp_ = summary["vanishing"]["up_to_scale"], summary["exploding"]["from_scale"]
    for ax in (ax1, ax2):
        if van is not None:
            ax.axvspan(scale_M[0] / 1.5, van * 1.2, color="C0", alpha=0.12, lw=0)
        if exp_ is not None:
            ax.axvspan(exp_ / 1.2, scale_M[-1] * 1.5, color="C3", alpha=0.12, lw=0)
        ax.axvline(1, color="k", lw=0.6, ls=":")
    _mlp_loss_panel(ax1, arrays, cfg, summary["chance_loss"])
    _mlp_grad_panel(ax2, arrays, summary["first_layer_grad_slope_small_scale"]["measured"])
    return fig


main = cli.study_main(__name__, compute, plot)


if __name__ == "__main__":
    main()
