"""Edge of stability: full-batch training meets the stability threshold and stays there.

The learning-rate slides' quadratic picture says gradient descent converges iff
lr < 2 / lambda_max. On a network the sharpness lambda_max of the training-loss Hessian is
not fixed: Cohen et al. (2021) found that under full-batch GD it rises ("progressive
sharpening") until it reaches 2 / lr, then hovers at or just above it while the loss keeps
falling, non-monotonically. Heavy-ball momentum meets (2 + 2 beta) / lr, and Adam's
preconditioned sharpness lambda_max(P^-1 H) meets (2 + 2 b1) / ((1 - b1) lr) = 38 / lr
(Cohen et al. 2022). Gradient flow, the limit of small steps, has no threshold: its
sharpness keeps rising past all of them.

Measured here, as in Cohen et al.'s Figure 1: an fc-tanh network (two hidden layers of 200,
PyTorch's default init) with the square loss 0.5 |f(x) - onehot(y)|^2 on the training set
of the bundled digits (1438 images; CIFAR-10 with `--data cifar10 --data-dir DIR`, its first
`train_size` images), trained by full-batch GD at three learning rates whose thresholds lie
above the initial sharpness (about 22), by GD with a step small enough to follow the flow,
and by momentum and Adam at one learning rate each. Every run is one compiled loop
(`sharpness.track`): the top Hessian eigenvalue by 20 Lanczos steps every `every` updates,
the GD learning rates vmapped as one computation.

summary.json holds one entry per run (`gd_<lr>`, `flow`, `momentum`, `adam`): its threshold,
the first check at which the sharpness reached it, the median sharpness over the last half
of training (`sharpness_plateau`) and its ratio to the threshold (theory: at or just above
1; for the flow the sharpness at the end against every GD threshold), the share of steps on
which the loss rose, and the final loss and accuracy; `claims` checks each against theory.

Run: make edge_of_stability   (smoke: python -m studies.edge_of_stability --quick). The
default took 10.2 minutes of wall time on a 2-core CPU (AVX-512) while other jobs kept both
cores busy (5.9 minutes of CPU time); --quick about 25 s.
"""

import dataclasses
import time
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from sandbox import cli, config, data, engine, sharpness
from sandbox.models import fc

NAME = "edge_of_stability"
DataSet = data.Name  # a field named `data` hides the module in the class body
OPTIMIZERS = ("gd", "momentum", "adam")  # gd brings the flow reference with it
# Theory: the plateau sits at or just above the threshold. Cohen et al. report it within a
# few percent; the band below is what counts as "at the edge" here.
PLATEAU_BAND = (0.9, 1.15)
CIFAR_SUBSET = 5000


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the network's initial weights
    data: DataSet = "digits"  # the data set
    # The first N training images; None: all of the digits, or CIFAR-10's first 5000 (the
    # subset of Cohen et al.).
    train_size: int | None = config.field(None, 1, 10**6)  # the first N training images
    hidden: tuple[int, ...] = config.field((200, 200), 1, 8192)  # hidden widths of the MLP
    gd_lrs: tuple[float, ...] = config.field((0.05, 0.065, 0.08), gt=0)  # 2 / lr = 40, 30.8, 25
    steps: int = config.count(2000, 10**6)  # updates per run
    every: int = config.count(20, 10**6)  # sharpness checks every `every` updates
    flow_lr: float = config.field(0.01, gt=0)  # lr x sharpness stays below 0.6: the flow
    flow_steps: int = config.count(5000, 10**6)  # flow time 50, past every GD run's crossing
    momentum_lr: float = config.field(0.05, gt=0)  # threshold (2 + 2 beta) / lr = 76
    beta: float = config.field(0.9, 0, lt=1)  # heavy-ball momentum
    adam_lr: float = config.field(0.001, gt=0)  # threshold 38 / lr = 38,000
    b1: float = config.field(0.9, 0, lt=1)  # Adam's b1
    b2: float = config.field(0.999, 0, lt=1)  # Adam's b2
    num_iters: int = config.count(20, 1000)  # Lanczos steps per check
    optimizers: tuple[Literal[OPTIMIZERS], ...] = config.field(OPTIMIZERS, distinct=True)
    """optimizers run (gd brings the flow reference with it)"""

    RELATIONS = (
        config.relation("every <= steps", lambda c: c.every <= c.steps),
        config.relation("every <= flow_steps", lambda c: c.every <= c.flow_steps),
    )


QUICK = Config(
    train_size=512,
    hidden=(64, 64),
    gd_lrs=(0.12, 0.15),
    steps=300,
    every=10,
    flow_lr=0.05,
    flow_steps=600,
    momentum_lr=0.15,
    adam_lr=0.004,
    num_iters=12,
)


# ----------------------------------------------------------------------------- compute


def problem(cfg: Config, data_dir: str | None = None):
    """(loss, accuracy-carrying loss, initial params, number of training images)."""
    ds = data.load(cfg.data, data_dir=data_dir, seed=cfg.seed)
    size = CIFAR_SUBSET if cfg.train_size is None and cfg.data == "cifar10" else cfg.train_size
    n = len(ds.y_train) if size is None else min(size, len(ds.y_train))
    x = jnp.asarray(ds.x_train[:n].reshape(n, -1))
    labels = jnp.asarray(ds.y_train[:n])
    y = jax.nn.one_hot(labels, ds.num_classes, dtype=x.dtype)

    def loss(params):
        out = fc.apply(params, x)
        square = 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=-1))
        return square, jnp.mean(jnp.argmax(out, axis=-1) == labels)

    widths = (x.shape[1], *cfg.hidden, ds.num_classes)
    params = fc.init(jax.random.key(cfg.seed), widths, dtype=x.dtype)
    return loss, params, n


def _runs(cfg: Config) -> list[tuple[str, str, tuple[float, ...], int]]:
    """(key, optimizer, learning rates, steps) of each tracked computation."""
    runs = []
    if "gd" in cfg.optimizers:
        runs += [
            ("gd", "gd", cfg.gd_lrs, cfg.steps),
            ("flow", "gd", (cfg.flow_lr,), cfg.flow_steps),
        ]
    if "momentum" in cfg.optimizers:
        runs.append(("momentum", "momentum", (cfg.momentum_lr,), cfg.steps))
    if "adam" in cfg.optimizers:
        runs.append(("adam", "adam", (cfg.adam_lr,), cfg.steps))
    return runs


def compute(cfg: Config, data_dir: str | None = None) -> tuple[dict, dict]:
    loss, params, n = problem(cfg, data_dir)
    arrays, timing = {}, {}
    for key, optimizer, lrs, steps in engine.bar(_runs(cfg), desc=NAME, unit="run"):
        start = time.perf_counter()
        trace = sharpness.track(
            loss,
            params,
            jnp.asarray(lrs),
            steps=steps,
            every=cfg.every,
            optimizer=optimizer,
            key=jax.random.key(cfg.seed + 1),
            has_aux=True,
            num_iters=cfg.num_iters,
            beta=cfg.beta,
            b1=cfg.b1,
            b2=cfg.b2,
        )
        trace = jax.device_get(trace)
        timing[key] = round(time.perf_counter() - start, 2)
        arrays[f"{key}_lrs"] = np.asarray(lrs)
        arrays[f"{key}_losses"] = np.asarray(trace.losses)  # [L, T + 1]
        arrays[f"{key}_accuracy"] = np.asarray(trace.aux)  # [L, T + 1]
        arrays[f"{key}_steps"] = np.asarray(trace.steps[0])  # [K]
        arrays[f"{key}_sharpness"] = np.asarray(trace.sharpness[..., 0])  # [L, K]
    summary = summarize(arrays, cfg)
    summary["train_size"] = n
    summary["wall_s_per_run"] = timing
    return arrays, summary


# ----------------------------------------------------------------------------- summary


def _threshold(key: str, cfg: Config, lr: float) -> float:
    optimizer = "gd" if key in ("gd", "flow") else key
    return sharpness.threshold(optimizer, lr, beta=cfg.beta, b1=cfg.b1)


def run_summary(losses_T, accuracy_T, steps_K, sharp_K, threshold: float) -> dict:
    """The numbers of one run: crossing, plateau, loss rises, final loss and accuracy."""
    reached = np.flatnonzero(sharp_K >= threshold)  # NaN (Adam's step 0) compares False
    half = steps_K >= steps_K[-1] / 2
    plateau = float(np.nanmedian(sharp_K[half]))
    return {
        "threshold": threshold,
        "initial_sharpness": float(sharp_K[np.flatnonzero(np.isfinite(sharp_K))[0]]),
        "first_crossing_step": int(steps_K[reached[0]]) if len(reached) else None,
        "sharpness_plateau": plateau,
        "plateau_ratio": plateau / threshold,
        "max_sharpness": float(np.nanmax(sharp_K)),
        "loss_rise_share": float(np.mean(np.diff(losses_T) > 0)),
        "final_loss": float(losses_T[-1]),
        "final_accuracy": float(accuracy_T[-1]),
    }


def summarize(arrays: dict, cfg: Config) -> dict:
    summary, gd_thresholds = {}, {}
    for key, _, _, _ in _runs(cfg):
        for i, lr in enumerate(arrays[f"{key}_lrs"]):
            name = f"gd_{lr:g}" if key == "gd" else key
            threshold = _threshold(key, cfg, float(lr))
            entry = {"optimizer": "gd" if key == "flow" else key, "lr": float(lr)}
            entry |= run_summary(
                arrays[f"{key}_losses"][i],
                arrays[f"{key}_accuracy"][i],
                arrays[f"{key}_steps"],
                arrays[f"{key}_sharpness"][i],
                threshold,
            )
            if key == "gd":
                gd_thresholds[name] = threshold
            summary[name] = entry
    if "flow" in summary:
        flow = summary["flow"]
        flow["time"] = flow["lr"] * float(arrays["flow_steps"][-1])
        flow["final_sharpness"] = float(arrays["flow_sharpness"][0, -1])
        flow["final_over_gd_thresholds"] = {
            k: flow["final_sharpness"] / t for k, t in gd_thresholds.items()
        }
    summary["claims"] = claims(summary)
    return summary


def claims(summary: dict) -> dict:
    """Each run against theory (Cohen et al. 2021, 2022)."""
    lo, hi = PLATEAU_BAND
    out = {}
    runs = {k: v for k, v in summary.items() if isinstance(v, dict) and "threshold" in v}
    out["initial_sharpness_below_threshold"] = all(
        v["initial_sharpness"] < v["threshold"] for v in runs.values()
    )
    for k, v in runs.items():
        if k == "flow":
            out["flow_sharpness_rises_past_every_gd_threshold"] = all(
                r > 1 for r in v["final_over_gd_thresholds"].values()
            )
        else:
            out[f"{k}_reaches_threshold"] = v["first_crossing_step"] is not None
            out[f"{k}_plateau_at_threshold"] = bool(lo <= v["plateau_ratio"] <= hi)
    return out


# ----------------------------------------------------------------------------- figures


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    figs = {}
    if "gd" in cfg.optimizers:
        figs["gd"] = _plot_gd(arrays, cfg)
        figs["flow"] = _plot_flow(arrays, cfg)
    others = [k for k in ("momentum", "adam") if k in cfg.optimizers]
    if others:
        figs["momentum_adam"] = _plot_others(arrays, cfg, others)
    return figs


def _colours(n: int):
    return plt.get_cmap("viridis")(np.linspace(0.1, 0.85, n))


def _plot_gd(arrays: dict, cfg: Config):
    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    lrs = arrays["gd_lrs"]
    for lr, c, loss_T, sharp_K in zip(
        lrs, _colours(len(lrs)), arrays["gd_losses"], arrays["gd_sharpness"], strict=True
    ):
        ax_l.plot(loss_T, color=c, lw=1, label=f"η = {lr:g}")
        ax_s.plot(arrays["gd_steps"], sharp_K, color=c, lw=1, label=f"η = {lr:g}")
        ax_s.axhline(2 / lr, color=c, ls="--", lw=1)
    ax_l.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    ax_s.set(xlabel="step", ylabel="sharpness λmax", title="sharpness, 2/η dashed")
    ax_l.legend()
    fig.suptitle("Full-batch gradient descent at the edge of stability")
    return fig


def _plot_flow(arrays: dict, cfg: Config):
    """Sharpness against time (step x lr): GD follows the flow until 2/η, then stays."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lrs = arrays["gd_lrs"]
    for lr, c, sharp_K in zip(lrs, _colours(len(lrs)), arrays["gd_sharpness"], strict=True):
        ax.plot(arrays["gd_steps"] * lr, sharp_K, color=c, lw=1, label=f"GD η = {lr:g}")
        ax.axhline(2 / lr, color=c, ls="--", lw=1)
    flow_lr = float(arrays["flow_lrs"][0])
    ax.plot(
        arrays["flow_steps"] * flow_lr,
        arrays["flow_sharpness"][0],
        color="k",
        lw=1.5,
        label=f"gradient flow (GD η = {flow_lr:g})",
    )
    ax.set(xlabel="time (step × η)", ylabel="sharpness λmax", title="Sharpness: GD against flow")
    ax.legend(fontsize="small", loc="lower right")
    return fig


def _plot_others(arrays: dict, cfg: Config, keys: Sequence[str]):
    fig, axes = plt.subplots(len(keys), 2, figsize=(10, 3.4 * len(keys)), squeeze=False)
    labels = {
        "momentum": ("sharpness λmax", "(2 + 2β)/η"),
        "adam": ("preconditioned sharpness λmax(P⁻¹H)", "(2 + 2β₁)/((1 − β₁)η)"),
    }
    for (ax_l, ax_s), key in zip(axes, keys, strict=True):
        lr = float(arrays[f"{key}_lrs"][0])
        threshold = _threshold(key, cfg, lr)
        ax_l.plot(arrays[f"{key}_losses"][0], color="C0", lw=1)
        ax_l.set(xlabel="step", ylabel="training loss", yscale="log", title=f"{key}, η = {lr:g}")
        ax_s.plot(arrays[f"{key}_steps"], arrays[f"{key}_sharpness"][0], color="C0", lw=1)
        ax_s.axhline(
            threshold, color="C3", ls="--", lw=1, label=f"{labels[key][1]} = {threshold:.4g}"
        )
        ax_s.set(xlabel="step", ylabel=labels[key][0], title=f"{key}: sharpness")
        ax_s.legend(fontsize="small")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- command line


@dataclasses.dataclass(frozen=True)
class Options:
    data_dir: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "a CIFAR-10 folder: train on CIFAR-10 (with --data, cifar10 only)",
            "metavar": "DIR",
        },
    )


def _prepare(cfg: Config, args) -> Config:
    """A CIFAR-10 folder alone trains on CIFAR-10; with `--data` another data set, refused
    (`cli.check_data_dir`)."""
    if args.data_dir is not None and "data" not in args.typed:
        cfg = dataclasses.replace(cfg, data="cifar10")
    return cli.check_data_dir(cfg, args)


main = cli.study_main(
    __name__,
    lambda c, out, args: compute(c, args.data_dir),
    plot,
    options=Options,
    aliases={"--lrs": "--gd-lrs"},
    prepare=_prepare,
)


if __name__ == "__main__":
    main()
