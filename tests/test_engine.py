"""The engine: one compilation per configuration, results independent of chunks, devices and
processes, chunk stores that resume after a kill, refuse another computation and are shared
by several processes (tests/test_store.py: damaged stores; tests/test_sweep_jobs.py: jobs)."""

import functools
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_devices

from sandbox import engine, landscapes, sweep

ROOT = Path(__file__).parents[1]
TRACES = []


def _logistic(item, shared):
    """A few hundred steps of a chaotic map: any change of rounding shows in the bits."""
    TRACES.append(1)
    r = item["r"]

    def step(x, _):
        return r * x * (1 - x), None

    x, _ = jax.lax.scan(step, shared["x0"], length=200)
    return {"x": x, "r2": jnp.stack([r, 2 * r])}


def _items(n):
    return {"r": np.linspace(3.5, 4.0, n, dtype=np.float32)}


SHARED = {"x0": np.float32(0.3)}


def test_outputs_equal_a_loop_of_single_items():
    got = engine.map_chunks(_logistic, _items(37), SHARED, chunk=8)
    for i in [0, 5, 36]:
        one = jax.jit(_logistic)({"r": _items(37)["r"][i]}, SHARED)
        np.testing.assert_allclose(got["x"][i], one["x"], rtol=1e-4, atol=1e-5)
    assert got["r2"].shape == (37, 2)
    np.testing.assert_array_equal(got["r2"][:, 1], 2 * _items(37)["r"])


def test_new_values_of_the_same_shapes_compile_nothing_again():
    engine.map_chunks(_logistic, _items(40), SHARED, chunk=16)
    before = len(TRACES)
    engine.map_chunks(
        _logistic, {"r": _items(40)["r"][::-1].copy()}, {"x0": np.float32(0.6)}, chunk=16
    )
    assert len(TRACES) == before  # the shape check traces nothing new either: it is cached


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_results_are_bitwise_independent_of_the_chunk_size(chunk):
    ref = engine.map_chunks(_logistic, _items(300), SHARED, chunk=300)
    got = engine.map_chunks(_logistic, _items(300), SHARED, chunk=chunk)
    np.testing.assert_array_equal(got["x"], ref["x"])


def test_sweep_results_are_bitwise_independent_of_the_device_count(tmp_path):
    """Two devices against three (tests/test_sweep.py, slow, compares one and eight for momentum).
    Adam on one device differs from Adam on several in the last bit of about 3% of these
    runs: XLA compiles the single-device program differently (docs/architecture.md)."""
    script = textwrap.dedent(
        """
        import sys, jax, numpy as np
        from sandbox import sweep
        x0 = sweep.grid([[-6, 6], [-6, 6]], 40)
        r = sweep.descend("himmelblau", x0, optimizer="adam", steps=300, lr=0.05, tol=1e-4)
        np.savez(sys.argv[1], x=r.x, steps=r.steps_to_tol, n=jax.device_count())
        """
    )
    one = run_on_devices(script, 2, tmp_path / "two.npz")
    three = run_on_devices(script, 3, tmp_path / "three.npz")
    assert (int(one["n"]), int(three["n"])) == (2, 3)
    np.testing.assert_array_equal(one["x"], three["x"])
    np.testing.assert_array_equal(one["steps"], three["steps"])


def test_bad_items_are_named():
    with pytest.raises(ValueError, match="`items` must share a leading axis N"):
        engine.map_chunks(_logistic, {"r": np.ones(3), "s": np.ones(4)}, SHARED)
    with pytest.raises(ValueError, match=r"`items` must hold at least one item"):
        engine.map_chunks(_logistic, {"r": np.ones(0, np.float32)}, SHARED)
    with pytest.raises(ValueError, match="`chunk` must be an integer >= 1"):
        engine.map_chunks(_logistic, _items(3), SHARED, chunk=0)
    with pytest.raises(ValueError, match="`lazy` needs a `store`"):
        engine.map_chunks(_logistic, _items(3), SHARED, lazy=True)


# ----------------------------------------------------------------------------- stores

HIMMELBLAU = dict(optimizer="sgd", steps=400, lr=0.02, tol=1e-4)


def _starts(n=64):
    return sweep.grid(landscapes.get("himmelblau").bounds, n)


def _same(a: sweep.Sweep, b: sweep.Sweep):
    for name in sweep.Sweep._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_a_disabled_bar_and_every_bar_inside_it_write_nothing(monkeypatch):
    # A study's --no-progress: its bar disabled, the bars opened inside (a library's own,
    # engine.map_chunks's) are silent too; shown at once here (no delay) otherwise.
    err = io.StringIO()
    monkeypatch.setattr(engine, "_tqdm", functools.partial(engine.tqdm, file=err, leave=False))
    monkeypatch.setattr(engine, "PROGRESS_AFTER_S", 0)
    for _ in engine.bar(range(2), desc="study", disable=True):
        for _ in engine.bar(range(2), desc="inner"):
            pass
        engine.map_chunks(lambda item, shared: item * 2, np.arange(3.0), None, progress=None)
    assert err.getvalue() == ""
    assert engine._OUTER_BARS == 0 and engine._SILENT_BARS == 0
    list(engine.bar(range(2), desc="shown"))
    for _ in engine.bar(range(1), desc="study"):
        list(engine.bar(range(1), desc="nested"))
    assert "shown" in err.getvalue() and "nested" in err.getvalue()


def test_a_store_returns_the_same_arrays_and_a_second_call_computes_nothing(tmp_path):
    ref = sweep.descend("himmelblau", _starts(), **HIMMELBLAU)
    store = tmp_path / "s"
    _same(sweep.descend("himmelblau", _starts(), chunk_size=1024, store=store, **HIMMELBLAU), ref)
    marks = {p.name: p.stat().st_mtime_ns for p in (store / "done").iterdir()}
    assert len(marks) == 4  # 4096 runs in chunks of 1024
    _same(sweep.descend("himmelblau", _starts(), store=store, **HIMMELBLAU), ref)
    assert {p.name: p.stat().st_mtime_ns for p in (store / "done").iterdir()} == marks


def test_a_store_of_another_sweep_is_refused_with_what_differs_and_kept(tmp_path):
    store = tmp_path / "s"
    sweep.descend("himmelblau", _starts(), chunk_size=1024, store=store, **HIMMELBLAU)
    files = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    cases = [
        (dict(HIMMELBLAU, steps=401), "function"),
        (dict(HIMMELBLAU, lr=0.01), "shared.hyper"),
        (dict(HIMMELBLAU, tol=1e-3), "shared.scalars"),
    ]
    for kw, part in cases:
        with pytest.raises(ValueError, match=rf"another computation \(different {part}\)"):
            sweep.descend("himmelblau", _starts(), store=store, **kw)
    with pytest.raises(ValueError, match=r"different items.x0"):
        sweep.descend("himmelblau", _starts() + 0.5, store=store, **HIMMELBLAU)
    with pytest.raises(ValueError, match=r"different number of items"):
        sweep.descend("himmelblau", _starts(32), store=store, **HIMMELBLAU)
    with pytest.raises(ValueError, match=r"different function"):
        sweep.descend("rosenbrock", _starts(), store=store, **HIMMELBLAU)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == files


def test_inside_stores_in_each_computation_resumes_from_a_store_of_its_own(tmp_path, monkeypatch):
    ref = sweep.descend("himmelblau", _starts(), **HIMMELBLAU)
    with engine.stores_in(tmp_path):
        _same(sweep.descend("himmelblau", _starts(), **HIMMELBLAU), ref)
        other = sweep.descend("himmelblau", _starts(), **dict(HIMMELBLAU, lr=0.01))
    stores = sorted(p.name for p in tmp_path.iterdir())
    # One store per computation (the checked re-runs of diverged runs are maps of their
    # own): the second sweep got new ones instead of being refused.
    assert len(stores) >= 2

    # The same computations again: read back from their stores, nothing computed.
    def no_run(*args):
        return lambda *a: pytest.fail("computed again")

    monkeypatch.setattr(engine, "_runner", no_run)
    with engine.stores_in(tmp_path):
        _same(sweep.descend("himmelblau", _starts(), **HIMMELBLAU), ref)
        _same(sweep.descend("himmelblau", _starts(), **dict(HIMMELBLAU, lr=0.01)), other)
    assert sorted(p.name for p in tmp_path.iterdir()) == stores
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="`store` .* is not a folder"):
        with engine.stores_in(tmp_path / "file"):
            pass


KILLED_SWEEP = """
import sys
from sandbox import devices
devices.use_all_cores()
import numpy as np
from sandbox import landscapes, sweep
x0 = sweep.grid(landscapes.get("himmelblau").bounds, 256)  # 65,536 runs, 16 chunks
r = sweep.descend("himmelblau", x0, optimizer="adam", steps=3000, lr=0.05, tol=1e-4,
                  chunk_size=4096, store=sys.argv[1], progress=False)
np.savez(sys.argv[2], x=r.x, loss=r.loss, steps=r.steps_to_tol, diverged=r.diverged)
"""


def _python(script, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, **kw)


@pytest.mark.slow  # make test keeps tests/test_sweep_jobs.py's killed job started again
def test_a_sweep_killed_with_sigkill_resumes_and_matches_an_uninterrupted_run(tmp_path):
    store = tmp_path / "store"
    p = _python(KILLED_SWEEP, store, tmp_path / "killed.npz")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and p.poll() is None:
        if (store / "done").is_dir() and len(list((store / "done").iterdir())) >= 3:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = {q.name: q.stat().st_mtime_ns for q in (store / "done").iterdir()}
    assert 3 <= len(done) < 16, "the kill came too late to test a resume"
    assert _python(KILLED_SWEEP, store, tmp_path / "resumed.npz").wait() == 0
    # The chunks finished before the kill were not computed again.
    after = {q.name: q.stat().st_mtime_ns for q in (store / "done").iterdir()}
    assert len(after) == 16 and all(after[c] == t for c, t in done.items())
    assert _python(KILLED_SWEEP, tmp_path / "fresh", tmp_path / "fresh.npz").wait() == 0
    resumed, fresh = np.load(tmp_path / "resumed.npz"), np.load(tmp_path / "fresh.npz")
    for name in ["x", "loss", "steps", "diverged"]:
        np.testing.assert_array_equal(resumed[name], fresh[name], err_msg=name)


LAZY_SWEEP = """
import json, resource, sys, tracemalloc
import numpy as np
from sandbox import sweep
n = 1 << 21
x0 = np.random.default_rng(0).uniform(-6, 6, (n, 2)).astype(np.float32)
tracemalloc.start()  # NumPy reports its buffers to tracemalloc: the host arrays made from here
r = sweep.descend("himmelblau", x0, steps=4, lr=0.01, tol=1e-4, chunk_size=1 << 15,
                  store=sys.argv[1], lazy=sys.argv[2] == "lazy", progress=False)
peak = tracemalloc.get_traced_memory()[1]
held = sum(np.asarray(getattr(r, f)[:1]).nbytes for f in ("x", "loss", "grad_norm",
           "diverged", "diverged_step", "steps_to_tol")) * n
print(json.dumps({"peak": peak, "results": held, "x_last": np.asarray(r.x[n - 1]).tolist(),
                  "type": type(r.x).__name__,
                  "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@pytest.mark.slow  # two sweeps of 2^21 runs
def test_lazy_results_of_a_large_sweep_are_never_all_in_memory(tmp_path):
    """2^21 runs: their results take 50 MiB. Read lazily, the host arrays of the sweep (the
    peak that tracemalloc sees of NumPy's buffers) stay below 35% of that (measured: 14 MiB,
    of which 12 MiB are the same at 2^20 runs: no part that grows with the results); held
    as NumPy arrays, they reach at least the whole."""
    out = {}
    for mode in ["lazy", "numpy"]:
        p = _python(LAZY_SWEEP, tmp_path / mode, mode, stdout=subprocess.PIPE)
        text, _ = p.communicate()
        assert p.returncode == 0
        out[mode] = json.loads(text)
    assert out["lazy"]["type"] == "Array" and out["numpy"]["type"] == "ndarray"
    assert out["lazy"]["x_last"] == out["numpy"]["x_last"]
    assert out["lazy"]["peak"] < 0.35 * out["lazy"]["results"], out
    assert out["numpy"]["peak"] >= out["numpy"]["results"], out


# ----------------------------------------------------------------------------- processes

# The library path of several jobs on one store (no jax.distributed: each process claims
# chunks by leases; tests/test_sweep_jobs.py kills one while it holds leases).
TWO_PROCESSES = """
import sys
import numpy as np
from sandbox import landscapes, sweep
store, out = sys.argv[1], sys.argv[2]
x0 = sweep.grid(landscapes.get("himmelblau").bounds, 128)  # 16,384 runs, 16 chunks
r = sweep.descend("himmelblau", x0, optimizer="adam", steps=1500, lr=0.05, tol=1e-4,
                  chunk_size=1024, store=store, progress=False, lease=float(sys.argv[3]))
np.savez(out, x=r.x, loss=r.loss, steps=r.steps_to_tol)
"""
ONE_DEVICE = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")


def _two(store, out_dir, lease=60.0):
    return [
        _python(
            TWO_PROCESSES,
            store,
            out_dir / f"p{i}.npz",
            lease,
            env=dict(ONE_DEVICE, SANDBOX_HOST=f"test-{i}"),
            stderr=subprocess.DEVNULL,
        )
        for i in (0, 1)
    ]


def _check_against_one_process(tmp_path, outs):
    p = _python(TWO_PROCESSES, tmp_path / "ref", tmp_path / "ref.npz", 60, env=ONE_DEVICE)
    assert p.wait(timeout=300) == 0
    ref = np.load(tmp_path / "ref.npz")
    for name in outs:
        got = np.load(name)
        for field in ["x", "loss", "steps"]:
            np.testing.assert_array_equal(got[field], ref[field], err_msg=field)


def _marks(store):
    return {p.name: p.stat().st_mtime_ns for p in (store / "done").iterdir()}


@pytest.mark.slow  # make test keeps tests/test_sweep_jobs.py's three jobs on one store
def test_two_processes_share_a_store_and_both_return_the_whole_result(tmp_path):
    store = tmp_path / "shared"
    procs = _two(store, tmp_path)
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    _check_against_one_process(tmp_path, [tmp_path / "p0.npz", tmp_path / "p1.npz"])
    assert len(_marks(store)) == 16


@pytest.mark.slow  # make test keeps tests/test_sweep_jobs.py's three jobs with one killed
def test_a_killed_process_costs_only_its_leased_chunks_and_a_restart_computes_nothing_done(
    tmp_path,
):
    store = tmp_path / "shared"
    procs = _two(store, tmp_path, lease=2.0)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and procs[1].poll() is None:
        if (store / "done").is_dir() and len(_marks(store)) >= 2:
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()
    before = _marks(store)
    assert 0 < len(before) < 16, "the kill came too late to test a takeover"
    # The survivor does not wait on the dead one: it takes over its chunks once their
    # leases expire and returns the whole result.
    assert procs[0].wait(timeout=300) == 0
    after = _marks(store)
    assert len(after) == 16 and all(after[c] == t for c, t in before.items())
    # Started again after the end: computes nothing, returns the same arrays.
    again = _python(TWO_PROCESSES, store, tmp_path / "p1.npz", 2.0, env=ONE_DEVICE)
    assert again.wait(timeout=300) == 0
    assert _marks(store) == after
    _check_against_one_process(tmp_path, [tmp_path / "p0.npz", tmp_path / "p1.npz"])
