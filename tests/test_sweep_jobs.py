"""Sweeps as jobs: specs checked key by key; any number of worker processes on one store,
none waiting on a dead one, all returning one job's arrays bit for bit."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from sandbox import engine, landscapes, sweep
from sandbox.sweep import jobs as sweep_jobs
from sandbox.sweep import spec as specs

ROOT = Path(__file__).parents[1]
FIELDS = ["x", "loss", "grad_norm", "diverged", "diverged_step", "steps_to_tol"]

# 32 x 32 starts x 8 learning rates (none diverges from the grid: no chunk waits on the
# re-run of diverged runs) in 16 chunks of 512 runs, each a few tenths of a second: long
# enough that three jobs started together each get chunks.
SPEC = """
landscape = "himmelblau"
optimizer = "sgd"
steps = {steps}
tol = 1e-3
chunk = 512
[starts]
grid = 32
[axes]
lr = {{ values = [0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.010, 0.012] }}
"""
CHUNKS = 16

JOB = f"""
import sys
from sandbox import devices
devices.use_all_cores()  # as `python -m sandbox.sweep run` does (XLA_FLAGS keeps 1 device)
import numpy as np
from sandbox import sweep
r = sweep.run(sys.argv[1], sys.argv[2], lease=float(sys.argv[4]), progress=False)
np.savez(sys.argv[3], **{{f: getattr(r, f) for f in {FIELDS!r}}})
"""


def _spec(tmp_path, steps=30_000, name="spec.toml"):
    path = tmp_path / name
    path.write_text(SPEC.format(steps=steps))
    return path


def _job(spec, store, out, *, lease=60.0, host="one", **kw):
    """One worker process with the devices of this one (the XLA_FLAGS conftest set), named
    as a host of its own in leases (so a dead one's leases expire by time, as across
    machines)."""
    env = dict(os.environ, SANDBOX_HOST=f"test-{host}", PYTHONPATH=str(ROOT))
    args = [sys.executable, "-c", JOB, str(spec), str(store), str(out), str(lease)]
    return subprocess.Popen(args, cwd=ROOT, env=env, **kw)


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _marks(store):
    return {p.name: p.stat().st_mtime_ns for p in (store / "runs" / "done").iterdir()}


def _fields(r):
    return {f: np.asarray(getattr(r, f)) for f in FIELDS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One job alone (this process), start to end: the arrays every other way of running
    must give."""
    tmp = tmp_path_factory.mktemp("reference")
    spec = _spec(tmp)
    t = time.monotonic()
    r = sweep.run(spec, tmp / "store", progress=False)
    return {
        "arrays": _fields(r),
        "seconds": time.monotonic() - t,
        "spec": spec,
        "store": tmp / "store",
    }


def _wait_for(cond, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _held_by(store, host):
    return [x for x in engine.leases(store / "runs") if x["host"] == f"test-{host}"]


def test_three_jobs_one_killed_holding_leases_the_others_finish_with_the_same_bits(
    tmp_path, reference
):
    lease = 2.0
    store = tmp_path / "store"
    jobs = {
        h: _job(reference["spec"], store, tmp_path / f"{h}.npz", lease=lease, host=h)
        for h in ("a", "b", "victim")
    }
    # Kill the victim while it holds a lease and the other two are computing too.
    seen, held = set(), set()

    def all_computing():
        now = engine.leases(store / "runs")
        seen.update(x["host"] for x in now)
        held.update(x["chunk"] for x in now if x["host"] == "test-victim")
        return (held and len(seen) == 3) or jobs["victim"].poll() is not None

    while not all_computing():
        held.clear()
        time.sleep(0.01)
    jobs["victim"].send_signal(signal.SIGKILL)
    killed_at = time.time()
    jobs["victim"].wait()
    assert held, "the victim finished before it held a lease"
    # Watch for the survivors' takeover of each of the victim's chunks (a lease of theirs
    # on it), until both return.
    taken = {}
    while any(jobs[h].poll() is None for h in ("a", "b")):
        for x in engine.leases(store / "runs"):
            if x["chunk"] in held and x["host"] != "test-victim":
                taken.setdefault(x["chunk"], time.time())
        time.sleep(0.01)
    assert [jobs[h].wait(timeout=300) for h in ("a", "b")] == [0, 0]
    assert sorted(map(int, _marks(store))) == list(range(CHUNKS))
    # Taken over once its lease expired (leases of another host are judged by time alone),
    # within the lease plus a chunk or two (a job looks at the leases each time it starts a
    # chunk, and a renewal just before the kill restarts the watch), here with a generous
    # margin: the jobs share 2 cores with other tests.
    chunk_s = 3 * reference["seconds"] / CHUNKS
    marks = _marks(store)
    for c in held:
        if c not in taken:  # the victim marked it done between the listing and the kill
            assert marks[str(c)] / 1e9 <= killed_at, (c, held)
            continue
        after = taken[c] - killed_at
        # (the victim renewed every lease / 4 until it died, give or take a loaded thread)
        assert lease - 1.0 <= after <= lease + 2 * chunk_s + 3.0, (c, after, chunk_s)
    for h in ("a", "b"):
        _same(_arrays(tmp_path / f"{h}.npz"), reference["arrays"])
    loaded = sweep.load(store)
    _same({f: getattr(loaded, f) for f in FIELDS}, reference["arrays"])


def test_a_job_started_after_the_sweep_finished_returns_the_result_computing_nothing(
    reference, monkeypatch
):
    before = _marks(reference["store"])
    files = {p: p.stat().st_mtime_ns for p in reference["store"].rglob("*") if p.is_file()}
    monkeypatch.setattr(engine, "_runner", lambda *a: pytest.fail("computed again"))
    _same(_fields(sweep.run(reference["spec"], reference["store"])), reference["arrays"])
    assert _marks(reference["store"]) == before
    now = {p: p.stat().st_mtime_ns for p in reference["store"].rglob("*") if p.is_file()}
    assert now == files  # nothing written, not even a lease


def test_a_killed_single_job_started_again_resumes(tmp_path, reference, monkeypatch):
    store = tmp_path / "store"
    p = _job(reference["spec"], store, tmp_path / "killed.npz")
    done = store / "runs" / "done"
    assert _wait_for(lambda: (done.is_dir() and len(os.listdir(done)) >= 2) or p.poll() is not None)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = _marks(store)
    assert 2 <= len(before) < CHUNKS, "the kill came too late to test a resume"
    # Started again (here) on the same host: the leases of the dead process are taken over
    # at once, whatever host name it gave them.
    monkeypatch.setattr(engine, "HOST", "test-one")
    resumed = sweep.run(reference["spec"], store, lease=60.0, progress=False)
    after = _marks(store)
    assert len(after) == CHUNKS and all(after[c] == t for c, t in before.items())
    _same(_fields(resumed), reference["arrays"])


def _cli(capsys, *args):
    """`python -m sandbox.sweep ARGS` in this process: (exit status, stdout, stderr)."""
    from sandbox.sweep import __main__ as command

    try:
        command.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_store_of_another_spec_is_refused_untouched(tmp_path, reference, capsys):
    files = {p: p.read_bytes() for p in reference["store"].rglob("*") if p.is_file()}
    other = _spec(tmp_path, steps=29_999)
    code, out, err = _cli(capsys, "run", other, "--store", reference["store"])
    assert code == 2 and out == ""
    assert err.strip() == (
        f"error: sweep store {str(reference['store'])!r} holds another sweep (spec key "
        "`steps`: 30000 there, 29999 here); use another folder"
    )
    assert {p: p.read_bytes() for p in reference["store"].rglob("*") if p.is_file()} == files
    # Another code version: a store whose sweep.json names another JAX.
    meta = json.loads((reference["store"] / "sweep.json").read_text())
    copy = tmp_path / "copy"
    copy.mkdir()
    meta["versions"]["jax"] = "0.0.1"
    (copy / "sweep.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"made by another code version \(jax '0.0.1' there"):
        sweep.run(reference["spec"], copy)


def test_status_and_show_of_a_finished_sweep(reference, capsys):
    code, out, err = _cli(capsys, "status", reference["store"])
    assert code == 0, err
    assert "8192 runs (1024 starts x 8 combinations)" in out
    assert f"chunks: {CHUNKS} / {CHUNKS} done (finished)" in out
    # show's fractions against a count of the loaded arrays, done here independently
    loaded = sweep.load(reference["store"])
    x = loaded.by_axes(loaded.x)  # [S, A, 2]
    minima = landscapes.get("himmelblau").minima
    dist = np.linalg.norm(x[:, :, None, :] - minima[None, None], axis=-1)  # [S, A, 4]
    want = (dist <= 0.01).mean(axis=0)  # [A, 4] (minima 0.01 < half their distance apart)
    rows = sweep.jobs.summary(loaded)
    np.testing.assert_allclose([row["basins"] for row in rows], want, rtol=0, atol=1e-12)
    # every run converges at these rates: the four basins hold every start
    np.testing.assert_allclose(want.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    code, out, err = _cli(capsys, "show", reference["store"])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split()[:2] == ["lr", "basin"] and len(lines) == 2 + 8
    assert lines[2].split()[0] == "0.001"


def test_show_plot_draws_a_panel_per_combination_and_the_fractions(reference, tmp_path):
    from PIL import Image

    store = tmp_path / "store"
    shutil.copytree(reference["store"], store)
    text = sweep.show(store, plot=True)
    assert text.splitlines()[-2:] == [
        f"wrote {store / 'basins.png'}",
        f"wrote {store / 'fractions.png'}",
    ]
    for name in ("basins.png", "fractions.png"):
        with Image.open(store / name) as img:
            assert img.size[0] > 300 and img.size[1] > 200


def test_status_of_a_running_sweep_names_the_leases(tmp_path, reference):
    store = tmp_path / "store"
    spec = reference["spec"]
    specs_ = specs.read(spec)
    sweep.jobs._open(store, specs_, spec.read_text())
    (store / "runs").mkdir()
    # A store with 3 chunks done and one leased, made by the engine's own parts.
    runs = reference["store"] / "runs"
    for name in ("engine.json", "arrays.zarr"):
        src = runs / name
        if src.is_dir():
            shutil.copytree(src, store / "runs" / name)
        else:
            (store / "runs" / name).write_bytes(src.read_bytes())
    (store / "runs" / "done").mkdir()
    for c in (0, 1, 2):
        (store / "runs" / "done" / str(c)).write_bytes((runs / "done" / str(c)).read_bytes())
    (store / "runs" / "leases").mkdir()
    info = {"owner": "node7:123:abcd", "host": "node7", "pid": 123, "lease_s": 60.0}
    (store / "runs" / "leases" / "3.0").write_text(json.dumps(info))
    text = sweep.status(store)
    assert "chunks: 3 / 16 done" in text and "leased now: 1" in text
    assert "chunk 3 by node7:123:abcd" in text and "runs/s; time left: about" in text
    with pytest.raises(ValueError, match=r"is not finished \(3 of 16 chunks done\)"):
        sweep.load(store)


# ----------------------------------------------------------------------------- spec errors

GOOD = {
    "landscape": "himmelblau",
    "optimizer": "sgd",
    "steps": 100,
    "tol": 1e-3,
    "starts": {"grid": 8},
    "axes": {"lr": {"logspace": [-3.0, -1.5], "num": 4}},
}


def _with(path, value):
    out = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    d = out
    for k in parents:
        d = d.setdefault(k, {})
    if value is KeyError:
        d.pop(last)
    else:
        d[last] = value
    return out


@pytest.mark.parametrize(
    "path, value, match",
    [
        ("stpes", 3, r"spec key `stpes` is unknown; known keys: axes, "),
        ("landscape", KeyError, r"spec key `landscape` is missing"),
        ("landscape", "nope", r"spec key `landscape` must be one of .*himmelblau"),
        ("landscape", "nomodule_xyz:f", r"spec key `landscape` must be an importable"),
        ("landscape", "math:sin", r"spec key `bounds` is missing"),
        ("bounds", [[1.0, -1.0], [0.0, 1.0]], r"spec key `bounds` must be \[\[lo, hi\], \.\.\.\]"),
        ("bounds", [[-1.0, 1.0]], r"spec key `bounds` must be .* for 2 dimensions"),
        ("minima", [[1.0]], r"spec key `minima` must be a list of points"),
        ("optimizer", "sgdd", r"spec key `optimizer` must be one of adagrad"),
        ("steps", KeyError, r"spec key `steps` is missing"),
        ("steps", 0, r"spec key `steps` must be an integer >= 1"),
        ("steps", 2.5, r"spec key `steps` must be an integer"),
        ("steps", 2**40, r"spec key `steps` must be an integer >= 1 and <= 2147483647"),
        ("tol", -1.0, r"spec key `tol` must be a positive number"),
        ("basin_tol", 0, r"spec key `basin_tol` must be a positive number"),
        ("bound", float("inf"), r"spec key `bound` must be a positive number"),
        ("dtype", "float16", r"spec key `dtype` must be 'float32' or 'float64'"),
        ("record_every", 101, r"spec key `record_every` must be an integer >= 0 and <= 100"),
        ("chunk", 0, r"spec key `chunk` must be an integer >= 1"),
        ("chunk", "big", r"spec key `chunk` must be an integer >= 1"),
        ("starts", KeyError, r"spec table `\[starts\]` is missing"),
        ("starts.grid", KeyError, r"exactly one of `grid` and `random`"),
        ("starts.random", 10, r"exactly one of `grid` and `random`"),
        ("starts.grid", [4, 4, 4], r"spec key `starts.grid` must be n or \[H, W\]"),
        ("starts.grid", 0, r"spec key `starts.grid` must be an integer >= 1"),
        ("starts.grid", 1 << 17, r"spec key `starts.grid` must be an integer >= 1 and <= 65536"),
        ("starts.seed", 3, r"spec key `starts.seed` goes with `random`"),
        ("starts.box", [[0.0, 0.0], [0.0, 1.0]], r"spec key `starts.box` must be"),
        ("starts.where", 1, r"spec key `starts.where` is unknown"),
        ("axes.lr", [0.1], r"spec key `axes.lr` must be \{ values"),
        ("axes.lr", {"values": []}, r"spec key `axes.lr.values` must be a non-empty list"),
        ("axes.lr", {"logspace": [-3.0]}, r"spec key `axes.lr.logspace` must be \[lo, hi\]"),
        ("axes.lr", {"logspace": [-3.0, -1.0]}, r"spec key `axes.lr.num` is missing"),
        ("axes.lr", {"linspace": [0.1, 0.2], "num": 0}, r"spec key `axes.lr.num` must be"),
        ("axes.lr", {"values": [0.1], "num": 2}, r"spec key `axes.lr.num` goes with linspace"),
        ("axes.lr", {"values": [0.1, -0.1]}, r"spec key `axes.lr`: `lr` must be positive"),
        ("axes.momentum", {"values": [0.5]}, r"spec key `axes.momentum` is not a hyperpar"),
        ("axes", KeyError, r"spec key `hyper.lr` \(or `axes.lr`\) is missing"),
        ("hyper.lr", 0.1, r"spec key `axes.lr` is also in \[hyper\]"),
        ("hyper.eps", "x", r"spec key `hyper.eps` must be a finite number"),
        # Values the float32 runs would hold as 0 or inf.
        ("axes.lr", {"values": [1e-50]}, r"spec key `axes.lr` must be 0 or a number of mag"),
        ("axes.lr", {"values": [1e39]}, r"spec key `axes.lr` must be 0 or a number of magni"),
        ("starts.grid", [65536, 65536], r"spec `\[starts\]` x `\[axes\]` make \d+ runs; at most"),
    ],
)
def test_each_spec_error_is_one_line_naming_the_key(path, value, match):
    raw = _with(path, value)
    if path == "landscape" and value == "nomodule_xyz:f":
        raw["bounds"] = [[0.0, 1.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match=match) as e:
        specs.check(raw)
    assert "\n" not in str(e.value)


def test_an_integer_hyperparameter_beyond_int32_is_refused_naming_the_key():
    raw = {**GOOD, "optimizer": "noisy_sgd", "hyper": {"eta": 0.1, "seed": 3_000_000_000}}
    with pytest.raises(ValueError, match=r"`hyper.seed` must be an integer in \[-2147483648, "):
        specs.check(raw)
    raw = {**GOOD, "optimizer": "noisy_sgd", "hyper": {"eta": 0.1}}
    raw["axes"] = {**GOOD["axes"], "seed": {"values": [0, 2**31]}}
    with pytest.raises(ValueError, match=r"`axes.seed` must be an integer in \[-2147483648, "):
        specs.check(raw)


def test_workers_making_a_new_store_at_once_all_open_it(tmp_path):
    # Each worker finds no sweep.json, then lists the folder while the others write theirs
    # (hidden temporary files, then sweep.json and runs/): none may take it for a foreign
    # folder. 20 new stores, 8 workers each.
    spec_path = _spec(tmp_path, steps=100)
    spec, text = specs.read(spec_path), spec_path.read_text()
    refused = []

    def open_(store, barrier):
        barrier.wait()
        try:
            sweep_jobs._open(store, spec, text)
        except ValueError as e:
            refused.append(str(e))

    for i in range(20):
        barrier = threading.Barrier(8)
        workers = [
            threading.Thread(target=open_, args=(tmp_path / f"s{i}", barrier)) for _ in range(8)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert refused == []
    # A job killed while writing sweep.json leaves a hidden temporary file: still a new store.
    (tmp_path / "killed").mkdir()
    (tmp_path / "killed" / ".sweep.json.abc.tmp").write_text("{")
    assert sweep_jobs._open(tmp_path / "killed", spec, text)["spec"] == spec
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is a folder that is not a sweep store"):
        sweep_jobs._open(tmp_path / "mine", spec, text)


def test_a_spec_error_on_the_command_line_is_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('landscape = "himmelblau"\nsteps = "many"\n[starts]\ngrid = 4\n')
    code, _, err = _cli(capsys, "run", bad, "--store", tmp_path / "store")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: spec key `steps` must be an integer >= 1")
    assert not (tmp_path / "store").exists()
    (tmp_path / "broken.toml").write_text("landscape = \n")
    code, _, err = _cli(capsys, "run", tmp_path / "broken.toml", "--store", tmp_path / "store")
    assert code == 2 and "is not valid TOML" in err and err.count("\n") == 1
    code, _, err = _cli(capsys, "run", ROOT / "examples" / "sweep.toml", "--store", bad)
    assert code == 2 and err == f"error: sweep store {str(bad)!r} is a file, not a folder\n"
    code, _, err = _cli(capsys, "status", tmp_path)
    assert code == 2 and "is not a sweep store (no sweep.json)" in err
    code, _, err = _cli(capsys, "status", tmp_path / "missing")
    assert code == 2 and err.endswith("does not exist\n")
    spec = ROOT / "examples" / "sweep.toml"
    code, _, err = _cli(capsys, "run", spec, "--store", tmp_path / "s", "--lease", "0")
    assert code == 2 and err.startswith("error: `--lease` must be a number of seconds")
    assert not (tmp_path / "s").exists()


def test_the_example_spec_is_valid_and_its_runs_are_start_major():
    spec = specs.read(ROOT / "examples" / "sweep.toml")
    assert spec["axes"]["lr"] == pytest.approx(np.logspace(-3.0, -1.5, 8).tolist(), rel=1e-15)
    small = {**spec, "starts": {"grid": [2, 3], "box": [[0.0, 1.0], [0.0, 1.0]]}}
    s = specs.starts(small)
    np.testing.assert_array_equal(s.astype(np.float32), sweep.grid([[0, 1], [0, 1]], (2, 3)))
    grid = specs.axis_grid({"axes": {"a": [1, 2], "b": [10, 20, 30]}})
    np.testing.assert_array_equal(grid["a"], [1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(grid["b"], [10, 20, 30, 10, 20, 30])


# ----------------------------------------------------------------------------- launching


@pytest.mark.slow  # two local worker processes through submitit (about 40 s on 2 loaded cores)
def test_submit_runs_workers_through_submitit_local_executor(tmp_path, reference):
    jobs = sweep.submit(
        reference["spec"], tmp_path / "store", workers=2, executor="local", wait=True
    )
    assert len(jobs) == 2 and all("runs in" in j.result() for j in jobs)
    loaded = sweep.load(tmp_path / "store")
    _same({f: np.asarray(getattr(loaded, f)) for f in FIELDS}, reference["arrays"])


def test_submit_refuses_bad_requests_before_queueing(tmp_path, reference, monkeypatch):
    with pytest.raises(ValueError, match="`workers` must be an integer >= 1, got 0"):
        sweep.submit(reference["spec"], tmp_path / "s", workers=0, executor="local")
    with pytest.raises(ValueError, match="`executor` must be 'slurm' or 'local'"):
        sweep.submit(reference["spec"], tmp_path / "s", workers=1, executor="ray")
    bad = tmp_path / "bad.toml"
    bad.write_text('landscape = "nope"\nsteps = 1\n[starts]\ngrid = 2\n')
    with pytest.raises(ValueError, match="spec key `landscape` must be one of"):
        sweep.submit(bad, tmp_path / "s", workers=1, executor="local")
    assert not (tmp_path / "s").exists()
    if shutil.which("sbatch") is None:
        with pytest.raises(ValueError, match="no Slurm here"):
            sweep.submit(reference["spec"], tmp_path / "s", workers=2)


def test_a_spec_sweep_is_descend_on_starts_times_axes_in_start_major_order(tmp_path):
    """Built here by hand: start s of the seeded random draws, axis values row-major, run
    s * A + a; an integer hyperparameter (noisy_sgd's seed) swept as an axis."""
    spec = tmp_path / "noisy.toml"
    spec.write_text(
        'landscape = "himmelblau"\noptimizer = "noisy_sgd"\nsteps = 50\n'
        "[starts]\nrandom = 64\nseed = 3\n[hyper]\nlr = 0.01\neta = 0.05\n"
        "[axes]\nseed = { values = [0, 1] }\ngamma = { linspace = [0.0, 0.5], num = 3 }\n"
    )
    got = sweep.run(spec, tmp_path / "store", progress=False)
    bounds = landscapes.get("himmelblau").bounds
    starts = np.random.default_rng(3).uniform(bounds[:, 0], bounds[:, 1], (64, 2))
    x0 = np.repeat(starts.astype(np.float32), 6, axis=0)
    seed = np.tile(np.repeat(np.array([0, 1], np.int32), 3), 64)
    gamma = np.tile(np.array([0.0, 0.25, 0.5], np.float32), 2 * 64)
    want = sweep.descend(
        "himmelblau", x0, optimizer="noisy_sgd", steps=50, lr=0.01, eta=0.05, seed=seed, gamma=gamma
    )
    for f in ("x", "loss", "diverged"):
        np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
    assert got.by_axes(got.x).shape == (64, 2, 3, 2)
    # the noise seed matters: the two seeds' endpoints differ
    assert not np.array_equal(got.by_axes(got.x)[:, 0], got.by_axes(got.x)[:, 1])
