"""Sharpness maps: the top Hessian eigenvalue at every point of a filter-normalized plane.

Li et al. (2018) draw the loss over a 2-D filter-normalized plane through a trained network;
their tool computes curvature with ARPACK point by point. Here lambda_max is mapped over the
same kind of plane, beside the loss contours, for two networks on the bundled digits:

- a ResNet-20 (shortcut A, batch norm in eval mode with its trained statistics) on a coarse
  grid, and
- a small fc-tanh MLP on a fine grid,

each trained here first. Every point's lambda_max is one Lanczos run (`sharpness.on_plane`):
on accelerators the points are batched through the engine; on CPU each point's run is stepped
from Python through one compiled step (XLA:CPU runs a network's HVP several times slower
inside a loop body). The summary gives, per network, the map's range, the sharpness at the
centre beside a separate Lanczos run there, how sharpness and loss go together over the
plane (Spearman rank correlation), and the time per point against one Lanczos at the centre
in the same run.

Measured (digits, seed 0): ResNet-20 (20 epochs, loss over 128 images, 11 x 11, 10 Lanczos
steps per point): lambda_max 2.78 at the trained point rising to 12,533 at the plane's edge,
rank correlation with the loss 0.73, 1.49 s per point (one after another) against 2.96 s
for one Lanczos run at the centre; the MLP (41 x 41, batched 32 points per call): 0.079 to
10.0, rank correlation 0.89, 3.7 ms per point against 24 ms for one run at the centre
(0.15x: the batching's gain). The default took 4 min 9 s on a 2-core CPU (AVX-512).

Run: make sharpness_map   (smoke: python -m studies.sharpness_map --quick, about 25 s).
"""

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from matplotlib import colors

from sandbox import cli, config, data, engine, hessian, network, sharpness, surface, train
from sandbox.models import fc, resnet

NAME = "sharpness_map"
NETWORKS = ("resnet", "mlp")
CHUNK = 32  # points per compiled call of a batched map


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the networks and the plane's directions
    depth: resnet.Depth = 20  # the ResNet's 6n + 2 layers
    epochs: int = config.count(20, 10_000)  # the ResNet's epochs of training
    resnet_grid: int = config.count(11, 257, lo=2)  # points per side of the ResNet's plane
    resnet_images: int = config.count(128, 10**6)  # loss and Hessian over the first N images
    mlp_hidden: int = config.count(32, 8192)  # the MLP's hidden width
    mlp_steps: int = config.count(500, 10**6)  # full-batch Adam steps
    mlp_grid: int = config.count(41, 1025, lo=2)  # points per side of the MLP's plane
    extent: float = config.field(1.0, gt=0)  # the plane spans [-extent, extent]^2
    num_iters: int = config.count(10, 1000)  # Lanczos steps per point


QUICK = Config(depth=8, epochs=2, resnet_grid=3, resnet_images=32, mlp_steps=50, mlp_grid=5)


# ----------------------------------------------------------------------------- networks


def resnet_problem(cfg: Config, ds: data.Dataset, folder: Path, progress: bool):
    """(loss of the params, trained params): ResNet-(depth), batch norm in eval mode."""
    model = resnet.ResNet(depth=cfg.depth, shortcut="A", num_classes=ds.num_classes)
    tcfg = train.TrainConfig(epochs=cfg.epochs, seed=cfg.seed)
    state, _ = train.fit(
        model,
        ds,
        tcfg,
        workdir=folder / "resnet",
        keep_last=1,
        progress=progress,
        label=f"ResNet-{cfg.depth}: ",
    )
    v = train.variables(state)
    n = min(cfg.resnet_images, len(ds.y_train))
    x, y = jnp.asarray(ds.x_train[:n]), jnp.asarray(ds.y_train[:n])
    return network.eval_loss(model, v, x, y), v["params"]


def mlp_problem(cfg: Config, ds: data.Dataset):
    """(loss of the params, trained params): fc-tanh 64-(mlp_hidden)-10, cross-entropy, full
    batch."""
    x = jnp.asarray(ds.x_train.reshape(len(ds.y_train), -1))
    y = jnp.asarray(ds.y_train)

    def loss(params):
        logits = fc.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    params = fc.init(jax.random.key(cfg.seed), (x.shape[1], cfg.mlp_hidden, ds.num_classes))
    return loss, network.fit_full_batch(loss, params, optax.adam(1e-2), cfg.mlp_steps)


# ----------------------------------------------------------------------------- compute


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def _point_losses(loss, params, d1, d2, xy):
    """The loss at every point of the plane (one jitted, vmapped call in chunks)."""

    def one(ab, shared):
        p, d1, d2 = shared
        return loss(network.point(p, ab, (d1, d2)))

    return engine.map_chunks(one, xy, (params, d1, d2), batch=1, desc="loss", unit="point")


def map_one(name: str, loss, params, grid: int, cfg: Config, loop, batch) -> tuple[dict, dict]:
    k1, k2, k3 = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 7), 3)
    d1 = surface.filter_normalized_direction(k1, params)
    d2 = surface.filter_normalized_direction(k2, params)
    xs = surface.axis(-cfg.extent, cfg.extent, grid, "extent")
    xy = surface.plane_coords(xs, xs)
    loss_G = np.asarray(_point_losses(loss, params, d1, d2, xy))
    kw = dict(key=k3, num_iters=cfg.num_iters, batch=batch, loop=loop, chunk=CHUNK)
    sharpness.on_plane(loss, params, d1, d2, xy[:1], **kw)  # compiles, outside the timing
    start = time.perf_counter()
    lam_G = sharpness.on_plane(loss, params, d1, d2, xy, **kw)
    map_s = time.perf_counter() - start
    hessian.top_eigenvalues(loss, params, 1, key=k3, num_iters=cfg.num_iters)  # compiled
    start = time.perf_counter()
    centre = float(
        jax.block_until_ready(
            hessian.top_eigenvalues(loss, params, 1, key=k3, num_iters=cfg.num_iters)
        )[0]
    )
    centre_s = time.perf_counter() - start
    c = len(xy) // 2  # odd grids have the centre point in the middle
    arrays = {
        f"{name}/xs": xs,
        f"{name}/loss": loss_G.reshape(grid, grid),
        f"{name}/lambda_max": lam_G.reshape(grid, grid),
    }
    summary = {
        "grid": grid,
        "params": int(sum(np.size(a) for a in jax.tree.leaves(params))),
        "lambda_max_centre_map": float(lam_G[c]) if grid % 2 else None,
        "lambda_max_centre_lanczos": centre,
        "lambda_max_range": [float(np.min(lam_G)), float(np.max(lam_G))],
        "negative_share": float(np.mean(lam_G <= 0)),
        "spearman_loss_sharpness": _spearman(loss_G, lam_G),
        # Share of the plane's points flatter than the trained point (0: the flattest).
        "centre_sharpness_percentile": float(np.mean(lam_G < centre)),
        "seconds_per_point": map_s / len(xy),
        "seconds_centre_lanczos": centre_s,
        "per_point_over_centre": (map_s / len(xy)) / centre_s,
    }
    return arrays, summary


def compute(cfg: Config, out: Path, *, progress: bool = True) -> tuple[dict, dict]:
    ds = data.digits_dataset(seed=cfg.seed)
    arrays, summary = {}, {}
    for name in engine.bar(NETWORKS, desc=NAME, unit="network", disable=not progress):
        if name == "resnet":
            loss, params = resnet_problem(cfg, ds, out / "networks", progress)
            # One point at a time (vmapped weights make grouped convolutions), its Lanczos
            # stepped from Python on CPU (`hessian.default_loop`).
            grid, loop, batch = cfg.resnet_grid, None, 1
        else:
            loss, params = mlp_problem(cfg, ds)
            # Matrix products only: every point of a chunk in one vmapped Lanczos loop.
            grid, loop, batch = cfg.mlp_grid, "lax", None
        a, s = map_one(name, loss, params, grid, cfg, loop, batch)
        s["loop"] = loop or hessian.default_loop()
        arrays |= a
        summary[name] = s
    summary["claims"] = {}
    for n in NETWORKS:
        m = summary[n]
        summary["claims"][n] = {
            "centre_matches_a_separate_lanczos": m["lambda_max_centre_map"] is None
            or abs(m["lambda_max_centre_map"] - m["lambda_max_centre_lanczos"])
            <= 1e-3 * abs(m["lambda_max_centre_lanczos"]),
            # Li et al. 2018 (sections 6-7): trained networks sit in flat, convex regions,
            # and curvature grows away from the minimum with the loss.
            "trained_point_in_flattest_tenth": m["centre_sharpness_percentile"] <= 0.1,
            "sharpness_rises_with_loss": m["spearman_loss_sharpness"] > 0,
        }
    return arrays, summary


# ----------------------------------------------------------------------------- figures


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    fig, axes = plt.subplots(2, 2, figsize=(10, 8.4), layout="constrained")
    titles = {"resnet": f"ResNet-{cfg.depth}", "mlp": f"fc-tanh MLP ({cfg.mlp_hidden} hidden)"}
    for row, name in zip(axes, NETWORKS, strict=True):
        xs = arrays[f"{name}/xs"]
        z = np.log10(np.maximum(arrays[f"{name}/loss"], 1e-8))
        cs = row[0].contourf(xs, xs, z, levels=20, cmap="viridis")
        fig.colorbar(cs, ax=row[0], label="log10 training loss")
        lam = arrays[f"{name}/lambda_max"]
        pos = lam[lam > 0]
        norm = colors.LogNorm(pos.min(), pos.max()) if len(pos) and pos.max() > pos.min() else None
        im = row[1].pcolormesh(xs, xs, np.where(lam > 0, lam, np.nan), norm=norm, cmap="magma")
        fig.colorbar(im, ax=row[1], label="λmax (log scale)")
        row[1].contour(xs, xs, z, levels=8, colors="w", linewidths=0.5, alpha=0.6)
        s = summary[name]
        row[0].set(title=f"{titles[name]}: loss", xlabel="δ", ylabel="η", aspect="equal")
        row[1].set(
            title=f"{titles[name]}: λmax, {s['grid']} x {s['grid']}",
            xlabel="δ (loss contours in white)",
            ylabel="η",
            aspect="equal",
            xlim=(xs[0], xs[-1]),
            ylim=(xs[0], xs[-1]),
        )
        for ax in row:
            ax.plot(0, 0, "w*", ms=8, mec="k")
    fig.suptitle("Sharpness maps over filter-normalized planes through trained networks")
    return {"maps": fig}


# ----------------------------------------------------------------------------- command line


def _report(cfg: Config, summary: dict) -> list[str]:
    return [
        f"{name}: λmax from {s['lambda_max_range'][0]:.4g} to {s['lambda_max_range'][1]:.4g}; "
        f"{s['seconds_per_point']:.2f} s per point, "
        f"{s['per_point_over_centre']:.2f}x one Lanczos at the centre"
        for name, s in ((name, summary[name]) for name in NETWORKS)
    ]


main = cli.study_main(
    __name__,
    lambda c, out, args: compute(c, out, progress=not args.no_progress),
    plot,
    options=cli.Progress,
    report=_report,
    quick_help="ResNet-8, 3 x 3 and 5 x 5 grids (about 25 s)",
)


if __name__ == "__main__":
    main()
