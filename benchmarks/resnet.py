"""ResNet-56 images per second: the sandbox model against plain Flax, both in this process.

Workload (fixed by the ResNet issue): CIFAR shapes 32x32x3 in float32, 10 classes; a training
step (forward, backward, batch-norm statistics, SGD with Nesterov momentum and weight decay)
on batches of 128, and inference (running batch-norm averages) on batches of 256. The
baseline is the same network written the textbook way, with `flax.linen.Conv` and nothing
else (`ResNet(impl="plain")`), on one device. The sandbox version is `ResNet(impl="fast")`
with its batch split over every device (on CPU, sandbox asks XLA for one device per core).
Both start from the same variables and inputs; the benchmark checks that they compute the
same numbers within float32 tolerance before it times anything.

Work per image: 125 M multiply-adds forward (3x3 convolutions: 19 at 32x32x16, 18 at
16x16x32, 18 at 8x8x64, each about 2.36 M); a training step is about three times that.

Run: make bench   (python -m benchmarks.resnet [--repeats R] [--epoch])
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sandbox import devices, train
from sandbox.models.resnet import ResNet

TRAIN_BATCH = 128
INFER_BATCH = 256
MACS_FORWARD = 125.0e6  # per 32x32x3 image, see the docstring
# PyTorch on the reference machine (2 cores, like CI): images per second.
TORCH_TRAIN = 355.0
TORCH_INFER = 846.0


def make_step(model, tx):
    """One training step on a given batch: (variables, opt_state, x, y) -> same + loss."""

    def step(variables, opt_state, x, y):
        def loss_fn(params):
            logits, upd = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return {"params": params, "batch_stats": stats}, opt_state, loss

    return step


def compile_variants(model_kw: dict, shard: dict[str, bool]):
    """Compiled train steps and inference functions of the plain and fast models."""
    cfg = train.TrainConfig()
    tx = train.make_optimizer(cfg, steps_per_epoch=390)
    rng = np.random.default_rng(0)
    x_train = jnp.asarray(rng.standard_normal((TRAIN_BATCH, 32, 32, 3), dtype=np.float32))
    y_train = jnp.asarray(rng.integers(0, 10, TRAIN_BATCH, dtype=np.int32))
    x_infer = jnp.asarray(rng.standard_normal((INFER_BATCH, 32, 32, 3), dtype=np.float32))
    plain = ResNet(impl="plain", **model_kw)
    variables = jax.jit(plain.init)(jax.random.key(0), x_train[:1])
    # Running statistics as after some training, so inference normalizes with real values.
    variables["batch_stats"] = jax.tree.map(
        lambda a: a + 0.5 if a.ndim else a, variables["batch_stats"]
    )
    opt_state = tx.init(variables["params"])
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rep, bat = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))

    out = {}
    for name, impl in (("plain", "plain"), ("fast", "fast")):
        model = ResNet(impl=impl, **model_kw)
        sharded = shard[name] and len(jax.devices()) > 1
        step = make_step(model, tx)

        def infer(v, x, model=model):
            return model.apply(v, x)

        if sharded:
            args = jax.device_put((variables, opt_state, x_train, y_train), (rep, rep, bat, bat))
            f = jax.jit(step, in_shardings=(rep, rep, bat, bat), out_shardings=rep)
            iargs = jax.device_put((variables, x_infer), (rep, bat))
            g = jax.jit(infer, in_shardings=(rep, bat), out_shardings=rep)
        else:
            args = (variables, opt_state, x_train, y_train)
            f = jax.jit(step)
            iargs = (variables, x_infer)
            g = jax.jit(infer)
        out[name] = {
            "train": (f.lower(*args).compile(), args),
            "infer": (g.lower(*iargs).compile(), iargs),
            "devices": len(jax.devices()) if sharded else 1,
        }
    return out


def check_same_numbers(variants) -> dict[str, float]:
    """The fast model computes what the plain one does, within float32 rounding."""
    res = {}
    for kind in ("train", "infer"):
        outs = {n: jax.device_get(v[kind][0](*v[kind][1])) for n, v in variants.items()}
        a, b = outs["plain"], outs["fast"]
        worst = 0.0
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            scale = max(np.max(np.abs(x)), 1e-30)
            worst = max(worst, float(np.max(np.abs(x - y)) / scale))
        res[kind] = worst
    return res


def race(variants, kind: str, repeats: int) -> dict[str, float]:
    """Best seconds per call of each variant, the variants taking turns (shared noise)."""
    best = {n: float("inf") for n in variants}
    for v in variants.values():  # warm up
        fn, args = v[kind]
        jax.block_until_ready(fn(*args))
    for _ in range(repeats):
        for n, v in variants.items():
            fn, args = v[kind]
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[n] = min(best[n], time.perf_counter() - t)
    return best


def main(argv=None) -> dict:
    devices.use_all_cores()  # before the first computation starts JAX
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
    p.add_argument("--epoch", action="store_true", help="also time a 50,000-image epoch")
    p.add_argument("--depth", type=int, default=56)
    args = p.parse_args(argv)

    dev = jax.devices()[0]
    print(
        f"resnet benchmark: ResNet-{args.depth}, {jax.device_count()} x {dev.device_kind} "
        f"({jax.default_backend()}), float32, 32x32x3"
    )
    variants = compile_variants({"depth": args.depth}, {"plain": False, "fast": True})
    err = check_same_numbers(variants)
    tol = 1e-4
    print(
        f"  same numbers: max |fast - plain| / max |plain| = {err['train']:.1e} (train step), "
        f"{err['infer']:.1e} (logits); tolerance {tol:g}"
    )
    if max(err.values()) > tol:
        raise SystemExit("error: the fast model does not compute the plain model's numbers")
    summary = {"max_rel_err": err}
    for kind, batch, torch in (
        ("train", TRAIN_BATCH, TORCH_TRAIN),
        ("infer", INFER_BATCH, TORCH_INFER),
    ):
        best = race(variants, kind, args.repeats)
        rate = {n: batch / t for n, t in best.items()}
        macs = MACS_FORWARD * (3 if kind == "train" else 1)
        print(
            f"  {'training step' if kind == 'train' else 'inference':13s} (batch {batch}): "
            f"fast {rate['fast']:7.1f} images/s ({variants['fast']['devices']} device(s), "
            f"{rate['fast'] * macs / 1e9:.0f} GMAC/s)  plain flax {rate['plain']:7.1f}  "
            f"ratio {rate['fast'] / rate['plain']:.2f}x  "
            f"(PyTorch on the issue's machine: {torch:.0f}; fast/torch {rate['fast'] / torch:.2f})",
            flush=True,
        )
        summary[kind] = {"fast": rate["fast"], "plain": rate["plain"]}
    if args.epoch:
        fn, a = variants["fast"]["train"]
        steps = 50_000 // TRAIN_BATCH
        t = time.perf_counter()
        v, o = a[0], a[1]
        for _ in range(steps):
            v, o, loss = fn(v, o, a[2], a[3])
        jax.block_until_ready(loss)
        secs = time.perf_counter() - t
        print(
            f"  epoch of 50,000 images ({steps} steps of {TRAIN_BATCH}): {secs:.1f} s "
            f"on {dev.device_kind}"
        )
        summary["epoch_s"] = secs
    return summary


if __name__ == "__main__":
    main()
