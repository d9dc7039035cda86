"""Cost of a central-flow step against a discrete optimizer step, measured in the same run.

Workload: the central_flows study's problem at a few hundred parameters (fc-tanh 64-6-10,
460 parameters, square loss on the first 256 digits training images, full batch, float32),
GD at lr = 2.2 / lambda_max(H(w0)), so that the top effective eigenvalue starts above 2 and
the central flow solves its cone problem on every step. Timed, each compiled first and
then the best of R runs of T steps (seconds per step):

- gd: T plain GD steps (`optax.sgd` in one `lax.scan`), the baseline "discrete step";
- discrete: `flows.run(flow="discrete")`: GD plus its effective eigenvalues every step;
- stable, central: `flows.run` with that flow.

Printed: seconds per step, each against the gd step (the ratio), and the Hessian-vector plus
third-derivative products (matvecs) and gradients per step from the traces. The issue's
target: a central-flow step at most 20 gd steps on CPU; the paper's public code spends about
0.1 s per step on its host-side cone solver alone on a 433-parameter MLP.

Run: make bench   (python -m benchmarks.flows [--steps T] [--repeats R] [--num-eigs k])
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sandbox import devices, flows, hessian
from studies import central_flows as cf


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
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-eigs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=6)
    args = p.parse_args(argv)
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
        f"lr = 2.2 / {lam:.4g}, {T} steps, k = {args.num_eigs}, best of {args.repeats}"
    )
    base = _best(lambda: gd(params), args.repeats) / T
    print(f"  gd (optax.sgd)   {base * 1e3:8.3f} ms/step   1.0 x")
    for flow in flows.FLOWS:

        def go(flow=flow):
            return flows.run(loss, params, flow=flow, lr=lr, steps=T, num_eigs=args.num_eigs)

        per_step = _best(go, args.repeats) / T
        trace = jax.device_get(go())
        onset = flows.onset(trace.eigs)
        print(
            f"  {flow:<16} {per_step * 1e3:8.3f} ms/step {per_step / base:6.1f} x   "
            f"matvecs/step {np.mean(trace.matvecs[1:]):5.1f}   grads/step "
            f"{np.mean(trace.grads):5.1f}   substeps {np.mean(trace.substeps):4.1f}   "
            f"onset step {onset}"
        )
    # the cone problem alone, k x k from the central flow's sizes, warm and cold
    rng = np.random.default_rng(0)
    k = args.num_eigs
    G = rng.normal(size=(k * (k + 1), k, k))
    G = 0.5 * (G + G.transpose(0, 2, 1))
    B = jnp.asarray(np.einsum("lij,lab->ijab", G, G) / len(G), jnp.float32)
    A = jnp.asarray(np.diag(np.linspace(-1, 1, k)), jnp.float32)
    solve = jax.jit(flows.complementarity)
    cone = _best(lambda: solve(A, B), 20)
    print(f"  cone problem alone (k = {k}, cold start): {cone * 1e3:.3f} ms "
          f"({cone / base:.1f} gd steps)")  # fmt: skip


if __name__ == "__main__":
    main()
