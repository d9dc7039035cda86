"""Cost of tracking the sharpness during training, against training alone and a host loop.

Workload: the edge_of_stability study's problem (fc-tanh 64-200-200-10, square loss, the
1438 digits training images, full batch, float32), GD for T steps with a 20-step Lanczos
check every k steps. Three ways, timed in turns (best of R, compiled before timing):

- train: T GD steps as one jitted `lax.scan`, no checks (the floor).
- tracked: `sharpness.track`, the checks inside the same compiled loop.
- host: how the reference code (Cohen et al.) works: a jitted block of k steps, and after
  each block a separate jitted Lanczos run called from Python on the parameters it returned.

The tracked and host runs must agree on the sharpness (relative 1e-4) before anything is
timed. A check costs num_iters Hessian-vector products, each about two to three gradient
evaluations, so with k = 20 and 20 Lanczos steps tracking costs roughly 2-3x the training
alone; the run prints the measured cost of one check in training steps.

Run: make bench   (python -m benchmarks.sharpness [--steps T] [--every k] [--repeats R])
"""

import argparse
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax import lax

from sandbox import devices, sharpness
from studies import edge_of_stability as eos


def _time(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)
    steps, every, iters, lr = args.steps, args.every, sharpness.DEFAULT_ITERS, args.lr

    loss_aux, params, n = eos.problem(eos.Config())

    def loss(p):
        return loss_aux(p)[0]

    grad = jax.grad(loss)

    def gd(p, _):
        return jax.tree.map(lambda a, g: a - lr * g, p, grad(p)), None

    train = jax.jit(lambda p: lax.scan(gd, p, None, length=steps)[0])
    block = jax.jit(lambda p: lax.scan(gd, p, None, length=every)[0])
    flat = jax.flatten_util.ravel_pytree(params)[0]

    @jax.jit
    def top(p, key):  # the start vector `track` draws for the same check
        v0 = jax.random.normal(key, flat.shape, flat.dtype)
        return sharpness._top(loss, p, None, v0, 1, iters)

    key = jax.random.key(1)

    def tracked():
        return sharpness.track(loss, params, lr, steps=steps, every=every, key=key).sharpness

    def host():
        p, out = params, [top(params, jax.random.fold_in(key, 0))]
        for j in range(1, steps // every + 1):
            p = block(p)
            out.append(top(p, jax.random.fold_in(key, j)))
        return jnp.stack(out)

    np.testing.assert_allclose(tracked(), host(), rtol=1e-4)
    jax.block_until_ready(train(params))
    times = {"train": [], "tracked": [], "host": []}
    for _ in range(args.repeats):  # in turns, so that load on the machine hits all three
        times["train"].append(_time(lambda: train(params)))
        times["tracked"].append(_time(tracked))
        times["host"].append(_time(host))
    t = {k: min(v) for k, v in times.items()}
    checks = steps // every + 1
    step_s = t["train"] / steps
    check_s = (t["tracked"] - t["train"]) / checks
    print(
        f"sharpness tracking, {jax.devices()[0].platform} x{jax.device_count()}, "
        f"fc 64-200-200-10 on {n} digits, T = {steps}, check every {every} ({iters} Lanczos)"
    )
    print(f"  train alone   {t['train']:7.3f} s  ({step_s * 1e3:.2f} ms per step)")
    print(
        f"  tracked       {t['tracked']:7.3f} s  {t['tracked'] / t['train']:.2f}x train; "
        f"one check = {check_s / step_s:.1f} training steps"
    )
    print(
        f"  host loop     {t['host']:7.3f} s  {t['host'] / t['train']:.2f}x train; "
        f"tracked is {t['host'] / t['tracked']:.2f}x faster"
    )


if __name__ == "__main__":
    devices.use_all_cores()
    main()
