"""Cost of a central-flow step against a discrete optimizer step, measured in the same run.

Workload: the central_flows study's problem at a few hundred parameters (fc-tanh 64-6-10,
460 parameters, square loss on the first 256 digits training images, full batch, float32),
GD at lr = 2.2 / lambda_max(H(w0)), so that the top effective eigenvalue starts above 2 and
the central flow solves its cone problem on every step. Timed, each compiled first and
then the best of R runs of T steps (seconds per step):

- gd: T plain GD steps (`optax.sgd` in one `lax.scan`), the baseline "discrete step";
- discrete: `flows.run(flow="discrete")`: GD plus its effective eigenvalues every step;
- stable, central: `flows.run` with that flow.

The four are timed in turns, R rounds, the best of each kept (the machine is shared).

Printed for k = 1 and 3 tracked eigenvalues: seconds per step, each against the gd step
(the ratio), and the Hessian-vector plus third-derivative products (matvecs) and gradients
per step from the traces. The target: a central-flow step at most 20 gd steps on CPU; the
paper's public code spends about 0.1 s per step on its host-side cone solver alone on a
433-parameter MLP. Measured numbers: docs/performance.md.

Run: make bench   (python -m benchmarks.flows [--steps T] [--repeats R] [--num-eigs 1,3])
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sandbox import devices, flows, hessian
from studies import central_flows as cf


def _interleaved(runs: dict, repeats: int) -> dict:
    """Best of `repeats` seconds per run, the runs timed in turns (a shared machine's load
    then weighs on all of them alike); each compiled first."""
    for fn in runs.values():
        jax.block_until_ready(fn())
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _best(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--num-eigs", default="1,3", help="k values, comma-separated")
    p.add_argument("--hidden", type=int, default=6)
    args = p.parse_args(argv)
    num_eigs = [int(k) for k in args.num_eigs.split(",")]
    devices.use_all_cores()
    cfg = cf.Config(hidden=(args.hidden,), train_size=256)
    loss, params = cf.problem(cfg)
    n = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    lam = float(hessian.top_eigenvalues(loss, params, 1, key=jax.random.key(0))[0])
    lr = 2.2 / lam
    T = args.steps
    tx = optax.sgd(lr)

    @jax.jit
    def gd(w):
        def step(carry, _):
            w, state = carry
            updates, state = tx.update(jax.grad(loss)(w), state, w)
            return (optax.apply_updates(w, updates), state), None

        return lax.scan(step, (w, tx.init(w)), None, length=T)[0][0]

    print(
        f"flows benchmark: fc-tanh 64-{args.hidden}-10, {n} parameters, 256 images, "
        f"lr = 2.2 / {lam:.4g}, {T} steps, best of {args.repeats}"
    )
    for k in num_eigs:
        runs = {"gd": lambda: gd(params)}
        for flow in flows.FLOWS:
            runs[flow] = functools.partial(
                flows.run, loss, params, flow=flow, lr=lr, steps=T, num_eigs=k
            )
        per_step = _interleaved(runs, args.repeats)
        base = per_step["gd"] / T
        print(f"  k = {k}: gd (optax.sgd) {base * 1e3:8.3f} ms/step   1.0 x")
        for flow in flows.FLOWS:
            trace = jax.device_get(runs[flow]())
            step = per_step[flow] / T
            print(
                f"  k = {k}: {flow:<14} {step * 1e3:8.3f} ms/step {step / base:6.1f} x   "
                f"matvecs/step {np.mean(trace.matvecs[1:]):5.1f}   grads/step "
                f"{np.mean(trace.grads):5.1f}   substeps {np.mean(trace.substeps):4.1f}   "
                f"onset step {flows.onset(trace.eigs)}"
            )
    # the cone problem alone, k x k from the central flow's sizes, warm and cold
    rng = np.random.default_rng(0)
    k = max(num_eigs)
    G = rng.normal(size=(k * (k + 1), k, k))
    G = 0.5 * (G + G.transpose(0, 2, 1))
    B = jnp.asarray(np.einsum("lij,lab->ijab", G, G) / len(G), jnp.float32)
    A = jnp.asarray(np.diag(np.linspace(-1, 1, k)), jnp.float32)
    solve = jax.jit(flows.complementarity)
    cone = _best(lambda: solve(A, B), 20)
    print(
        f"  cone problem alone (k = {k}, cold start): {cone * 1e3:.3f} ms "
        f"({cone / base:.1f} gd steps)"
    )


if __name__ == "__main__":
    main()
