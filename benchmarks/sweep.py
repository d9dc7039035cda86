"""Throughput of sweep.descend against a NumPy baseline, both in this process.

Workload (fixed by the core engine issue): Himmelblau in float32, N = 10^6 (start, lr)
pairs x 1000 steps, starts uniform in [-6, 6]^2, lr log-uniform in [1e-4, 5e-2]; plain GD,
then Adam. Prints pair-steps per second of the default (divergence-safe) sweep, of the same
loop without any check (the unchecked ceiling: the same chunks, devices and fused updates,
no bound, no re-run of diverged runs) and of the NumPy baseline, with their ratios, and Adam's
rate as a share of GD's. The three take turns, best of `--repeats` each, so a machine that
other jobs load slows them alike.

Work per pair-step: the Himmelblau gradient is ~14 flops (a = x^2 + y - 11,
b = x + y^2 - 7, g = (4xa + 2b, 2a + 4yb)), GD adds 2 multiply-adds, Adam ~20 more flops
and a square root and a division per coordinate.

Run: make bench   (python -m benchmarks.sweep [--n N] [--steps T] [--repeats R])
"""

import argparse
import functools
import time

import numpy as np

from sandbox import descent, devices, engine, landscapes, optim, sweep

NUMPY_CHUNK = 16384  # pairs per block: measured best of 1024..65536 (state stays in L2)


def _workload(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-6, 6, (n, 2)).astype(np.float32)
    lr = np.exp(rng.uniform(np.log(1e-4), np.log(5e-2), n)).astype(np.float32)
    return x0, lr


def _blocks(x0: np.ndarray, lr: np.ndarray):
    for lo in range(0, len(x0), NUMPY_CHUNK):
        sl = slice(lo, lo + NUMPY_CHUNK)
        yield sl, np.ascontiguousarray(x0[sl, 0]), np.ascontiguousarray(x0[sl, 1]), lr[sl]


def numpy_gd(x0: np.ndarray, lr: np.ndarray, steps: int) -> np.ndarray:
    """Plain GD on Himmelblau: in-place ufuncs over one cache-sized block at a time."""
    out = np.empty_like(x0)
    mul, add, sub = np.multiply, np.add, np.subtract
    for sl, x, y, lr_b in _blocks(x0, lr):
        lr2 = 2 * lr_b
        a, b, t, u = (np.empty_like(x) for _ in range(4))
        for _ in range(steps):
            mul(x, x, out=a)
            add(a, y, out=a)
            sub(a, 11, out=a)  # a = x^2 + y - 11
            mul(y, y, out=b)
            add(b, x, out=b)
            sub(b, 7, out=b)  # b = x + y^2 - 7
            mul(x, a, out=t)
            add(t, t, out=t)
            add(t, b, out=t)  # t = gx / 2 = 2xa + b
            mul(y, b, out=u)
            add(u, u, out=u)
            add(u, a, out=u)  # u = gy / 2 = 2yb + a
            mul(t, lr2, out=t)
            sub(x, t, out=x)
            mul(u, lr2, out=u)
            sub(y, u, out=y)
        out[sl, 0], out[sl, 1] = x, y
    return out


def numpy_adam(x0, lr, steps, b1=0.9, b2=0.999, eps=1e-8):
    """Adam with Optax's bias correction, in-place ufuncs, block by block."""
    out = np.empty_like(x0)
    mul, add, sub, div = np.multiply, np.add, np.subtract, np.divide
    for sl, x, y, lr_b in _blocks(x0, lr):
        a, b, g, h = (np.empty_like(x) for _ in range(4))
        m = [np.zeros_like(x), np.zeros_like(x)]
        v = [np.zeros_like(x), np.zeros_like(x)]
        for t in range(1, steps + 1):
            c1, c2 = 1 / (1 - b1**t), 1 / (1 - b2**t)
            mul(x, x, out=a)
            add(a, y, out=a)
            sub(a, 11, out=a)
            mul(y, y, out=b)
            add(b, x, out=b)
            sub(b, 7, out=b)
            for i, p in enumerate((x, y)):
                if i == 0:  # gx = 4xa + 2b
                    mul(x, a, out=g)
                    mul(g, 4, out=g)
                    add(g, b, out=g)
                    add(g, b, out=g)
                else:  # gy = 2a + 4yb
                    mul(y, b, out=g)
                    mul(g, 4, out=g)
                    add(g, a, out=g)
                    add(g, a, out=g)
                mul(m[i], b1, out=m[i])
                mul(g, 1 - b1, out=h)
                add(m[i], h, out=m[i])
                mul(g, g, out=g)
                mul(v[i], b2, out=v[i])
                mul(g, 1 - b2, out=g)
                add(v[i], g, out=v[i])
                mul(v[i], c2, out=h)
                np.sqrt(h, out=h)
                add(h, eps, out=h)
                div(m[i], h, out=h)
                mul(h, c1 * lr_b, out=h)
                sub(p, h, out=p)
        out[sl, 0], out[sl, 1] = x, y
    return out


@functools.lru_cache(maxsize=8)
def _unchecked_one(fn, optimizer: str, steps: int):
    def one(item, shared):
        hyper = {"lr": item["lr"], **shared}
        r = descent.run_fast(fn, item["x0"], hyper, optimizer=optimizer, steps=steps, bound=np.inf)
        return r.x

    return one


def unchecked(fn, x0: np.ndarray, lr: np.ndarray, optimizer: str, steps: int) -> np.ndarray:
    """The default's loop without checks: the same layout and fused, packed updates as
    `sweep.descend`, bound +inf (the one comparison at the end keeps every value), no
    re-run of diverged runs (they end as NaN or inf)."""
    shared = {
        k: np.asarray(v, np.float32)
        for k, v in optim.resolve(optimizer, {"lr": 1.0}).items()
        if k != "lr"
    }
    chunk, inner = sweep._layout(len(x0), x0.shape[1], 0, None)
    return engine.map_chunks(
        _unchecked_one(fn, optimizer, steps),
        {"x0": x0, "lr": lr},
        shared,
        chunk=chunk,
        lane=sweep.LANE_BLOCK,
        batch=inner,
        store=False,
        progress=False,
    )


def _best_times(fs: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time of each function over `repeats` rounds in which they take turns."""
    best = dict.fromkeys(fs, float("inf"))
    results = {}
    for _ in range(repeats):
        for k, f in fs.items():
            t = time.perf_counter()
            results[k] = f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best, results


def main(argv=None) -> None:
    devices.use_all_cores()  # before the first computation starts JAX
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="pairs for sweep.descend")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--numpy-n", type=int, default=131_072, help="pairs for the NumPy baseline")
    args = p.parse_args(argv)
    np.seterr(over="ignore", invalid="ignore")  # the baseline runs diverging pairs too

    import jax

    fn = landscapes.get("himmelblau").fn
    x0, lr = _workload(args.n)
    nb = min(args.numpy_n, args.n)
    # Runs below 2 / lambda_max at the sharpest minimum settle, so both implementations end
    # at the same point up to rounding; above it chaotic runs amplify one-ulp differences.
    stable = lr[:nb] < 0.0149
    print(
        f"sweep benchmark: {jax.device_count()} x {jax.devices()[0].device_kind}, "
        f"Himmelblau float32, N = {args.n} pairs x {args.steps} steps"
    )
    rates = {}
    for opt, baseline in (("sgd", numpy_gd), ("adam", numpy_adam)):
        fs = {
            "default": lambda opt=opt: sweep.descend(
                fn, x0, optimizer=opt, steps=args.steps, lr=lr, progress=False
            ),
            "unchecked": lambda opt=opt: unchecked(fn, x0, lr, opt, args.steps),
            "numpy": lambda b=baseline: b(x0[:nb], lr[:nb], args.steps),
        }
        fs["default"]()  # compile
        fs["unchecked"]()
        t, res = _best_times(fs, args.repeats)
        rate = {k: (nb if k == "numpy" else args.n) * args.steps / v for k, v in t.items()}
        rates[opt] = rate["default"]
        err = float(np.max(np.abs(res["default"].x[:nb][stable] - res["numpy"][stable])))
        # Runs the default did not flag and the unchecked loop ended finite: the same updates.
        kept = ~res["default"].diverged & np.all(np.isfinite(res["unchecked"]), axis=1)
        same = np.array_equal(res["default"].x[kept], res["unchecked"][kept])
        print(
            f"  {opt:5s} sweep.descend {rate['default']:.2e} pair-steps/s ({t['default']:.2f} s)  "
            f"unchecked {rate['unchecked']:.2e} ({t['unchecked']:.2f} s)  "
            f"numpy {rate['numpy']:.2e} ({nb} pairs, {t['numpy']:.2f} s)\n"
            f"        default / unchecked {rate['default'] / rate['unchecked']:.2f}  "
            f"default / numpy {rate['default'] / rate['numpy']:.1f}x  "
            f"(max |x - x_numpy| over settled runs {err:.1e}; diverged "
            f"{res['default'].diverged.mean():.3f}; finite runs equal to the unchecked ones bit "
            f"for bit: {same})",
            flush=True,
        )
    print(f"  adam / sgd {rates['adam'] / rates['sgd']:.2f}")


if __name__ == "__main__":
    main()
