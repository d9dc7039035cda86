"""Sweeps as jobs: one job against two jobs on the same store, and what claiming costs.

Workload: examples/sweep.toml's kind of sweep, Himmelblau GD from a 128 x 128 grid of starts
x 8 learning rates in [1e-3, 1e-2] (131,072 runs, 120,000 steps, chunks of 8192: 16 chunks
of about 2 s on one core: start-up, about 3 s a job, is a small part).
Each job is `python -m sandbox.sweep run SPEC --store DIR` in a process of its own with one
CPU device (XLA_FLAGS), timed from launch to exit (start-up and compilation included, as a
user sees it); the store starts empty each time; the three take turns, best of `--repeats`.
Printed, in the same run:

- one job alone (1 device), two jobs at once (1 device each), and one job with 2 devices;
  throughput (runs/s) of the two jobs against each single job, as ratios (target: two jobs
  >= 0.9x one job; on 2 cores they should approach 2x the one-device job);
- the arrays of all three are checked bitwise equal (else the benchmark fails);
- the claim/lease overhead per chunk, in this process: (a) the protocol alone, a claim pass
  (list the done markers and the leases, look at every lease, take one) and its release,
  on a store of 64 chunks with 8 leases of live jobs in it; (b) end to end, `map_chunks` of a
  function that costs nothing, with a store (write, read back, checksums, marker, claims)
  against without, per chunk.

Run: make bench   (python -m benchmarks.sweep_jobs [--steps T] [--repeats R])
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]

SPEC = """
landscape = "himmelblau"
optimizer = "sgd"
steps = {steps}
tol = 1e-3
chunk = 8192
[starts]
grid = 128
[axes]
lr = {{ logspace = [-3.0, -2.0], num = 8 }}
"""


def _jobs(spec: Path, store: Path, count: int, devices: int) -> float:
    """Seconds from launching `count` jobs (each with `devices` CPU devices) to the last exit."""
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "sandbox.sweep", "run", str(spec), "--store", str(store)]
    t = time.perf_counter()
    procs = [
        subprocess.Popen([*cmd, "--no-progress"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        for _ in range(count)
    ]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("a job failed")
    return time.perf_counter() - t


def _steady(store: Path, runs: int, jobs: int) -> float:
    """Runs per second once every job has finished its first chunk: the chunks done after the
    jobs-th one, over the time from it to the last (16 chunks)."""
    times = sorted((store / "runs" / "done" / str(c)).stat().st_mtime for c in range(16))
    return (16 - jobs) / 16 * runs / (times[-1] - times[jobs - 1])


def _protocol_ms(tmp: Path, repeats: int) -> float:
    """(a): a claim pass and a release, per chunk, on a store of 64 chunks."""
    import jax.numpy as jnp

    from sandbox import engine

    def one(item, shared):
        return jnp.zeros(()) + item

    items = np.arange(64 * 64, dtype=np.float32)
    store = tmp / "protocol"
    engine.map_chunks(one, items, None, chunk=64, store=store, progress=False)
    st = engine._Store(store, engine._read_meta(store), engine._out_spec(one, items, None))
    for c in range(0, 64, 2):  # half the chunks not done
        os.unlink(store / "done" / str(c))
    for c in range(0, 16, 2):  # 8 of them leased by live jobs of another host
        info = {"owner": "far:1:x", "host": "far", "pid": 1, "lease_s": 60.0}
        (store / "leases" / f"{c}.0").write_text(json.dumps(info))
    best = float("inf")
    with engine._Claims(st, 60.0) as claims:
        for _ in range(repeats):
            t = time.perf_counter()
            n = 0
            for _ in range(50):
                done, current = st.done(), claims.current()
                stale = claims.stale(current, done)
                free = [c for c in range(64) if c not in current and c not in done]
                assert claims.claim(free[0], current, stale)
                claims.release(free[0])
                n += 1
            best = min(best, (time.perf_counter() - t) / n)
    return best * 1e3


def _end_to_end_ms(tmp: Path, repeats: int) -> tuple[float, float]:
    """(b): map_chunks of a free function with a store against without, per chunk (ms)."""
    import jax.numpy as jnp

    from sandbox import engine

    def one(item, shared):
        return {"x": item * 2, "y": jnp.stack([item, item])}

    chunks, chunk = 32, 1024
    items = np.arange(chunks * chunk, dtype=np.float32)
    engine.map_chunks(one, items, None, chunk=chunk, store=False, progress=False)  # compile
    plain = stored = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        engine.map_chunks(one, items, None, chunk=chunk, store=False, progress=False)
        plain = min(plain, time.perf_counter() - t)
        t = time.perf_counter()
        engine.map_chunks(one, items, None, chunk=chunk, store=tmp / f"e2e{r}", progress=False)
        stored = min(stored, time.perf_counter() - t)
    return plain / chunks * 1e3, stored / chunks * 1e3


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=120_000)
    p.add_argument("--repeats", type=int, default=2, help="best of")
    args = p.parse_args(argv)
    from sandbox import devices

    devices.use_all_cores()
    from sandbox import sweep

    with tempfile.TemporaryDirectory(prefix="bench-sweep-jobs-") as tmp:
        tmp = Path(tmp)
        spec = tmp / "spec.toml"
        spec.write_text(SPEC.format(steps=args.steps))
        runs = 128 * 128 * 8
        load = os.getloadavg()[0]
        # The three take turns, best of `--repeats` each (a fresh store every time), so a
        # machine that other work loads slows them alike.
        best = {"one": float("inf"), "two": float("inf"), "wide": float("inf")}
        steady = {"one": 0.0, "two": 0.0, "wide": 0.0}
        for r in range(args.repeats):
            for name, count, devs in (("one", 1, 1), ("two", 2, 1), ("wide", 1, 2)):
                best[name] = min(best[name], _jobs(spec, tmp / f"{name}{r}", count, devs))
                steady[name] = max(steady[name], _steady(tmp / f"{name}{r}", runs, count))
        one, two, wide = best["one"], best["two"], best["wide"]
        ref = sweep.load(tmp / "one0")
        a = sweep.load(tmp / "two0")
        for f in ("x", "loss", "steps_to_tol", "diverged"):
            if not np.array_equal(getattr(ref, f), getattr(a, f)):
                raise SystemExit(f"two jobs differ from one in {f}")
        # (one job on 2 devices is another layout: compared, not required equal)
        b = sweep.load(tmp / "wide0")
        same_wide = all(np.array_equal(getattr(ref, f), getattr(b, f)) for f in ("x", "loss"))
        print(
            f"sweep jobs: {runs} runs x {args.steps} steps, 16 chunks, best of {args.repeats}, "
            f"{os.cpu_count()} cores (load average {load:.1f} at the start)"
        )
        print("  launch to exit (start-up and compilation included):")
        print(f"  1 job,  1 device : {one:6.1f} s  {runs / one:9.0f} runs/s")
        print(f"  2 jobs, 1 device : {two:6.1f} s  {runs / two:9.0f} runs/s")
        print(f"  1 job,  2 devices: {wide:6.1f} s  {runs / wide:9.0f} runs/s")
        print(f"  2 jobs / 1 job (1 device): {one / two:.2f}x (target >= 0.9x)")
        print(f"  2 jobs / 1 job (2 devices): {wide / two:.2f}x")
        print(
            "  once started (runs/s from each job's first chunk done to the last chunk done, "
            "without start-up and compilation):"
        )
        for name, label in (
            ("one", "1 job,  1 device "),
            ("two", "2 jobs, 1 device "),
            ("wide", "1 job,  2 devices"),
        ):
            print(f"  {label}: {steady[name]:9.0f} runs/s")
        print(f"  2 jobs / 1 job (1 device): {steady['two'] / steady['one']:.2f}x (target >= 0.9x)")
        print(f"  2 jobs / 1 job (2 devices): {steady['two'] / steady['wide']:.2f}x")
        print(f"  arrays: 2 jobs bitwise equal to 1 job; 1 job on 2 devices equal too: {same_wide}")
        ms = _protocol_ms(tmp, args.repeats)
        plain, stored = _end_to_end_ms(tmp, args.repeats)
        print(f"  claim pass + release per chunk (64 chunks, 8 live leases): {ms:.2f} ms")
        print(
            f"  map_chunks per chunk of 1024 free items: {stored:.2f} ms with a store, "
            f"{plain:.2f} ms without: store and claims cost {stored - plain:.2f} ms per chunk"
        )


if __name__ == "__main__":
    main()
