"""Loss-surface throughput: grid points x images per second, against the model's own inference
rate and against a per-point Python loop, all in this process.

Workload: ResNet-56 (shortcut A, batch norm, float32) on CIFAR-shaped synthetic images
(32x32x3, 10 classes), a 2-D filter-normalized plane of P points over N images, forward
passes in eval mode at batch B. Three ways, timed in turns (best of R):

- inference: the model's own jitted forward pass on one batch of B images, with the batch
  split over every device (the fastest the network itself runs here); images per second.
- surface: `sandbox.surface.plane` with its default chunks (about 32k images per device per
  compiled call, at least one point); point-images/s.
- loop: how the reference tool (Li et al.'s loss-landscape) works: for each point, set the
  weights (a jitted axpy), then run a jitted loss over the data batch by batch from Python,
  reading each batch's sums back; point-images/s.

The surface's target is 0.9x the inference rate: nothing but the forward passes costs time.
The surface and the loop must agree (relative 5e-5) before anything is timed. Work: 125 M
multiply-adds per 32x32 image forward, so a 51 x 51 surface over CIFAR-10's 50,000 training
images is 3.3e16 FLOP; the run prints what that would take at the measured rate.

Run: make bench   (python -m benchmarks.surface [--points P] [--images N] [--batch B])
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sandbox import devices, surface
from sandbox.models.resnet import ResNet

MACS_FORWARD = 125.0e6  # per 32x32x3 image (benchmarks/resnet.py)
FULL_POINTS = 51 * 51
FULL_IMAGES = 50_000
TARGET_RATIO = 0.9
TARGET_FULL_S = 300.0  # the bound for a 51 x 51 CIFAR-10 surface on an H100


def setup(depth: int, n_images: int, seed: int = 0):
    model = ResNet(depth=depth, shortcut="A")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_images, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, n_images).astype(np.int32)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.asarray(x[:1]))
    # Statistics and scales as after training, so eval mode normalizes with real values.
    variables = {
        "params": jax.tree.map(lambda a: a + 0.1 if a.ndim == 1 else a, variables["params"]),
        "batch_stats": jax.tree.map(lambda a: a + 0.5, variables["batch_stats"]),
    }
    k1, k2 = jax.random.split(jax.random.key(seed + 1))
    d1 = surface.filter_normalized_direction(k1, variables["params"])
    d2 = surface.filter_normalized_direction(k2, variables["params"])
    return model, variables, d1, d2, x, y


def make_inference(model, variables, x_batch) -> dict:
    """The model's forward pass on one batch: on one device, and split over all of them."""
    f = jax.jit(lambda v, xb: model.apply(v, xb, train=False))
    out = {"one device": (f, (variables, jnp.asarray(x_batch)))}
    if len(jax.devices()) > 1:
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        rep, bat = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
        g = jax.jit(lambda v, xb: model.apply(v, xb, train=False), in_shardings=(rep, bat))
        out["split"] = (g, jax.device_put((variables, x_batch), (rep, bat)))
    return out


def make_loop(model, batch: int):
    """Li et al.'s way: per point, set the weights, then a Python loop over jitted batches."""

    @jax.jit
    def set_weights(variables, d1, d2, a, b):
        params = jax.tree.map(lambda p, u, w: p + a * u + b * w, variables["params"], d1, d2)
        return {**variables, "params": params}

    @jax.jit
    def batch_sums(variables, xb, yb):
        logits = model.apply(variables, xb, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        return jnp.sum(loss), jnp.sum(jnp.argmax(logits, -1) == yb)

    def run(variables, d1, d2, coords, x, y):
        xd, yd = jnp.asarray(x), jnp.asarray(y)
        out = []
        for a, b in coords:
            v = set_weights(variables, d1, d2, jnp.float32(a), jnp.float32(b))
            s = 0.0
            for lo in range(0, len(x), batch):
                ls, _ = batch_sums(v, xd[lo : lo + batch], yd[lo : lo + batch])
                s += float(ls)
            out.append(s / len(x))
        return np.asarray(out)

    return run


def main(argv=None) -> dict:
    devices.use_all_cores()  # before the first computation starts JAX
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    on_cpu = jax.default_backend() == "cpu"
    p.add_argument("--points", type=int, default=4 if on_cpu else 16, help="grid points")
    p.add_argument("--images", type=int, default=512 if on_cpu else 10_000)
    p.add_argument("--batch", type=int, default=256 if on_cpu else 1000)
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--unroll", type=int, default=1, help="batches per loop iteration")
    args = p.parse_args(argv)
    if args.images % args.batch:
        raise SystemExit("error: --images must be a multiple of --batch")

    dev = jax.devices()[0]
    side = int(round(args.points**0.5))
    print(
        f"surface benchmark: ResNet-{args.depth}, {jax.device_count()} x {dev.device_kind} "
        f"({jax.default_backend()}), float32, 32x32x3, {side}x{side} points x {args.images} "
        f"images, batch {args.batch}, unroll {args.unroll}, matmul precision "
        f"{jax.config.jax_default_matmul_precision or 'default'}"
    )
    model, variables, d1, d2, x, y = setup(args.depth, args.images)
    x, y = jnp.asarray(x), jnp.asarray(y)  # on the device once, for all three ways
    xs = ys = np.linspace(-1.0, 1.0, side)
    coords = surface.plane_coords(xs, ys)
    n_work = len(coords) * args.images

    inference = make_inference(model, variables, x[: args.batch])
    loop = make_loop(model, args.batch)

    def run_surface():
        return surface.plane(
            model,
            variables,
            d1,
            d2,
            xs,
            ys,
            x,
            y,
            batch_size=args.batch,
            progress=False,
            unroll=args.unroll,
        ).loss.ravel()

    # Same numbers first (this also compiles everything).
    ref = loop(variables, d1, d2, coords, x, y)
    got = run_surface()
    err = float(np.max(np.abs(got - ref) / np.abs(ref)))
    # Float32 means over N losses, summed in another order: relative 5e-5 (9e-6 seen on GPUs).
    print(f"  same numbers: max relative |surface - loop| = {err:.1e} (tolerance 5e-5)")
    if not err <= 5e-5:
        raise SystemExit("error: the surface does not compute the loop's losses")
    for f, a in inference.values():
        jax.block_until_ready(f(*a))

    best = {**{f"inference, {k}": np.inf for k in inference}, "surface": np.inf, "loop": np.inf}
    calls = max(1, n_work // args.batch // 4)
    for _ in range(args.repeats):
        for k, (f, a) in inference.items():
            t = time.perf_counter()
            for _ in range(calls):
                out = f(*a)
            jax.block_until_ready(out)
            best[f"inference, {k}"] = min(
                best[f"inference, {k}"], (time.perf_counter() - t) / calls
            )
        t = time.perf_counter()
        run_surface()
        best["surface"] = min(best["surface"], time.perf_counter() - t)
        t = time.perf_counter()
        loop(variables, d1, d2, coords, x, y)
        best["loop"] = min(best["loop"], time.perf_counter() - t)

    rate = {k: args.batch / best[f"inference, {k}"] for k in inference}
    for k, r in rate.items():
        print(f"  inference, {k} (batch {args.batch}): {r:9.1f} images/s")
    rate["inference"] = max(rate.values())  # the model's own rate: its faster layout
    rate["surface"] = n_work / best["surface"]
    rate["loop"] = n_work / best["loop"]
    gmac = rate["surface"] * MACS_FORWARD / 1e9
    print(
        f"  surface:    {rate['surface']:9.1f} point-images/s ({gmac:.0f} GMAC/s)  "
        f"{rate['surface'] / rate['inference']:.2f}x inference (target {TARGET_RATIO}x)  "
        f"{rate['surface'] / rate['loop']:.2f}x the per-point loop"
    )
    print(f"  loop:       {rate['loop']:9.1f} point-images/s")
    full_s = FULL_POINTS * FULL_IMAGES / rate["surface"]
    print(
        f"  a 51 x 51 surface over 50,000 images at this rate: {full_s:,.0f} s on "
        f"{dev.device_kind} (issue's bound for an H100: {TARGET_FULL_S:.0f} s)"
    )
    return {"rate": rate, "max_rel_err": err, "full_51x51_s": full_s}


if __name__ == "__main__":
    main()
