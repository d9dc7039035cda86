"""Mode connectivity: are two independently trained networks joined by a low-loss curve?

Garipov et al. (2018, "Loss surfaces, mode connectivity, and fast ensembling of DNNs") and
Draxler et al. (2018) found that the minima reached by training a network from two different
seeds are separated by a barrier along the straight line between them, yet joined by a
simple curve along which the training loss stays low. Measured here on the bundled digits:
two ResNet-20 with shortcuts (type A) trained from seeds s and s + 1, and the same pair
without shortcuts. For each pair:

- the line (1 - t) w1 + t w2 and the quadratic Bezier curve through a bend theta trained by
  SGD on E_{t ~ U(0, 1)} L(phi(t)) (`connect.train_bend`), each evaluated at `num_t` values
  of t with batch-norm statistics recomputed at every point from the training set (as
  Garipov et al. do); both paths lie on the plane through w1, w2 and theta, so they and the
  plane's grid are one chunked computation (`connect.plane`);
- the barrier (max along the path minus the mean of the two ends) of the training loss and
  of the test error along the line and along the curve; the claim: the curve's barrier is
  far below the line's;
- the training loss over the plane through w1, w2 and theta with both paths drawn on it.

Measured (digits, seed 0, ResNet-20, 15 epochs, 300 bend steps): shortcut A, both ends at
train loss 0.003 and test accuracy 97.2% / 98.3%; barrier of the training loss 1.199 along the
line (test accuracy down to 54%) against 0.054 along the curve (96.1%); without shortcuts
2.462 (12.5%) against 0.044 (95.5%): the curve's barrier is 4.5% and 1.8% of the line's.

Run: make mode_connectivity   (smoke: python -m studies.mode_connectivity --quick). The
networks are trained into <out>/networks/ and reused by later runs with the same settings.
The default took 8 min 47 s on a 2-core CPU (AVX-512, 13.2 CPU-minutes); --quick 25 s.
"""

import dataclasses
import time
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from sandbox import cli, config, connect, data, engine, network, train
from sandbox.models import resnet

NAME = "mode_connectivity"
DataSet = data.Name  # a field named `data` hides the module in the class body
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.field(0, 0, config.SEED_MAX - 1)  # the pair: seeds `seed`, `seed + 1`
    data: DataSet = "digits"  # the data set
    # the first N training (and N / 4 test) images; None: all
    train_size: int | None = config.field(None, 4, 10**6)  # the first N training images
    depth: resnet.Depth = 20  # 6n + 2 layers
    shortcuts: tuple[Literal[resnet.SHORTCUTS], ...] = ("A", "none")  # one pair per shortcut
    epochs: int = config.count(15, 10_000)  # epochs of each network's training
    batch_size: int = config.count(128, 2**16)  # images per SGD step
    bend_steps: int = config.count(300, 10**6)  # SGD steps of the bend
    bend_lr: float = config.field(0.05, gt=0)  # the bend's learning rate
    num_t: int = config.count(13, 1001, lo=3)  # points along the line and the curve
    grid: int = config.count(7, 257, lo=2)  # the plane's grid is grid x grid points
    margin: float = config.field(0.25, 0, 1)  # the plane's share beyond the points
    chunk: int = config.count(4, 4096)  # points per compiled evaluation

    def train_config(self, seed: int) -> train.TrainConfig:
        return train.TrainConfig(epochs=self.epochs, batch_size=self.batch_size, seed=seed)


QUICK = Config(train_size=512, depth=8, epochs=6, batch_size=64, bend_steps=30, num_t=5, grid=3)


# ----------------------------------------------------------------------------- networks


def networks(cfg: Config, ds: data.Dataset, shortcut: str, folder: Path, progress: bool):
    """The pair of trained networks (train.fit resumes or reloads each from `folder`)."""
    model = resnet.ResNet(depth=cfg.depth, shortcut=shortcut, num_classes=ds.num_classes)
    pair = []
    for seed in (cfg.seed, cfg.seed + 1):
        state, hist = train.fit(
            model,
            ds,
            cfg.train_config(seed),
            workdir=folder / f"{shortcut}-seed{seed}",
            keep_last=1,
            progress=progress,
            label=f"ResNet-{cfg.depth} shortcut {shortcut} seed {seed}: ",
        )
        pair.append((train.variables(state), hist))
    return model, pair


def metrics_fn(model, ds: data.Dataset):
    """params -> {train_loss, train_acc, test_loss, test_acc}, batch-norm statistics
    recomputed from the whole training set at the point itself (`network.metrics`)."""
    x_tr, y_tr = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    splits = {"train": (x_tr, y_tr), "test": (jnp.asarray(ds.x_test), jnp.asarray(ds.y_test))}
    return network.metrics(model, splits, x_tr, momentum=resnet.BN_MOMENTUM)


def minibatch_loss(model, ds: data.Dataset, batch_size: int):
    """(params, key) -> the cross-entropy of a random minibatch, batch norm in training mode."""
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    stats0 = network.zero_stats(model, x)

    def loss(params, key):
        idx = jax.random.choice(key, len(y), (batch_size,), replace=False)
        logits, _ = model.apply(
            {"params": params, "batch_stats": stats0}, x[idx], train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

    return loss


# ----------------------------------------------------------------------------- compute


def compute(cfg: Config, out: Path, *, data_dir: str | None = None, progress: bool = True):
    ds = subset(data.load(cfg.data, data_dir=data_dir, seed=cfg.seed), cfg.train_size)
    arrays, summary = {}, {}
    ts = np.linspace(0.0, 1.0, cfg.num_t)
    arrays["t"] = ts
    for shortcut in engine.bar(cfg.shortcuts, desc=NAME, unit="pair", disable=not progress):
        start = time.perf_counter()
        model, ((v1, h1), (v2, h2)) = networks(cfg, ds, shortcut, out / "networks", progress)
        w1, w2 = v1["params"], v2["params"]
        metrics = metrics_fn(model, ds)
        bend, hist = connect.train_bend(
            minibatch_loss(model, ds, cfg.batch_size),
            w1,
            w2,
            key=jax.random.key(cfg.seed + 2),
            steps=cfg.bend_steps,
            lr=cfg.bend_lr,
            progress=progress,
        )
        # Every point (line, curve, plane) as a point of the plane through w1, w2 and the
        # bend: one compiled evaluation for all of them.
        basis = connect.plane_basis(w1, w2, bend)
        xs, ys = plane_axes(basis, cfg)
        line_xy = np.stack([ts * basis.w2_xy[0], np.zeros_like(ts)], -1)
        curve_xy = connect.plane_coords(basis, ts)
        grid_xy = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
        every = connect.plane(
            metrics,
            w1,
            basis,
            np.concatenate([line_xy, curve_xy, grid_xy]),
            chunk=cfg.chunk,
            batch=1,  # a point is three whole passes over the data; vmapped weights are slow
        )
        k = len(ts)
        line = {name: v[:k] for name, v in every.items()}
        curve = {name: v[k : 2 * k] for name, v in every.items()}
        grid = {name: v[2 * k :] for name, v in every.items()}
        for name in METRICS:
            arrays[f"{shortcut}/line_{name}"] = line[name]
            arrays[f"{shortcut}/curve_{name}"] = curve[name]
            arrays[f"{shortcut}/plane_{name}"] = grid[name].reshape(len(ys), len(xs))
        arrays[f"{shortcut}/plane_xs"], arrays[f"{shortcut}/plane_ys"] = xs, ys
        arrays[f"{shortcut}/curve_xy"] = curve_xy
        arrays[f"{shortcut}/points_xy"] = np.stack([[0.0, 0.0], basis.w2_xy, basis.bend_xy])
        arrays[f"{shortcut}/bend_loss"] = hist.loss_S
        summary[shortcut] = pair_summary(line, curve, hist, (h1, h2))
        summary[shortcut]["distance_w1_w2"] = float(basis.w2_xy[0])
        summary[shortcut]["wall_s"] = round(time.perf_counter() - start, 1)
    summary["claims"] = {
        f"{s}_curve_barrier_below_line": summary[s]["curve"]["train_loss_barrier"]
        < summary[s]["line"]["train_loss_barrier"]
        for s in cfg.shortcuts
    }
    summary["data"] = {"name": ds.name, "train": len(ds.x_train), "test": len(ds.x_test)}
    return arrays, summary


def subset(ds: data.Dataset, n: int | None) -> data.Dataset:
    """The first n training and n / 4 test images (all with None)."""
    if n is None:
        return ds
    m = max(1, n // 4)
    return ds._replace(
        x_train=ds.x_train[:n], y_train=ds.y_train[:n], x_test=ds.x_test[:m], y_test=ds.y_test[:m]
    )


def plane_axes(basis: connect.Plane, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The plane's grid: the three points with `margin` of the span around them."""
    x_hi, y_hi = basis.w2_xy[0], basis.bend_xy[1]
    x_lo = min(0.0, basis.bend_xy[0])
    x_hi = max(x_hi, basis.bend_xy[0])
    dx, dy = cfg.margin * (x_hi - x_lo), cfg.margin * y_hi
    return (
        np.linspace(x_lo - dx, x_hi + dx, cfg.grid),
        np.linspace(-dy, y_hi + dy, cfg.grid),
    )


def _path_summary(m: dict) -> dict:
    err = 1 - np.asarray(m["test_acc"], np.float64)
    return {
        "train_loss_barrier": connect.barrier(m["train_loss"]),
        "test_error_barrier": connect.barrier(err),
        "max_train_loss": float(np.max(m["train_loss"])),
        "min_test_acc": float(np.min(m["test_acc"])),
    }


def pair_summary(line: dict, curve: dict, hist: connect.BendHistory, hists) -> dict:
    ends = {name: {k: float(line[k][i]) for k in METRICS} for name, i in (("w1", 0), ("w2", -1))}
    for name, h in zip(("w1", "w2"), hists, strict=True):
        ends[name]["trained_test_acc"] = float(h.test_acc_E[-1])
    line_s, curve_s = _path_summary(line), _path_summary(curve)
    return {
        "ends": ends,
        "line": line_s,
        "curve": curve_s,
        "barrier_ratio_curve_to_line": curve_s["train_loss_barrier"]
        / max(line_s["train_loss_barrier"], 1e-30),
        "bend_final_loss": float(np.mean(hist.loss_S[-min(50, len(hist.loss_S)) :])),
    }


# ----------------------------------------------------------------------------- figures


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    return {"paths": _plot_paths(arrays, cfg, summary), "plane": _plot_plane(arrays, cfg)}


def _plot_paths(arrays, cfg, summary):
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    t = arrays["t"]
    for i, s in enumerate(cfg.shortcuts):
        c = f"C{i}"
        label = f"shortcut {s}" if s != "none" else "no shortcut"
        for kind, ls in (("line", "--"), ("curve", "-")):
            ax_l.plot(t, arrays[f"{s}/{kind}_train_loss"], color=c, ls=ls, label=f"{label}, {kind}")
            ax_e.plot(t, 100 * (1 - arrays[f"{s}/{kind}_test_acc"]), color=c, ls=ls)
    ax_l.set(xlabel="t", ylabel="training loss", yscale="log", title="training loss along the path")
    ax_e.set(xlabel="t", ylabel="test error (%)", title="test error along the path")
    ax_l.legend(fontsize="small")
    fig.suptitle(f"ResNet-{cfg.depth}: straight line (dashed) against the trained Bezier curve")
    return fig


def _plot_plane(arrays, cfg):
    n = len(cfg.shortcuts)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False, layout="constrained")
    for ax, s in zip(axes[0], cfg.shortcuts, strict=True):
        xs, ys = arrays[f"{s}/plane_xs"], arrays[f"{s}/plane_ys"]
        z = np.log10(np.maximum(arrays[f"{s}/plane_train_loss"], 1e-6))
        cs = ax.contourf(xs, ys, z, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="log10 training loss")
        curve = arrays[f"{s}/curve_xy"]
        pts = arrays[f"{s}/points_xy"]
        ax.plot(curve[:, 0], curve[:, 1], color="w", lw=2, label="Bezier curve")
        ax.plot(pts[:2, 0], pts[:2, 1], color="w", lw=1.5, ls="--", label="line")
        ax.scatter(pts[:2, 0], pts[:2, 1], color="w", edgecolor="k", zorder=5, s=50)
        ax.scatter(pts[2:, 0], pts[2:, 1], color="C3", marker="x", zorder=5, s=50, label="bend θ")
        ax.annotate("w1", pts[0], textcoords="offset points", xytext=(5, 5), color="w")
        ax.annotate("w2", pts[1], textcoords="offset points", xytext=(5, 5), color="w")
        # Not to scale: the bend lies a few units off a line some 50 units long.
        ax.set(
            title=f"shortcut {s}" if s != "none" else "no shortcut",
            xlabel="u: along w2 − w1",
            ylabel="v: towards the bend (stretched)",
        )
        ax.legend(fontsize="small", loc="upper right")
    fig.suptitle("Training loss on the plane through w1, w2 and the bend")
    return fig


# ----------------------------------------------------------------------------- command line


def _report(cfg: Config, summary: dict) -> list[str]:
    return [
        f"shortcut {s}: training-loss barrier {summary[s]['line']['train_loss_barrier']:.3f} "
        f"along the line, {summary[s]['curve']['train_loss_barrier']:.3f} along the curve"
        for s in cfg.shortcuts
    ]


main = cli.study_main(
    __name__,
    lambda c, out, args: compute(c, out, data_dir=args.data_dir, progress=not args.no_progress),
    plot,
    options=cli.DataOptions,
    prepare=cli.check_data_dir,  # --data-dir: the CIFAR-10 folder, with --data cifar10 only
    report=_report,
    quick_help="ResNet-8 pairs on 512 images (about 25 s)",
)


if __name__ == "__main__":
    main()
