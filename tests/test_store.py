"""Chunk stores never hand back a number that was not computed for its place: every chunk is
checked against the checksums in its done marker (a damaged one is computed again), and a
damaged, foreign, unwritable or differently laid out store is refused in one line naming it,
before any work."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox import engine

ROOT = Path(__file__).parents[1]


def _logistic(item, shared):
    """A chaotic map: any wrong or zeroed row shows."""

    def step(x, _):
        return item * x * (1 - x), None

    x, _ = jax.lax.scan(step, shared, length=50)
    return {"x": x, "pair": jnp.stack([item, x])}


ITEMS = np.linspace(3.6, 4.0, 40, dtype=np.float32)
SHARED = np.float32(0.3)
CHUNK = 8  # 5 chunks (chunks are rounded to the device count: 8 holds for 1, 2, 4, 8)


def _map(store, **kw):
    return engine.map_chunks(_logistic, ITEMS, SHARED, chunk=CHUNK, store=store, **kw)


@pytest.fixture(scope="module")
def reference():
    return engine.map_chunks(_logistic, ITEMS, SHARED, chunk=CHUNK)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, reference):
    """A finished store, copied by each test that damages it."""
    path = tmp_path_factory.mktemp("finished") / "store"
    got = _map(path)
    _same(got, reference)
    assert len(list((path / "done").iterdir())) == _chunks(path)
    return path


def _chunks(path):
    meta = json.loads((path / "engine.json").read_text())
    return -(-meta["n"] // meta["chunk"])


def _same(a, b):
    for k in b:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def _copy(finished, tmp_path):
    path = tmp_path / "store"
    shutil.copytree(finished, path)
    return path


def _chunk_file(path, name, c):
    """The file of engine chunk c of output `name` (zarr 3: <name>/c/<c>[/0...])."""
    top = path / "arrays.zarr" / name / "c" / str(c)
    files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
    assert len(files) == 1, files
    return files[0]


def _no_work(monkeypatch):
    monkeypatch.setattr(engine, "_runner", lambda *a: pytest.fail("computed before refusing"))


def _files(path):
    return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- chunks


def _damage_deleted(path):
    _chunk_file(path, "x", 3).unlink()


def _damage_swapped(path):
    shutil.copyfile(_chunk_file(path, "x", 1), _chunk_file(path, "x", 3))


def _damage_swapped_with_markers(path):
    # Chunks 1 and 3 trade places, their markers with them: each marker matches the bytes
    # beside it, but not the place they are in.
    for name in ("x", "pair"):
        a, b = _chunk_file(path, name, 1), _chunk_file(path, name, 3)
        data = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(data)
    done = path / "done"
    (done / "1").rename(done / "tmp")
    (done / "3").rename(done / "1")
    (done / "tmp").rename(done / "3")


def _damage_truncated(path):
    f = _chunk_file(path, "x", 3)
    f.write_bytes(f.read_bytes()[:-5])


def _damage_garbled(path):
    f = _chunk_file(path, "pair", 3)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def _damage_forged(path):
    # A store killed with chunks 3 and 4 unwritten, then markers forged for them: one
    # without checksums, one copied from a chunk that was written.
    for c in (3, 4):
        for name in ("x", "pair"):
            _chunk_file(path, name, c).unlink()
    (path / "done" / "3").write_text("")
    shutil.copyfile(path / "done" / "1", path / "done" / "4")


@pytest.mark.parametrize(
    "damage, says",
    [
        (_damage_deleted, "chunk 3 (its bytes do not match its checksum (x))"),
        (_damage_swapped, "chunk 3 (its bytes do not match its checksum (x))"),
        (
            _damage_swapped_with_markers,
            "chunk 1 (its bytes do not match its checksum (pair, x)) and 1 more",
        ),
        (_damage_truncated, "chunk 3 (its data cannot be read"),
        (_damage_garbled, "chunk 3 (its "),  # undecodable, or decoded to other bytes
        (_damage_forged, "chunk 3 (its done marker holds no valid checksums) and 1 more"),
    ],
    ids=["deleted", "swapped", "swapped-with-markers", "truncated", "garbled", "forged"],
)
def test_a_damaged_chunk_is_found_and_computed_again(
    finished, reference, tmp_path, capsys, damage, says
):
    path = _copy(finished, tmp_path)
    damage(path)
    _same(_map(path), reference)
    err = capsys.readouterr().err
    assert f"`store` {str(path)!r}: {says}" in err and "computing again" in err
    # Repaired: read back again, nothing is said and nothing computed.
    _same(_map(path), reference)
    assert "verification" not in capsys.readouterr().err


def test_a_store_of_format_2_is_read_and_resumed_as_it_was_made(
    finished, reference, tmp_path, capsys, monkeypatch
):
    # Format 2 (before markers were salted): the same markers with unsalted checksums.
    path = _copy(finished, tmp_path)
    meta = json.loads((path / "engine.json").read_text())
    st = engine._Store(path, meta, engine._out_spec(_logistic, ITEMS, SHARED))
    for c in range(_chunks(path)):
        sums = engine._checksums(st.read_chunk(c), "")
        marker = {"rows": st.rows(c), "sha256": dict(zip(st.names, sums, strict=True))}
        (path / "done" / str(c)).write_text(json.dumps(marker))
    (path / "engine.json").write_text(json.dumps({**meta, "format": "sandbox.engine/2"}))
    _same(engine.read(path), reference)
    _damage_garbled(path)  # still checked: the damaged chunk is computed again
    _same(_map(path), reference)
    assert "chunk 3 (its " in capsys.readouterr().err
    _no_work(monkeypatch)
    _same(_map(path), reference)  # repaired as format 2
    assert json.loads((path / "engine.json").read_text())["format"] == "sandbox.engine/2"


def test_lazy_arrays_come_back_only_after_every_chunk_is_checked(finished, reference, tmp_path):
    path = _copy(finished, tmp_path)
    _damage_swapped(path)
    got = _map(path, lazy=True)
    np.testing.assert_array_equal(got["x"][...], reference["x"])


# ----------------------------------------------------------------------------- refusals


def _refused(path, match, monkeypatch):
    _no_work(monkeypatch)
    before = _files(path) if path.is_dir() else None
    with pytest.raises(ValueError, match=match) as e:
        _map(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    if before is not None:
        assert _files(path) == before  # left as it was


@pytest.mark.parametrize(
    "value, expected",
    [("big", "an integer >= 1, got 'big'"), (0, "an integer >= 1, got 0")],
)
def test_a_bad_engine_json_is_refused_naming_the_field(
    finished, tmp_path, monkeypatch, value, expected
):
    path = _copy(finished, tmp_path)
    meta = json.loads((path / "engine.json").read_text())
    meta["chunk"] = value
    (path / "engine.json").write_text(json.dumps(meta))
    _refused(path, rf"has a damaged engine.json: `chunk` must be {expected}", monkeypatch)
    (path / "engine.json").write_text("{not json")
    _refused(path, "has an unreadable engine.json", monkeypatch)


@pytest.mark.parametrize("target", ["arrays.zarr/zarr.json", "arrays.zarr/x/zarr.json"])
def test_deleted_zarr_metadata_is_refused(finished, tmp_path, monkeypatch, target):
    path = _copy(finished, tmp_path)
    (path / target).unlink()
    _refused(path, "has damaged zarr metadata", monkeypatch)


def test_a_file_or_a_foreign_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("data")
    _refused(tmp_path / "file", "is a file, not a folder", monkeypatch)
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("mine")
    _refused(tmp_path / "folder", "is a folder that is not an engine store", monkeypatch)


def test_a_store_of_another_layout_is_refused(finished, tmp_path, monkeypatch):
    path = _copy(finished, tmp_path)
    real = engine._layout
    monkeypatch.setattr(
        engine, "_layout", lambda d, lane, batch: {**real(d, lane, batch), "devices": 16}
    )
    _refused(
        path,
        r"was computed on \d+ cpu device\(s\) of another layout \(devices \d+ there, 16 here\)",
        monkeypatch,
    )


UNWRITABLE = """
import json, sys
from sandbox import engine
sys.path.insert(0, "tests")
from test_store import _logistic, ITEMS, SHARED, CHUNK
engine._runner = lambda *a: sys.exit("computed before refusing")

def refusal(path, study):
    try:
        if study:  # a study's --store: refused on entry
            with engine.stores_in(path):
                return "entered"
        engine.map_chunks(_logistic, ITEMS, SHARED, chunk=CHUNK, store=path)
        return "not refused"
    except ValueError as e:
        return str(e)

for path, study in json.loads(sys.argv[1]):
    print(json.dumps(refusal(path, study)))
"""


def _as_other_user(cases: list[tuple[str, bool]]) -> list[str]:
    """What each (store, as a study's --store) case says, from one Python without write
    access to what this process made (as nobody when root)."""
    pre = []
    if os.getuid() == 0:
        pre = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [*pre, sys.executable, "-c", UNWRITABLE, json.dumps(cases)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_an_unwritable_store_with_chunks_missing_is_refused_before_any_work(finished):
    if os.getuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("root without setpriv cannot test a folder it cannot write")
    base = Path(tempfile.mkdtemp(prefix="sandbox-store-test-"))  # outside pytest's 0700 root
    try:
        path = base / "store"
        shutil.copytree(finished, path)
        for c in (3, 4):
            (path / "done" / str(c)).unlink()
        # Readable by all, writable by nobody else (as root: the test runs as nobody).
        mode = (0o755, 0o644) if os.getuid() == 0 else (0o555, 0o444)
        for p in [base, path, *path.rglob("*")]:
            p.chmod(mode[0] if p.is_dir() else mode[1])
        before = _files(path)
        # The store, a new store in a folder that cannot be written, and a study's --store
        # folder that cannot be written (refused on entry): each refused before any work.
        stored, new, study = _as_other_user(
            [(str(path), False), (str(base / "new"), False), (str(base), True)]
        )
        assert stored.startswith(f"`store` {str(path)!r} cannot be written"), stored
        assert "2 of its 5 chunks are not computed" in stored
        assert _files(path) == before
        assert "cannot be made" in new, new
        assert not (base / "new").exists()
        assert study == f"`store` {str(base)!r} cannot be written: Permission denied"
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base)


def test_a_new_store_has_the_umasks_modes_for_other_users_of_a_shared_folder(tmp_path):
    old = os.umask(0o022)
    try:
        _map(tmp_path / "store")
    finally:
        os.umask(old)
    folders = [tmp_path / "store", *(p for p in (tmp_path / "store").rglob("*") if p.is_dir())]
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o755"}


# ----------------------------------------------------------------------------- outputs


def test_a_bare_array_output_is_stored(tmp_path):
    def double(item, shared):
        return 2 * item + shared

    want = 2 * ITEMS + 1
    got = engine.map_chunks(double, ITEMS, np.float32(1), chunk=CHUNK, store=tmp_path / "s")
    np.testing.assert_array_equal(got, want)
    again = engine.map_chunks(double, ITEMS, np.float32(1), chunk=CHUNK, store=tmp_path / "s")
    np.testing.assert_array_equal(again, want)
    pair = engine.map_chunks(
        lambda i, s: (i, i + s), ITEMS, np.float32(1), chunk=CHUNK, store=tmp_path / "t"
    )
    np.testing.assert_array_equal(pair[1], ITEMS + 1)


ONE_DEVICE_STORE = """
import sys
from sandbox import engine
sys.path.insert(0, "tests")
from test_store import _logistic, ITEMS, SHARED, CHUNK
engine.map_chunks(_logistic, ITEMS, SHARED, chunk=CHUNK, store=sys.argv[1])
with engine.stores_in(sys.argv[2]):
    engine.map_chunks(_logistic, ITEMS, SHARED, chunk=CHUNK)
"""


def test_a_resume_on_another_device_count_is_refused_or_gets_a_store_of_its_own(
    tmp_path, reference
):
    """A store computed on another device count than this process's: an explicit store is
    refused; inside `stores_in` the computation gets a store of its own (its own layout)."""
    count = len(jax.local_devices()) + 1
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
    subprocess.run(
        [sys.executable, "-c", ONE_DEVICE_STORE, str(tmp_path / "s"), str(tmp_path / "root")],
        cwd=ROOT,
        env=env,
        check=True,
    )
    with pytest.raises(ValueError, match=rf"was computed on {count} cpu device"):
        _map(tmp_path / "s")
    # inside stores_in: the other layout's store is not this one's
    with engine.stores_in(tmp_path / "root"):
        _same(_map(None), reference)
    assert len(list((tmp_path / "root").iterdir())) == 2


STUDY = """
import sys
from studies import {name}
{name}.main(["--quick", "--out", sys.argv[1], "--store", sys.argv[2]])
"""


def _study_with_store(name, tmp_path):
    for run in ("first", "again"):
        subprocess.run(
            [sys.executable, "-c", STUDY.format(name=name), tmp_path / run, tmp_path / "store"],
            cwd=ROOT,
            check=True,
            timeout=600,
        )
    a, b = np.load(tmp_path / "first" / "arrays.npz"), np.load(tmp_path / "again" / "arrays.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert any((tmp_path / "store").iterdir())


@pytest.mark.slow  # two quick runs, about 35 s (test_a_bare_array_output_is_stored is its twin)
def test_the_fractal_study_runs_with_a_store(tmp_path):
    _study_with_store("fractal", tmp_path)


@pytest.mark.slow  # the quick run takes about a minute
def test_the_sharpness_map_study_runs_with_a_store(tmp_path):
    _study_with_store("sharpness_map", tmp_path)


# ----------------------------------------------------------------------------- leases


def _fresh_store(tmp_path):
    path = tmp_path / "store"
    _map(path)
    for c in (1, 2):
        (path / "done" / str(c)).unlink()
    return engine._Store(path, engine._read_meta(path), engine._out_spec(_logistic, ITEMS, SHARED))


def _lease(store, c, epoch=0, **info):
    (store.path / "leases" / f"{c}.{epoch}").write_text(json.dumps(info))


def test_a_live_lease_is_respected_and_an_expired_one_taken_over(tmp_path, monkeypatch):
    store = _fresh_store(tmp_path)
    # Chunk 1: held by a live process of this host (this test's parent), renewed just now.
    _lease(store, 1, host=engine.HOST, pid=os.getppid(), owner="parent", lease_s=60)
    # Chunk 2: held by a process of this host that no longer runs: expired at once.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lease(store, 2, host=engine.HOST, pid=dead.pid, owner="dead", lease_s=60)
    with engine._Claims(store, lease_s=0.3) as claims:
        now = claims.current()
        assert not claims.claim(1, now)
        assert claims.claim(2, now)
        assert sorted(p.name for p in (store.path / "leases").iterdir()) == ["1.0", "2.1"]
        # A second claimer cannot take what the first holds.
        with engine._Claims(store, lease_s=0.3) as other:
            assert not other.claim(2, other.current())
    assert sorted(p.name for p in (store.path / "leases").iterdir()) == ["1.0"]


def test_a_job_leaves_the_last_open_chunk_to_others_while_its_own_computes(
    tmp_path, monkeypatch, reference
):
    # A job dispatches its next chunk while the last one is copied back, but not the last
    # chunk open: another job may be idle for it. 5 chunks, one job: while chunk c is being
    # written, the job holds a lease on c and on c + 1, except on the last two.
    held = {}
    write = engine._Store.write

    def watched(self, c, outputs):
        held[c] = sorted(lease["chunk"] for lease in engine.leases(self.path))
        write(self, c, outputs)

    monkeypatch.setattr(engine._Store, "write", watched)
    _same(_map(tmp_path / "store"), reference)
    assert held == {0: [0, 1], 1: [1, 2], 2: [2, 3], 3: [3], 4: [4]}


def test_a_lease_of_another_host_expires_when_it_stops_changing(tmp_path, monkeypatch):
    store = _fresh_store(tmp_path)
    _lease(store, 1, host="elsewhere", pid=1, owner="far", lease_s=0.3)
    t = [100.0]
    monkeypatch.setattr(engine.time, "monotonic", lambda: t[0])
    claims = engine._Claims(store, lease_s=0.3)
    claims.folder.mkdir(exist_ok=True)
    assert not claims.claim(1, claims.current())  # first seen now
    t[0] += 0.2
    os.utime(store.path / "leases" / "1.0")  # renewed by its holder: seen again from now
    assert not claims.claim(1, claims.current())
    t[0] += 0.2
    assert not claims.claim(1, claims.current())  # 0.2 s unchanged < 0.3 s
    t[0] += 0.2
    assert claims.claim(1, claims.current())  # 0.4 s unchanged: expired, taken over
    claims.release(1)


def test_a_job_finishes_the_chunks_of_a_held_lease_once_it_expires(
    tmp_path, reference, monkeypatch
):
    """A chunk leased by a dead holder on another host: the job computes everything else,
    then takes the chunk over once the lease has not changed for `lease` seconds."""
    store = _fresh_store(tmp_path)
    _lease(store, 1, host="elsewhere", pid=1, owner="far", lease_s=0.5)
    _same(_map(store.path, lease=0.5), reference)
    assert len(store.done()) == _chunks(store.path)


def test_bad_lease_is_named():
    with pytest.raises(ValueError, match="`lease` must be a positive finite number"):
        engine.map_chunks(_logistic, ITEMS, SHARED, lease=0)


def test_a_damaged_sweep_store_gives_back_the_sweep_of_an_undamaged_one(tmp_path, capsys):
    """The probe's case through `sweep.descend(..., store=)`: `loss/c/1` deleted and
    `x/c/2/0` replaced by chunk 0's file give back exactly the sweep without a store."""
    from sandbox import landscapes, sweep

    x0 = sweep.grid(landscapes.get("himmelblau").bounds, 64)
    kw = dict(optimizer="sgd", steps=300, lr=0.02, tol=1e-4, chunk_size=1024)
    ref = sweep.descend("himmelblau", x0, **kw)
    store = tmp_path / "s"
    sweep.descend("himmelblau", x0, store=store, **kw)
    (store / "arrays.zarr" / "loss" / "c" / "1").unlink()
    shutil.copyfile(store / "arrays.zarr/x/c/0/0", store / "arrays.zarr/x/c/2/0")
    got = sweep.descend("himmelblau", x0, store=store, **kw)
    for f in ("x", "loss", "grad_norm", "diverged", "steps_to_tol"):
        np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f)
    assert (
        "chunk 1 (its bytes do not match its checksum (loss)) and 1 more" in capsys.readouterr().err
    )
