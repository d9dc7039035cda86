"""ResNet-56 with and without skip connections: loss surfaces, training paths, Hessian spectra.

The lecture's ResNet-56 slide (Li et al. 2018, "Visualizing the loss landscape of neural
nets") measured on our data rather than assumed. Two networks of the same depth and the same
parameters by name and shape, one with identity shortcuts (type A) and one without any, are
trained alike (sandbox.train: SGD with Nesterov momentum, cosine schedule) on the digits
(or CIFAR-10 from a local folder). Then, for each, at its trained weights:

- the 2-D surface of the training loss on the plane of two filter-normalized Gaussian
  directions over [-1, 1]^2, in eval mode over every training image (the same two random
  draws for both networks), drawn as contours on one colour scale and in 3-D, each
  surface on its own range;
- 1-D slices: the centre row and column of that plane;
- the linear interpolation from the initial to the trained weights (and running
  statistics), from alpha = -0.5 to 1.5;
- the PCA path of training: the checkpoints projected on the top two principal directions
  of (checkpoint - final), over the surface on that plane;
- the Hessian's largest and most negative eigenvalues at the trained weights (Lanczos on
  Hessian-vector products, over a fixed subset of the training images), and
  |lambda_min / lambda_max|;
- surface statistics (sandbox.surface.surface_stats): the area below the loss of a uniform
  guess, grid-local minima, the fraction of the plane where the surface is non-convex.
- per-stage (block) Hessians: lambda_max, lambda_min and the trace of the sub-Hessian of the
  stem, each of the three stages and the classifier head (`hessian.blocks`), over the first
  `spectrum_images` training images;
- the outlier spectrum (Papyan 2019, Ghorbani et al. 2019): the top 2C eigenvalues (C
  classes) of the same Hessian against the top of its bulk, the largest node of a
  stochastic Lanczos quadrature that carries at least 0.1% of the spectral weight
  (`hessian.outliers`): how many lie above it (theory: about C) and lambda_C / lambda_C+1;
- a closer view of the network without shortcuts, its plane over [-zoom, zoom]^2.

Figures: the contours share one log scale for both networks, clipped at PLOT_CAP (noted on
the figure); the 3-D surfaces each use their own range, so the plain network's ridges show
instead of a plate at the clip; zoom_none.png is the close view, spectrum.png the per-stage
table and the density with the top 2C eigenvalues and the bulk edge.

summary.json compares the two networks on each of these and says, claim by claim, whether
the shortcuts made the landscape smoother here.

Measured on the digits (seed 0, 30 epochs, the networks train_resnet trained, 11 x 11
plane, Hessian over 256 images):
  ResNet-56  shortcut A: test 97.8%, lambda_max 1.22, 21% of the plane below ln 10,
             non-convex share 5%;  no shortcuts: 65.2%, lambda_max 1922, 0.8%, 63%
             (an earlier session's networks: 97.5% / 58.5%, lambda_max 1.21 / 1833).
  Earlier runs on a 21 x 21 plane: ResNet-20 shortcut A 97.5%, lambda_max 1.26; no
  shortcuts 97.8%, lambda_max 0.22. ResNet-110 (--grid 11) shortcut A 97.2%, lambda_max
  0.71; no shortcuts 10.0% (does not train), lambda_max 28.6, non-convex share 93%.
  At 20 layers the plain network trains and is not sharper; at 56 and 110 it is, and its
  surface turns non-convex almost everywhere: the trend with depth that Li et al. report.
  Per stage (Hessian over 32 images), shortcut A against none: lambda_max stem 0.057 / 1.51,
  stage1 0.82 / 374, stage2 1.07 / 1413, stage3 0.27 / 1031, head 0.058 / 1.97; traces
  1.7 / 751 (stage1), 2.2 / 3479 (stage2), 1.1 / 2310 (stage3). Outliers: all 20 of the top
  2C lie above the bulk edge of this definition (0.004 and 0.95) for both networks, and
  lambda_10 / lambda_11 is 1.30 and 1.07: no gap at C, so Papyan's C outliers are not seen
  here (both networks have batch norm, which Ghorbani et al. find suppresses them):
  summary.json's outlier verdict is False for both.
  The default took 439 s (7.3 min) after make train_resnet (187 s), on 2 AVX-512 cores
  with nothing else running: per network the 11 x 11 plane 57 s and 52 s, the Hessian's
  ends 37 s and 33 s, the per-stage blocks and outliers 42 s and 36 s (every Hessian
  function of one network shares one compiled HVP: the ends and spectra of a ResNet-56
  took 107 s before, 79 s after, same machine, one after the other).

Grid sizes: the CPU default is 11 x 11 on the main plane (step 0.2), 7 x 7 on the PCA
plane and 11 points on the interpolation line: ResNet-56 over the 1,438 training digits
takes about 0.9 s per point on two cores, so the paper's 51 x 51 (`--scale paper`) is an
accelerator job. A run that is stopped continues where it stopped: training from its
checkpoints, each surface from its engine store in cells/ (one per computation, named by
its digest; `--store DIR` elsewhere).

The networks: those of train_resnet's run folder (`--networks DIR`; by default
results/train_resnet, or -quick) where it holds this very run, else trained in <out>/train/,
said in a line on stderr where the folder exists; a `--networks` folder that does not
exist is refused, and `--networks none` always trains here.

Run: make resnet_landscape (ResNet-56 pair on the digits, after make train_resnet: 439 s
                            measured on 2 AVX-512 cores; about 3 min more when it has
                            to train the pair itself)
     python -m studies.resnet_landscape --depth 20   (or 110: the other pairs)
     python -m studies.resnet_landscape --data cifar10 --data-dir DIR --scale paper
     --precision bfloat16: the surfaces in bfloat16 mixed precision (timed on GPUs by
                           benchmarks/device.sh)
     smoke: python -m studies.resnet_landscape --quick (ResNet-8, 5 x 5; 24 s after
            train_resnet --quick, about 45 s on its own)
"""

import dataclasses
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import colors

from sandbox import (
    checkpoints,
    cli,
    config,
    data,
    engine,
    hessian,
    network,
    plotting,
    precision,
    results,
    surface,
    train,
)
from sandbox.models import resnet

NAME = "resnet_landscape"
DataSet = data.Name  # a field named `data` hides the module in the class body
Precision = precision.Name
CONVERGED = 0.1  # Ritz values that move less than this (relative) when the steps double
SHORTCUTS = ("A", "none")
ODD = (lambda n: n % 2 == 1, "odd (the centre on the grid)")


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # seed of the networks, the directions and the probes
    data: DataSet = "digits"  # the data set
    depth: resnet.Depth = 56  # 6n + 2 layers
    # Training (both networks alike).
    epochs: int = config.count(30, 10_000)  # epochs of training
    batch_size: int = config.count(128, 2**16)  # images per SGD step
    lr: float = config.field(0.1, gt=0)  # peak learning rate
    weight_decay: float = config.field(5e-4, 0)  # L2 coefficient added to the gradient
    checkpoint_every: int = config.count(2, 10_000)  # epochs between the PCA path's checkpoints
    # Surfaces.
    grid: int = config.field(11, 3, 1025, rule=ODD)  # points per side of the main plane
    extent: float = config.field(1.0, gt=0)  # the plane is [-extent, extent]^2
    pca_grid: int = config.field(7, 3, 1025, rule=ODD)  # points per side of the PCA plane
    pca_margin: float = config.field(1.3, 1)  # the PCA plane covers the path times this
    interp_points: int = config.field(11, 3, 10_001, rule=ODD)  # points on the line
    # (start, end) of the line through init and trained, in units of their distance
    interp_range: tuple[float, float] = config.field((-0.5, 1.5), increasing=True)
    surface_images: int = config.count(0, 10**6, lo=0)  # images the surfaces average; 0: all
    eval_batch: int = config.count(256, 2**16)  # images per evaluation batch
    # The surfaces' forward passes: "float32" or "bfloat16" (sandbox.precision). Training
    # and the Hessian stay float32, so the networks train_resnet trained are reused.
    precision: Precision = "float32"  # the surfaces' forward passes
    # Hessian.
    hessian_images: int = config.count(256, 10**6)  # images of the Hessian's loss
    lanczos_iters: int = config.count(16, 1000)  # doubled: the second half checks convergence
    # Per-stage (block) Hessians and the outlier spectrum, over the first `spectrum_images`
    # training images.
    spectrum_images: int = config.count(32, 10**6)  # images of the spectra
    block_iters: int = config.count(10, 1000)  # Lanczos steps per block
    block_probes: int = config.count(8, 1000)  # Hutchinson probes per block
    outlier_iters: int = config.count(48, 1000)  # Lanczos steps for the top 2C (checked at half)
    slq_probes: int = config.count(2, 1000)  # probes of the spectral density
    slq_iters: int = config.count(32, 1000)  # Lanczos steps per probe of the density
    # A closer view of the network without shortcuts: its plane over [-zoom, zoom]^2.
    zoom_extent: float = config.field(0.2, gt=0)  # the zoom's half-width
    zoom_grid: int = config.field(7, 3, 1025, rule=ODD)  # points per side of the zoom

    RELATIONS = (
        config.relation(
            "at least 3 checkpoints (every checkpoint_every-th epoch and the last) for the "
            "PCA path's 2 directions",
            lambda c: len(c.checkpoint_epochs()) >= 3,
        ),
    )

    def checkpoint_epochs(self) -> list[int]:
        """The epochs of the PCA path: every `checkpoint_every`-th and the last."""
        return sorted({*range(0, self.epochs + 1, self.checkpoint_every), self.epochs})

    def train_config(self) -> train.TrainConfig:
        return train.TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            augment=self.data == "cifar10",
            seed=self.seed,
        )


# hessian_images = spectrum_images: one compiled HVP per network.
QUICK = Config(
    depth=8,
    epochs=2,
    checkpoint_every=1,
    grid=5,
    pca_grid=3,
    interp_points=5,
    zoom_grid=3,
    surface_images=256,
    hessian_images=32,
    spectrum_images=32,
    lanczos_iters=6,
    block_iters=4,
    block_probes=2,
    outlier_iters=24,
    slq_iters=12,
)


# Li et al.'s resolution: 51 x 51 on the main plane (an accelerator job, `--scale paper`).
PAPER = Config(grid=51, pca_grid=21, interp_points=41)


def _hessian_edges(loss, variables, key, iters) -> dict:
    """Lambda_max and lambda_min of `loss` (`network.eval_loss`), checked by doubling the Lanczos
    steps (`hessian.converged_extremes`)."""
    e = hessian.converged_extremes(
        loss, variables["params"], key=key, num_iters=iters, tol=CONVERGED
    )
    lmax, lmin = e["lambda_max"], e["lambda_min"]
    return {
        "lambda_max": lmax,
        "lambda_min": lmin,
        "abs_min_over_max": abs(lmin / lmax) if lmax > 0 else None,
        f"lambda_max_after_{iters}": e["half"]["lambda_max"],
        f"lambda_min_after_{iters}": e["half"]["lambda_min"],
        "relative_change": e["relative_change"],
        "converged": e["converged"],
        "lanczos_iters": e["lanczos_iters"],
    }


# The blocks of the per-stage table: parameter paths of models/resnet.py.
STAGE_BLOCKS = {
    "stem": lambda path: path.startswith("stem"),
    "stage1": lambda path: path.startswith("stage1_"),
    "stage2": lambda path: path.startswith("stage2_"),
    "stage3": lambda path: path.startswith("stage3_"),
    "head": lambda path: path.startswith("head"),
}


def _spectrum(loss, variables, key, cfg: Config, num_classes: int, images: int) -> dict:
    """Per-stage lambda_max and trace (`hessian.blocks`) and the outlier spectrum (top 2C
    eigenvalues against the SLQ bulk edge, `hessian.outliers`) of `loss` (`network.eval_loss`)."""
    params = variables["params"]

    kb, ko, ks = jax.random.split(key, 3)
    masks = {name: hessian.block_mask(params, sel) for name, sel in STAGE_BLOCKS.items()}
    blocks = hessian.blocks(
        loss, params, masks, key=kb, num_iters=cfg.block_iters, num_probes=cfg.block_probes
    )
    k = 2 * num_classes
    alpha, beta = hessian.tridiagonal(loss, params, key=ko, num_iters=cfg.outlier_iters)
    top = hessian.ritz_values(alpha, beta)[:k]
    half = cfg.outlier_iters // 2
    top_half = hessian.ritz_values(alpha[:half], beta[: half - 1])[:k]
    nodes, weights = hessian.density(
        loss, params, key=ks, num_probes=cfg.slq_probes, num_iters=cfg.slq_iters
    )
    out = hessian.outliers(top, nodes, weights, num_classes)
    # Which of the top 2C moved by less than CONVERGED when the Lanczos steps doubled.
    moved = np.abs(top - np.pad(top_half, (0, k - len(top_half)), constant_values=np.nan))
    out["converged"] = int(np.sum(moved < CONVERGED * np.abs(top)))
    out["num_classes"] = num_classes
    out["bulk_edge_definition"] = (
        f"largest SLQ node with weight >= {hessian.BULK_WEIGHT:g} ({cfg.slq_probes} probes x "
        f"{cfg.slq_iters} steps)"
    )
    return {
        "images": images,
        "blocks": blocks,
        "outliers": out,
        "density": {"nodes": np.asarray(nodes), "weights": np.asarray(weights)},
    }


def _trained(
    cfg: Config, ds: data.Dataset, model, shortcut: str, out: Path, networks, progress: bool
):
    """(state, history, workdir) of the trained network: the one in `networks`/<shortcut>
    (train_resnet's run folder) when it is this very run, else trained (or resumed) in
    out/train/<shortcut>, said in one line on stderr where `networks` is a folder."""
    keep = cfg.checkpoint_epochs()
    tcfg = cfg.train_config()
    workdir = out / "train" / shortcut
    label = f"ResNet-{cfg.depth} shortcut {shortcut}: "
    if networks is not None:
        found = train.reload(model, ds, tcfg, Path(networks) / shortcut, keep_epochs=keep)
        if found is not None:
            return *found, Path(networks) / shortcut
        if Path(networks).is_dir():
            print(
                f"{NAME}: {Path(networks) / shortcut} holds no finished run of this "
                f"{label.rstrip(': ')} ({cfg.epochs} epochs on {cfg.data}, seed {cfg.seed}): "
                f"training it in {workdir}",
                file=sys.stderr,
            )
    state, hist = train.fit(
        model, ds, tcfg, workdir=workdir, keep_epochs=keep, progress=progress, label=label
    )
    return state, hist, workdir


def _interpolation(model, trained, init, cfg: Config, x, y, kw) -> tuple[dict, dict]:
    """The loss along (1 - alpha) init + alpha trained, parameters and statistics alike."""
    alphas = surface.axis(*cfg.interp_range, cfg.interp_points, "interp_range")
    interp = surface.interpolate(model, init, trained, alphas, x, y, **kw)
    inside = interp.loss[(alphas >= 0) & (alphas <= 1)]
    arrays = {"alphas_A": alphas, "interp_loss_A": interp.loss, "interp_acc_A": interp.accuracy}
    summary = {
        "loss_at_0": float(interp.loss[np.argmin(np.abs(alphas))]),
        "loss_at_1": float(interp.loss[np.argmin(np.abs(alphas - 1))]),
        "max_between": float(np.max(inside)),
        "monotone_decrease": bool(np.all(np.diff(inside) <= 0)),
    }
    return arrays, summary


def _pca_plane(model, trained, ckpt_dir, keep, cfg: Config, x, y, kw) -> tuple[dict, dict]:
    """The training path projected on its top two principal directions, and the loss over
    the plane they span around the trained weights."""
    _, path = surface.checkpoint_path(ckpt_dir, keep)
    pca = surface.pca_directions(path, final=trained["params"])
    # Each axis covers the path; the second at least a tenth of the first, so a path that is
    # nearly a straight line still shows the valley around it.
    c1, c2 = np.max(np.abs(pca.coords), axis=0)
    reach_x = cfg.pca_margin * float(c1)
    reach_y = cfg.pca_margin * float(max(c2, 0.1 * c1))
    pxs = surface.axis(-reach_x, reach_x, cfg.pca_grid, "pca range")
    pys = surface.axis(-reach_y, reach_y, cfg.pca_grid, "pca range")
    plane = surface.plane(model, trained, *pca.directions, pxs, pys, x, y, **kw)
    arrays = {
        "pca_xs_X": pxs,
        "pca_ys_Y": pys,
        "pca_loss_YxX": plane.loss,
        "pca_path_Tx2": pca.coords,
        "pca_epochs_T": np.asarray(keep),
    }
    summary = {
        "explained": [float(e) for e in pca.explained],
        "checkpoints": len(keep),
        "range": [reach_x, reach_y],
    }
    return arrays, summary


def compute_one(
    cfg: Config,
    ds: data.Dataset,
    shortcut: str,
    out: Path,
    progress: bool,
    networks: Path | None = None,
) -> tuple[dict, dict]:
    """Trains one network (or reloads it) and measures its landscape."""
    model = resnet.ResNet(depth=cfg.depth, shortcut=shortcut, num_classes=ds.num_classes)
    start = time.perf_counter()
    state, hist, workdir = _trained(cfg, ds, model, shortcut, out, networks, progress)
    train_s = time.perf_counter() - start
    trained = train.variables(state)
    n = cfg.surface_images or len(ds.x_train)
    x, y = ds.x_train[:n], ds.y_train[:n]
    kw = dict(batch_size=min(cfg.eval_batch, n), progress=progress, precision=cfg.precision)
    key = jax.random.key(cfg.seed)
    k1, k2, kh = jax.random.split(jax.random.fold_in(key, 1), 3)  # same draws for both nets
    d1 = surface.filter_normalized_direction(k1, trained["params"])
    d2 = surface.filter_normalized_direction(k2, trained["params"])
    cos12 = float(surface.vdot(d1, d2) / (surface.norm(d1) * surface.norm(d2)))

    # Centre check: the trained model's loss by the training code's own evaluation.
    evaluate = train.make_evaluate(model, cfg.eval_batch, cfg.precision)
    ref_loss, ref_acc = evaluate(state, jnp.asarray(x), jnp.asarray(y))

    t0 = time.perf_counter()
    xs = ys = surface.axis(-cfg.extent, cfg.extent, cfg.grid, "extent")
    main = surface.plane(model, trained, d1, d2, xs, ys, x, y, **kw)
    plane_s = time.perf_counter() - t0
    init = train.variables(checkpoints.load_checkpoint(workdir / "checkpoints", 0)[0])
    interp_arrays, interp = _interpolation(model, trained, init, cfg, x, y, kw)
    keep = cfg.checkpoint_epochs()
    pca_arrays, pca = _pca_plane(model, trained, workdir / "checkpoints", keep, cfg, x, y, kw)

    zoom_arrays = {}
    if shortcut == "none":  # the chaotic one: a closer look near its centre
        zs = surface.axis(-cfg.zoom_extent, cfg.zoom_extent, cfg.zoom_grid, "zoom_extent")
        zoom = surface.plane(model, trained, d1, d2, zs, zs, x, y, **kw)
        zoom_arrays = {"zoom_xs_X": zs, "zoom_loss_YxX": zoom.loss}

    t0 = time.perf_counter()
    nh = min(cfg.hessian_images, len(ds.x_train))
    xh, yh = jnp.asarray(ds.x_train[:nh]), jnp.asarray(ds.y_train[:nh])
    loss_h = network.eval_loss(model, trained, xh, yh)
    edges = _hessian_edges(loss_h, trained, kh, cfg.lanczos_iters)
    hessian_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ns = min(cfg.spectrum_images, len(ds.x_train))
    # The same loss object when the images are the same: one compiled HVP for both.
    xsp, ysp = jnp.asarray(ds.x_train[:ns]), jnp.asarray(ds.y_train[:ns])
    loss_s = loss_h if ns == nh else network.eval_loss(model, trained, xsp, ysp)
    spectrum = _spectrum(loss_s, trained, kh, cfg, ds.num_classes, ns)
    density = spectrum.pop("density")
    spectrum_s = time.perf_counter() - t0

    c = cfg.grid // 2
    arrays = {
        "xs_X": xs,
        "loss_YxX": main.loss,
        "acc_YxX": main.accuracy,
        "slice_d1_X": main.loss[c, :],
        "slice_d2_Y": main.loss[:, c],
        **interp_arrays,
        **pca_arrays,
        **zoom_arrays,
        "slq_nodes_Pxm": density["nodes"],
        "slq_weights_Pxm": density["weights"],
        "top_2C": np.asarray(spectrum["outliers"]["top"]),
        "test_acc_E": hist.test_acc_E,
        "train_loss_E": hist.train_loss_E,
    }
    summary = {
        "network": f"ResNet-{cfg.depth}, shortcut {shortcut}",
        "params": resnet.num_params(trained["params"]),
        "test_accuracy": float(hist.test_acc_E[-1]),
        "train_accuracy_eval_mode": float(ref_acc),
        "centre_loss": {
            "measured": float(main.loss[c, c]),
            "reference": float(ref_loss),
            "note": "surface centre vs sandbox.train's evaluation of the trained model",
        },
        "surface": surface.surface_stats(main.loss, xs, ys, level=math.log(ds.num_classes)),
        "directions_cosine": cos12,
        "interpolation": interp,
        "pca": pca,
        "hessian": {**edges, "images": nh},
        "spectrum": spectrum,
        "trained_in": str(workdir),
        "wall_s": {
            "train_session": round(train_s, 1),
            "plane": round(plane_s, 1),
            "hessian": round(hessian_s, 1),
            "spectrum": round(spectrum_s, 1),
        },
        "surface_images": n,
    }
    return arrays, summary


def outlier_claim(out: dict, num_classes: int) -> dict:
    """Papyan's claim against `hessian.outliers`' numbers: about C eigenvalues (C - 1 to
    C + 1) above the bulk. When every one of the top 2C lies above the edge
    (`count_capped`), at least 2C do: the claim does not hold at this bulk edge."""
    c, count = num_classes, out["count"]
    verdict = {
        "outliers_above_bulk": count,
        "count_capped": out["count_capped"],
        "num_classes": c,
        "gap_ratio_C": out["gap_ratio_C"],
        "claim": "about C outliers above the bulk (Papyan 2019): C - 1 to C + 1",
        "holds": bool(not out["count_capped"] and c - 1 <= count <= c + 1),
    }
    if out["count_capped"]:
        verdict["note"] = f"all {len(out['top'])} computed eigenvalues lie above the bulk edge"
    return verdict


def compare(s: dict) -> dict:
    """Li et al.'s claim, piece by piece: is the network with shortcuts the smoother one?"""
    a, b = s["A"], s["none"]

    def claim(name, va, vb, smoother_if, needs=()):
        out = {"A": va, "none": vb, "claim": name}
        if va is None or vb is None:
            return {**out, "holds": None, "note": "undefined (lambda_max <= 0)"}
        out["holds"] = bool(smoother_if(va, vb))
        loose = [
            f"{k} of {net}"
            for net in ("A", "none")
            for k in needs
            if not s[net]["hessian"]["converged"][k]
        ]
        if loose:
            out["note"] = f"Lanczos not converged to 10%: {', '.join(loose)}"
        return out

    return {
        "lower_sharpness": claim(
            "smaller top Hessian eigenvalue with shortcuts",
            a["hessian"]["lambda_max"],
            b["hessian"]["lambda_max"],
            lambda u, v: u < v,
            needs=("lambda_max",),
        ),
        "more_convex_at_minimum": claim(
            "smaller |lambda_min / lambda_max| with shortcuts",
            a["hessian"]["abs_min_over_max"],
            b["hessian"]["abs_min_over_max"],
            lambda u, v: u < v,
            needs=("lambda_max", "lambda_min"),
        ),
        "wider_basin": claim(
            "larger area of the plane below the uniform-guess loss with shortcuts",
            a["surface"]["below_level"],
            b["surface"]["below_level"],
            lambda u, v: u > v,
        ),
        "fewer_local_minima": claim(
            "no more grid-local minima with shortcuts",
            a["surface"]["local_minima"],
            b["surface"]["local_minima"],
            lambda u, v: u <= v,
        ),
        "less_nonconvex": claim(
            "smaller non-convex fraction of the plane with shortcuts",
            a["surface"]["nonconvex_fraction"],
            b["surface"]["nonconvex_fraction"],
            lambda u, v: u < v,
        ),
    }


def compute(
    cfg: Config,
    out: Path,
    *,
    data_dir: str | None = None,
    progress: bool = True,
    networks: Path | str | None = None,
):
    """Both networks' landscapes; `networks`: a train_resnet run folder whose networks are
    reused where they are the same runs (else each is trained in out/train/)."""
    ds = data.load(cfg.data, data_dir=data_dir, seed=cfg.seed)
    arrays, summary = {}, {}
    for shortcut in SHORTCUTS:
        a, s = compute_one(cfg, ds, shortcut, out, progress, networks)
        arrays.update({f"{shortcut}/{k}": v for k, v in a.items()})
        summary[shortcut] = s
    summary["smoother_with_shortcuts"] = compare(summary)
    summary["outlier_spectrum"] = {
        s: outlier_claim(summary[s]["spectrum"]["outliers"], ds.num_classes) for s in SHORTCUTS
    }
    summary["data"] = {"name": ds.name, "train": len(ds.x_train), "test": len(ds.x_test)}
    summary["grid"] = f"{cfg.grid} x {cfg.grid} on [-{cfg.extent}, {cfg.extent}]^2"
    return arrays, summary


# ----------------------------------------------------------------------------- figures


# Losses above this are drawn in the top colour (as Li et al. clip theirs): without shortcuts
# the loss reaches 1e9 at the plane's corners, which would leave one colour for everything else.
PLOT_CAP = 100.0


def _levels(values: list[np.ndarray], n: int = 25) -> np.ndarray:
    """Log-spaced levels from the smallest finite loss to min(largest, PLOT_CAP)."""
    z = np.concatenate([np.ravel(v) for v in values])
    z = z[np.isfinite(z) & (z > 0)]
    if not len(z):
        return np.geomspace(1e-3, PLOT_CAP, n)
    lo = float(np.min(z))
    hi = min(float(np.max(z)), PLOT_CAP)
    return np.geomspace(lo, max(hi, lo * 1.01), n)


def _shown(z: np.ndarray, levels: np.ndarray) -> np.ma.MaskedArray:
    """z clipped into the levels' range; non-finite losses masked (left blank)."""
    z = np.asarray(z, np.float64)
    return np.ma.masked_invalid(np.where(np.isfinite(z), np.clip(z, levels[0], levels[-1]), np.nan))


def _contours(fig, ax, xs, ys, z, levels):
    norm = colors.LogNorm(levels[0], levels[-1])
    zs = _shown(z, levels)
    cs = ax.contourf(xs, ys, zs, levels=levels, norm=norm)
    ax.contour(xs, ys, zs, levels=levels[::3], colors="k", linewidths=0.4, alpha=0.5)
    return cs


def _colorbar(fig, cs, axes, levels, label):
    cbar = fig.colorbar(cs, ax=axes, label=label, shrink=0.85)
    cbar.set_ticks(levels[::4], labels=[f"{v:.3g}" for v in levels[::4]])
    cbar.minorticks_off()


def _contours_figure(arrays, cfg, summary, titles, levels, capped):
    """Both planes as filled contours on one log colour scale."""
    fig, axes = plt.subplots(1, 2, figsize=(plotting.FULL, 3.2), layout="constrained")
    for ax, s in zip(axes, SHORTCUTS, strict=True):
        xs = arrays[f"{s}/xs_X"]
        cs = _contours(fig, ax, xs, xs, arrays[f"{s}/loss_YxX"], levels)
        ax.plot(0, 0, "w*", ms=8, mec="k")
        h = summary[s]["hessian"]
        ax.set(
            xlabel="δ (filter-normalized)",
            ylabel="η (filter-normalized)",
            title=f"ResNet-{cfg.depth}, {titles[s]}\nλmax {h['lambda_max']:.3g}, "
            f"|λmin/λmax| {_fmt(h['abs_min_over_max'])}",
            aspect="equal",
        )
    _colorbar(fig, cs, axes, levels, f"training loss, log scale{capped}")
    if capped:
        top = max(float(np.nanmax(_finite(arrays[f"{s}/loss_YxX"]))) for s in SHORTCUTS)
        fig.text(
            0.01,
            0.01,
            f"one scale for both; losses above {PLOT_CAP:g} drawn in the top colour "
            f"(largest {top:.3g})",
            fontsize=7,
        )
    return fig


def _zoom_figure(arrays, cfg, summary, titles, levels, capped):
    """The network without shortcuts near its centre: contours and 3-D on its own scale."""
    xs = arrays["none/zoom_xs_X"]
    z = arrays["none/zoom_loss_YxX"]
    own = _own_levels(z, 20)
    fig = plt.figure(figsize=(plotting.FULL, 3.2), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    cs = _contours(fig, ax, xs, xs, z, own)
    ax.plot(0, 0, "w*", ms=8, mec="k")
    ax.set(
        xlabel="δ",
        ylabel="η",
        aspect="equal",
        title=f"{titles['none']}, |δ|, |η| ≤ {cfg.zoom_extent:g}",
    )
    _colorbar(fig, cs, ax, own, "training loss (own scale)")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    X, Y = np.meshgrid(xs, xs)
    ax3.plot_surface(X, Y, np.log10(_shown(z, own).filled(np.nan)), cmap="viridis", linewidth=0)
    ax3.set(xlabel="δ", ylabel="η", zlabel="log10 loss", title="near the centre, 3-D")
    return fig


def _spectrum_figure(arrays, cfg, summary, titles, levels, capped):
    """Per-stage lambda_max and trace, and the SLQ density with the top 2C eigenvalues."""
    fig, (ax_l, ax_t, ax_d) = plt.subplots(1, 3, figsize=(plotting.FULL, 3.0), layout="constrained")
    names = list(STAGE_BLOCKS)
    width = 0.38
    for i, s in enumerate(SHORTCUTS):
        b = summary[s]["spectrum"]["blocks"]
        pos = np.arange(len(names)) + (i - 0.5) * width
        ax_l.bar(pos, [b[n]["lambda_max"] for n in names], width, color=f"C{i}", label=titles[s])
        ax_t.bar(pos, [b[n]["trace"] for n in names], width, color=f"C{i}", label=titles[s])
        nodes, weights = arrays[f"{s}/slq_nodes_Pxm"], arrays[f"{s}/slq_weights_Pxm"]
        top = arrays[f"{s}/top_2C"]
        hi = float(max(np.max(nodes), np.max(top)))
        lo = float(min(np.min(nodes), 0.0))
        grid = np.linspace(lo, hi * 1.05, 400)
        dens = hessian.density_curve(nodes, weights, grid, sigma=max((hi - lo) / 200, 1e-6))
        ax_d.semilogy(grid, np.maximum(dens, 1e-12), color=f"C{i}", lw=1, label=titles[s])
        ax_d.plot(top, np.full_like(top, 1e-11), "|", color=f"C{i}", ms=10)
        edge = summary[s]["spectrum"]["outliers"]["bulk_edge"]
        ax_d.axvline(edge, color=f"C{i}", ls="--", lw=0.8)
    for ax, title in ((ax_l, "λmax per block"), (ax_t, "trace per block")):
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.set(title=title, yscale="symlog")
    fig.legend(*ax_l.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7)
    ax_d.set(
        xlabel="eigenvalue (symlog)",
        ylabel="SLQ density",
        ylim=(1e-12, None),
        title="top 2C (ticks), bulk edge (dashed)",
    )
    ax_d.set_xscale("symlog", linthresh=1e-2)  # both spectra, 1 and 1000 wide, visible
    # Ticks at every other decade: symlog's default labels of every decade overlap.
    lo, hi = ax_d.get_xlim()
    decades = [10.0**k for k in range(-2, 5, 2)]
    ticks = [-d for d in decades[::-1] if -d >= lo] + [d for d in decades if d <= hi]
    ax_d.set_xticks(ticks, [f"{t:g}" for t in ticks])
    return fig


def _own_levels(z: np.ndarray, n: int = 25) -> np.ndarray:
    """Log-spaced levels over one surface's own finite range, not clipped."""
    z = np.asarray(z, np.float64)
    z = z[np.isfinite(z) & (z > 0)]
    if not len(z):
        return np.geomspace(1e-3, PLOT_CAP, n)
    lo, hi = float(np.min(z)), float(np.max(z))
    return np.geomspace(lo, max(hi, lo * 1.01), n)


def _surface3d_figure(arrays, cfg, summary, titles, levels, capped):
    """Both planes in 3-D, log10 loss, each over its own range (the shared, clipped scale
    is the contour figure's): without shortcuts the loss spans ten decades, and a shared
    clip at PLOT_CAP would flatten it into a plate."""
    fig = plt.figure(figsize=(plotting.FULL, 3.2), layout="constrained")
    for i, s in enumerate(SHORTCUTS):
        own = _own_levels(arrays[f"{s}/loss_YxX"])
        zlo, zhi = np.log10(own[0]), np.log10(own[-1])
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        xs = arrays[f"{s}/xs_X"]
        X, Y = np.meshgrid(xs, xs)
        Z = np.log10(_shown(arrays[f"{s}/loss_YxX"], own).filled(np.nan))
        ax.plot_surface(
            X,
            Y,
            Z,
            cmap="viridis",
            norm=colors.Normalize(zlo, zhi),
            rstride=1,
            cstride=1,
            linewidth=0,
            antialiased=False,
        )
        ax.set(
            xlabel="δ",
            ylabel="η",
            zlabel="log10 loss",
            title=f"{titles[s]}: loss {own[0]:.3g} to {own[-1]:.3g} (own scale)",
            zlim=(zlo, zhi),
            xticks=[-cfg.extent, 0, cfg.extent],
            yticks=[-cfg.extent, 0, cfg.extent],
        )
    return fig


def _slices_figure(arrays, cfg, summary, titles, levels, capped):
    """The centre row and column of each plane, and the interpolation from init to trained."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(plotting.FULL, 2.6), layout="constrained")
    for i, s in enumerate(SHORTCUTS):
        xs = arrays[f"{s}/xs_X"]
        c = dict(color=f"C{i}")
        ax1.semilogy(xs, _finite(arrays[f"{s}/slice_d1_X"]), "-", label=f"{titles[s]}, δ", **c)
        ax1.semilogy(xs, _finite(arrays[f"{s}/slice_d2_Y"]), "--", label=f"{titles[s]}, η", **c)
        a = arrays[f"{s}/alphas_A"]
        ax2.semilogy(a, _finite(arrays[f"{s}/interp_loss_A"]), "o-", ms=3, label=titles[s], **c)
    ax1.set(xlabel="step along the direction", ylabel="training loss", title="1-D slices")
    ax1.set_xticks(np.linspace(-cfg.extent, cfg.extent, 5))
    ax1.legend(fontsize=7)
    ax2.axvline(0, color="k", lw=0.6, ls=":")
    ax2.axvline(1, color="k", lw=0.6, ls=":")
    ax2.set(
        xlabel="α: (1 − α) initial + α trained",
        ylabel="training loss",
        title="interpolation from initial to trained",
    )
    ax2.legend(fontsize=7)
    return fig


def _pca_path_figure(arrays, cfg, summary, titles, levels, capped):
    """The training path over the loss on its PCA plane, per network."""
    fig, axes = plt.subplots(1, 2, figsize=(plotting.FULL, 3.4), layout="constrained")
    for ax, s in zip(axes, SHORTCUTS, strict=True):
        xs, ys = arrays[f"{s}/pca_xs_X"], arrays[f"{s}/pca_ys_Y"]
        z = arrays[f"{s}/pca_loss_YxX"]
        zl = _levels([z], 20)
        cs = _contours(fig, ax, xs, ys, z, zl)
        p = arrays[f"{s}/pca_path_Tx2"]
        ax.plot(p[:, 0], p[:, 1], "o-", color="C3", ms=3, lw=1.2)
        ax.plot(p[0, 0], p[0, 1], "o", color="w", mec="C3", ms=6)
        ax.plot(0, 0, "w*", ms=9, mec="k")
        ex = summary[s]["pca"]["explained"]
        blank = int(np.sum(~np.isfinite(z)))
        if blank:
            ax.text(
                0.02,
                0.02,
                f"blank: loss overflows ({blank} points)",
                fontsize=7,
                transform=ax.transAxes,
            )
        ax.set(
            xlabel=f"PC 1 ({100 * ex[0]:.1f}% of the path's variance)",
            ylabel=f"PC 2 ({100 * ex[1]:.1f}%)",
            title=f"training path, {titles[s]}",
        )
        _colorbar(fig, cs, ax, zl, "training loss" if s == "none" else None)
    return fig


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    titles = {s: f"shortcut {s}" if s != "none" else "no shortcuts" for s in SHORTCUTS}
    levels = _levels([arrays[f"{s}/loss_YxX"] for s in SHORTCUTS])
    capped = f" (clipped at {PLOT_CAP:g})" if levels[-1] == PLOT_CAP else ""
    figures = {
        "contours": _contours_figure,
        "surface3d": _surface3d_figure,
        "slices": _slices_figure,
        "pca_path": _pca_path_figure,
        "spectrum": _spectrum_figure,
    }
    if "none/zoom_loss_YxX" in arrays:
        figures["zoom_none"] = _zoom_figure
    with plt.style.context(plotting.STYLE):
        return {
            name: draw(arrays, cfg, summary, titles, levels, capped)
            for name, draw in figures.items()
        }


def _fmt(v) -> str:
    return "undefined" if v is None else f"{v:.2g}"


def _finite(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return np.where(np.isfinite(v), v, np.nan)


@dataclasses.dataclass(frozen=True)
class Options(cli.DataOptions):
    networks: str | None = dataclasses.field(
        default=None,
        metadata={
            "help": "a train_resnet run folder (it must exist) whose trained networks are "
            "reused when they are the same runs, else trained here, said on stderr (default "
            "results/train_resnet, or -quick, trained here where absent; 'none': train here)",
            "metavar": "DIR",
        },
    )


def _prepare(cfg: Config, args) -> Config:
    """--data-dir with --data cifar10 only (`cli.check_data_dir`); a `--networks`
    folder given must exist (the default one need not: the networks are trained here)."""
    given = args.networks
    if given is not None and given != "none" and not Path(given).is_dir():
        raise ValueError(
            f"`--networks` {given!r} is not a folder: give a train_resnet run folder, or "
            "'none' to train the networks here"
        )
    return cli.check_data_dir(cfg, args)


def _compute(cfg: Config, out: Path, args) -> tuple[dict, dict]:
    networks = args.networks or results.RESULTS_ROOT / (
        "train_resnet-quick" if args.quick else "train_resnet"
    )
    networks = None if str(networks) == "none" else Path(networks)
    # Without --store, every surface resumes from its engine store in <out>/cells.
    with engine.stores_in(out / "cells" if args.store is None else None):
        return compute(
            cfg, out, data_dir=args.data_dir, progress=not args.no_progress, networks=networks
        )


def _report(cfg: Config, summary: dict) -> list[str]:
    lines = [
        f"ResNet-{cfg.depth} {s}: test accuracy {t['test_accuracy']:.4f}, lambda_max "
        f"{t['hessian']['lambda_max']:.4g}, |min/max| {_fmt(t['hessian']['abs_min_over_max'])}, "
        f"area below ln(K) {t['surface']['below_level']:.3f}, local minima "
        f"{t['surface']['local_minima']}"
        for s, t in ((s, summary[s]) for s in SHORTCUTS)
    ]
    holds = [k for k, v in summary["smoother_with_shortcuts"].items() if v["holds"]]
    return [*lines, f"smoother with shortcuts on {len(holds)}/5 counts: {', '.join(holds)}"]


main = cli.study_main(
    __name__,
    _compute,
    plot,
    options=Options,
    prepare=_prepare,
    quick_help="ResNet-8, 5 x 5 grid (under a minute)",
    paper_help="paper: Li et al.'s 51 x 51 plane (21 x 21 PCA plane, 41 points on the line)",
    folder=lambda cfg, args: NAME if cfg.depth == 56 or args.quick else f"{NAME}-resnet{cfg.depth}",
    report=_report,
)


if __name__ == "__main__":
    main()
