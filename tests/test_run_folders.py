"""Run folders land as a whole: a kill or a Ctrl-C at any moment, or a second run into the
same folder, never leaves files of two runs side by side; every file is tied to its run, and
every bad, missing or foreign saved file is one line; a linked --out lands in its target."""

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]

# A study as small as a study can be, with arrays large enough (32 MiB) that saving them
# takes a while, a figure and an artifact written from the saved arrays.
TINY_STUDY = """
import dataclasses, sys, time
import numpy as np
from sandbox import cli, results

@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0
    wait_s: float = 0.0
    size: int = 1 << 22

def compute(cfg):
    time.sleep(cfg.wait_s)
    rng = np.random.default_rng(cfg.seed)
    return {"seed": np.int64(cfg.seed), "noise": rng.random(cfg.size)}, {"seed": cfg.seed}

def plot(arrays, cfg, summary):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.set_title(f"seed {int(arrays['seed'])}")
    return {"figure": fig}

def note(arrays, cfg, summary, folder):
    (folder / "note.md").write_text(f"seed {int(arrays['seed'])}\\n")

@cli.command
def main(argv=None):
    p = cli.study_parser("tiny")
    p.add_argument("--wait", type=float, default=0.0)
    p.add_argument("--size", type=int, default=1 << 22)
    args = p.parse_args(argv)
    cfg = Config(wait_s=args.wait, size=args.size)
    cli.run_study("tiny", args, cfg, compute, plot, artifacts=note)
"""
TINY = {}
exec(TINY_STUDY, TINY)  # the same study in this process, for the fast tests


# Ctrl-C as from a terminal: a test session started in the background (`cmd &` in a script)
# ignores SIGINT, which its commands inherit; Python then never raises KeyboardInterrupt.
AS_FROM_A_TERMINAL = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"


def _tiny(out, *args, capture=False):
    """The tiny study into `out`; with `capture`, read its output with `communicate()`."""
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-c", AS_FROM_A_TERMINAL + TINY_STUDY + "main()", "--out", str(out)]
        + list(map(str, args)),
        cwd=ROOT,
        env=dict(os.environ, MPLBACKEND="agg"),
        stdout=pipe,
        stderr=pipe,
        text=True,
    )


def _one_run(out: Path) -> int | None:
    """The seed of the run the folder holds, checked file by file as a user reads them."""
    if not (out / "config.json").exists():
        assert not (out / "arrays.npz").exists() and not (out / "meta.json").exists()
        return None
    seed = json.loads((out / "config.json").read_text())["seed"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == seed
    assert json.loads((out / "summary.json").read_text())["seed"] == seed
    digest = hashlib.sha256((out / "arrays.npz").read_bytes()).hexdigest()
    assert digest == meta["arrays_sha256"]
    with np.load(out / "arrays.npz") as z:
        assert int(z["seed"]) == seed
    assert (out / "note.md").read_text() == f"seed {seed}\n"
    assert (out / "figure.png").stat().st_size > 0
    return seed


def _leftovers(out: Path) -> list[str]:
    here = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    beside = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return here + beside


def _cleaned(out: Path, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while out.exists() and _leftovers(out):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("first", [pytest.param(True, marks=pytest.mark.slow), False])
def test_a_run_killed_at_any_moment_leaves_one_whole_run(tmp_path, first):
    out = tmp_path / "run"
    # How long a whole run takes here, then kills spread over that time: timed on the earlier
    # run the kills must leave whole, or where `out` must stay empty, on a run of its own.
    start = time.monotonic()
    timed = _tiny(tmp_path / "timing", "--seed", 2) if first else _tiny(out, "--seed", 1)
    assert timed.wait() == 0
    total = time.monotonic() - start
    seen = set()
    kills = 2 if first else 3
    for i in range(kills):
        p = _tiny(out, "--seed", 2)
        time.sleep(total * (0.4 + 0.6 * i / kills))
        p.send_signal(signal.SIGKILL)
        p.wait()
        seen.add(_one_run(out))
        assert seen <= ({None, 2} if first else {1, 2})
        # The killed run's watcher removes its staging folder and half-written files.
        assert _cleaned(out), _leftovers(out)
    # The next run removes what the killed ones left, and lands whole.
    assert _tiny(out, "--seed", 3).wait() == 0
    assert _one_run(out) == 3 and _leftovers(out) == []
    if first:  # a first run killed before it landed leaves nothing --plot-only could read
        empty = tmp_path / "empty"
        p = _tiny(empty, "--seed", 4)
        time.sleep(0.5 * total)
        p.send_signal(signal.SIGKILL)
        p.wait()
        q = _tiny(empty, "--plot-only", capture=True)
        _, err = q.communicate()
        assert q.returncode == 2 and "no saved results" in err and err.count("\n") == 1


def test_a_second_run_into_a_busy_folder_is_refused_in_one_line(tmp_path):
    out = tmp_path / "run"
    # The first run holds the folder from the moment its staging folder exists until it has
    # landed: 3 s of compute, then saving 32 MiB of arrays and a figure (about 1.5 s more
    # here). The second run reaches the lock under 1 s after it starts here: a 3x margin,
    # whatever the machine's speed.
    first = _tiny(out, "--seed", 5, "--wait", 3)
    _stage(out)
    second = _tiny(out, "--seed", 6, capture=True)
    _, err = second.communicate()
    assert second.returncode == 2
    assert err.count("\n") == 1 and "is in use by another run" in err and "--out" in err
    assert first.wait() == 0
    assert _one_run(out) == 5


def _main(out, *args) -> None:
    """Runs the tiny study in this process."""
    TINY["main"](["--out", str(out), *map(str, args)])


def test_a_new_run_into_a_folder_of_other_files_is_refused_and_drops_nothing(tmp_path, capsys):
    """A run lands as a whole folder, dropping older run files: into a folder that holds no
    run (a mistyped --out, a desktop) it is refused in one line, before computing."""
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    mine = {"README.md": b"notes", "notes.json": b"{}", "data.csv": b"1,2", "sub/x.png": b"p"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _main(out, "--seed", 1)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"`--out` {str(out)!r} holds files that are not a run's (README.md, notes.json)" in err
    assert {n: (out / n).read_bytes() for n in mine} == mine and _leftovers(out) == []
    # What a landing keeps (subfolders such as a killed run's checkpoints, other files) does
    # not refuse a run, and is kept.
    for name in ("README.md", "notes.json"):
        (out / name).unlink()
    _main(out, "--seed", 1)
    assert _one_run(out) == 1 and (out / "sub" / "x.png").read_bytes() == b"p"
    assert (out / "data.csv").read_bytes() == b"1,2"
    # A damaged run (meta.json gone) is still a run: run again, it is replaced.
    (out / "meta.json").unlink()
    _main(out, "--seed", 2)
    assert _one_run(out) == 2


def test_a_refused_redraw_or_store_makes_no_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    for args, says in [
        (["--plot-only"], "holds no run to redraw (no such folder)"),
        (["--store", tmp_path / "file"], "is not a folder"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            _main(tmp_path / "new", *args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and says in err, err
        assert not (tmp_path / "new").exists()


def test_a_study_that_computes_without_jax_saves_and_draws_without_loading_it(tmp_path):
    """The tiny study computes with NumPy: its run and its --plot-only load no JAX (and
    start no backend), so its meta.json names none; the library versions are still there."""
    out = tmp_path / "run"
    loaded = TINY_STUDY + "try:\n    main()\nfinally:\n    print('jax' in sys.modules)\n"
    for args in (["--size", "1000"], ["--plot-only"]):
        r = subprocess.run(
            [sys.executable, "-c", loaded, "--out", str(out), *args],
            cwd=ROOT,
            env=dict(os.environ, MPLBACKEND="agg"),
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0 and r.stdout.splitlines()[-1] == "False", r.stdout + r.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"] is None and meta["devices"] == [] and meta["x64"] is None
    assert meta["versions"]["jax"] == importlib.metadata.version("jax")


def test_files_of_a_run_folder_share_one_mode(tmp_path):
    out = tmp_path / "run"
    _main(out)
    umask = os.umask(0)
    os.umask(umask)
    for name in ["config.json", "arrays.npz", "summary.json", "meta.json", "figure.png", "note.md"]:
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def _broken(out: Path, what: str, other: Path) -> None:
    """Breaks the run folder `out` as `what` says; `other` is another run of the same study."""
    meta = json.loads((out / "meta.json").read_text())
    if what == "truncated arrays":
        data = (out / "arrays.npz").read_bytes()
        (out / "arrays.npz").write_bytes(data[: len(data) // 2])
    elif what == "missing config":
        (out / "config.json").unlink()
    elif what == "unparsable config":
        (out / "config.json").write_text("{not json")
    elif what == "unparsable summary":
        (out / "summary.json").write_text("[1, 2")
    elif what == "missing summary":
        (out / "summary.json").unlink()
    elif what == "empty summary":
        (out / "summary.json").write_text("{}")
    elif what == "another run's config":
        shutil.copy(other / "config.json", out / "config.json")
    elif what == "another run's summary":
        shutil.copy(other / "summary.json", out / "summary.json")
    elif what == "another study's arrays":
        np.savez(out / "arrays.npz", other=np.zeros(3))
    elif what == "another study's arrays, no meta":
        np.savez(out / "arrays.npz", other=np.zeros(3))
        (out / "meta.json").unlink()
    elif what == "missing meta":
        (out / "meta.json").unlink()
    elif what == "meta without digests":
        del meta["files"]
        (out / "meta.json").write_text(json.dumps(meta))
    elif what == "unparsable meta":
        (out / "meta.json").write_text("{")
    elif what == "another study's folder":
        (out / "meta.json").write_text(json.dumps({**meta, "study": "gradient"}))


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """A run folder of the tiny study, written once; tests break copies of it."""
    out = tmp_path_factory.mktemp("whole") / "run"
    _main(out, "--size", 1000)
    return out


@pytest.fixture(scope="module")
def other_run(tmp_path_factory):
    """Another run of the tiny study (another seed)."""
    out = tmp_path_factory.mktemp("other") / "run"
    _main(out, "--size", 1000, "--seed", 1)
    return out


NOT_ITS_FILE = "is not the file its meta.json was written with"


@pytest.mark.parametrize(
    "what, message",
    [
        ("truncated arrays", f"arrays.npz' {NOT_ITS_FILE}"),
        ("missing config", "config.json' is missing"),
        ("unparsable config", f"config.json' {NOT_ITS_FILE}"),
        ("unparsable summary", f"summary.json' {NOT_ITS_FILE}"),
        ("missing summary", "summary.json' is missing"),
        ("empty summary", f"summary.json' {NOT_ITS_FILE}"),
        ("another run's config", f"config.json' {NOT_ITS_FILE}"),
        ("another run's summary", f"summary.json' {NOT_ITS_FILE}"),
        ("another study's arrays", f"arrays.npz' {NOT_ITS_FILE}"),
        ("another study's arrays, no meta", "meta.json' is missing"),
        ("missing meta", "meta.json' is missing"),
        ("meta without digests", "meta.json' holds no digest of config.json"),
        ("unparsable meta", "meta.json' is not valid JSON"),
        ("another study's folder", "meta.json' is a run of 'gradient', not of 'tiny'"),
    ],
)
def test_plot_only_on_a_bad_file_is_one_line_naming_it(
    tmp_path, capsys, whole_run, other_run, what, message
):
    out = tmp_path / "run"
    shutil.copytree(whole_run, out)
    _broken(out, what, other_run)
    before = {p.name: p.read_bytes() for p in out.glob("[!.]*")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        TINY["main"](["--out", str(out), "--plot-only"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"'{out}/" in err, err
    assert message in err, err
    assert {p.name: p.read_bytes() for p in out.glob("[!.]*")} == before
    assert _leftovers(out) == []


STUDIES = sorted(p.stem for p in (ROOT / "studies").glob("[!_]*.py"))


@pytest.mark.parametrize("what", ["another study's arrays, no meta", "empty summary"])
@pytest.mark.parametrize("study", STUDIES)
def test_every_study_refuses_a_foreign_or_damaged_folder_in_one_line(
    tmp_path, capsys, whole_run, other_run, study, what
):
    """The folder holds the tiny study's files, relabelled as a run of `study` where meta.json
    is kept: --plot-only names the folder and the file (exit 2), never a KeyError."""
    out = tmp_path / "run"
    shutil.copytree(whole_run, out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "study": study}))
    _broken(out, what, other_run)
    before = {p.name: p.read_bytes() for p in out.glob("[!.]*")}
    main = importlib.import_module(f"studies.{study}").main
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["--out", str(out), "--plot-only"])
    err = capsys.readouterr().err
    expected = "meta.json' is missing" if "no meta" in what else f"summary.json' {NOT_ITS_FILE}"
    assert e.value.code == 2 and err.count("\n") == 1 and f"'{out}/" in err, err
    assert expected in err, err
    assert {p.name: p.read_bytes() for p in out.glob("[!.]*")} == before


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", "1.5", str(2**32)])
def test_every_study_takes_the_same_seeds(capsys, seed):
    """A seed out of [0, 2^32 - 1] is one line naming --seed, the same in every study."""
    lines = []
    for study in ["gradient", "train_resnet"]:
        main = importlib.import_module(f"studies.{study}").main
        with pytest.raises(SystemExit) as e:
            main(["--seed", seed, "--quick"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "--seed" in err, err
        lines.append(err.replace(f"studies.{study}", "studies.NAME"))
    assert lines[0] == lines[1]


@pytest.mark.slow  # make test keeps the engine's store resume
def test_a_study_run_again_with_the_same_store_computes_no_sweep_again(tmp_path, monkeypatch):
    from sandbox import engine, results
    from studies import convex

    store = tmp_path / "store"
    convex.main(["--quick", "--out", str(tmp_path / "a"), "--store", str(store)])
    assert any(store.iterdir())

    def no_run(*args):
        return lambda *a: pytest.fail("a sweep was computed again")

    monkeypatch.setattr(engine, "_runner", no_run)
    convex.main(["--quick", "--out", str(tmp_path / "b"), "--store", str(store)])
    _, a, summary_a = results.load(tmp_path / "a", convex.Config)
    _, b, summary_b = results.load(tmp_path / "b", convex.Config)
    assert a.keys() == b.keys() and summary_a == summary_b
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ----------------------------------------------------------------------------- Ctrl-C


def _stage(out: Path, within_s: float = 60.0) -> Path:
    """The staging folder of the run into `out` once it exists (the run has its lock)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        staged = list(out.glob(".staging-*")) if out.exists() else []
        if staged:
            return staged[0]
        time.sleep(0.005)
    raise AssertionError(f"no run started in {out}")


def _interrupted(p: subprocess.Popen, out: Path) -> str:
    """Sends Ctrl-C (SIGINT) to the run `p`; checks the one line and exit 130; returns the
    folder's fate as the line gives it, which the folder must bear out."""
    p.send_signal(signal.SIGINT)
    stdout, err = p.communicate(timeout=60)
    assert p.returncode == 130 and stdout == "" and err.count("\n") == 1, (p.returncode, err)
    assert err in (f"interrupted; {out} unchanged\n", f"interrupted; {out} landed whole\n"), err
    return err.split()[-1]


@pytest.fixture(scope="module")
def run_of_seed_1(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed1") / "run"
    _main(out, "--seed", 1, "--size", 1000)
    return out


def test_ctrl_c_during_compute_is_one_line_and_leaves_the_folder_unchanged(tmp_path, run_of_seed_1):
    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    p = _tiny(out, "--seed", 2, "--wait", 30, capture=True)
    _stage(out)
    time.sleep(0.5)  # computing (it waits 30 s)
    assert _interrupted(p, out) == "unchanged"
    assert _one_run(out) == 1 and _cleaned(out), _leftovers(out)


def test_ctrl_c_during_the_save_is_one_line_and_the_folder_whole_either_way(
    tmp_path, run_of_seed_1
):
    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    p = _tiny(out, "--seed", 2, capture=True)  # 32 MiB of arrays: the save takes a while
    stage = _stage(out)
    while not (stage / "arrays.npz").exists() and p.poll() is None:
        time.sleep(0.002)
    fate = _interrupted(p, out)  # saving config.json, summary.json, meta.json, or the figure
    assert _one_run(out) == (1 if fate == "unchanged" else 2)
    assert _cleaned(out), _leftovers(out)


@pytest.fixture
def ctrl_c_as_from_a_terminal():
    """This process takes Ctrl-C as from a terminal during the test (see AS_FROM_A_TERMINAL)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _sigint_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # the KeyboardInterrupt comes first


@pytest.mark.parametrize("at", ["save", "landing"])
@pytest.mark.usefixtures("ctrl_c_as_from_a_terminal")
def test_ctrl_c_held_back_while_the_folder_lands(tmp_path, capsys, monkeypatch, run_of_seed_1, at):
    """A Ctrl-C while the new folder lands waits until it has landed; one during the save
    leaves the earlier run."""
    from sandbox import results

    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    if at == "save":
        monkeypatch.setattr(results, "write_json", _sigint_self)
    else:
        exchange = results._exchange

        def interrupted_exchange(a, b):
            os.kill(os.getpid(), signal.SIGINT)
            exchange(a, b)

        monkeypatch.setattr(results, "_exchange", interrupted_exchange)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _main(out, "--seed", 2, "--size", 1000)
    err = capsys.readouterr().err
    fate = "unchanged" if at == "save" else "landed whole"
    assert e.value.code == 130 and err == f"interrupted; {out} {fate}\n", err
    assert _one_run(out) == (1 if at == "save" else 2) and _cleaned(out), _leftovers(out)


@pytest.mark.usefixtures("ctrl_c_as_from_a_terminal")
def test_a_ctrl_c_that_code_swallowed_is_still_reported(
    tmp_path, capsys, monkeypatch, run_of_seed_1
):
    """A KeyboardInterrupt raised inside a finalizer (JAX's garbage-collection callback does
    this during a save) is only reported as "Exception ignored" and the run goes on: it
    lands, and the command still says so in one line, exit status 130."""
    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    compute = TINY["compute"]

    class Finalizer:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the KeyboardInterrupt comes here, inside __del__

    def swallowing(cfg):
        Finalizer()  # collected at once
        return compute(cfg)

    monkeypatch.setitem(TINY, "compute", swallowing)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _main(out, "--seed", 2, "--size", 1000)
    err = capsys.readouterr().err
    assert e.value.code == 130 and err == f"interrupted; {out} landed whole\n", err
    assert _one_run(out) == 2 and _cleaned(out), _leftovers(out)


# ----------------------------------------------------------------------------- --out


def test_a_linked_out_lands_in_its_target_and_the_link_stays(tmp_path, run_of_seed_1):
    real = tmp_path / "a" / "run"
    shutil.copytree(run_of_seed_1, real)
    (tmp_path / "b").mkdir()
    link = tmp_path / "b" / "link"
    link.symlink_to(Path("..") / "a" / "run")
    p = _tiny(link, "--seed", 2, "--size", 1000, capture=True)
    _, err = p.communicate()
    assert p.returncode == 0 and err == "", err
    assert link.is_symlink() and os.readlink(link) == str(Path("..") / "a" / "run")
    assert _one_run(real) == 2
    assert _leftovers(real) == [] and [p.name for p in (tmp_path / "b").iterdir()] == ["link"]
    # --plot-only through the link reads the run it points to; a dangling link is created.
    _main(link, "--plot-only")
    assert _one_run(real) == 2 and _leftovers(real) == []
    dangling = tmp_path / "b" / "dangling"
    dangling.symlink_to(tmp_path / "c" / "run")
    _main(dangling, "--seed", 3, "--size", 1000)
    assert dangling.is_symlink() and _one_run(tmp_path / "c" / "run") == 3


def test_what_older_versions_left_beside_a_linked_out_is_removed(tmp_path, run_of_seed_1):
    real = tmp_path / "run"
    shutil.copytree(run_of_seed_1, real)
    link = tmp_path / "link"
    link.symlink_to(real)
    (tmp_path / ".link.next-abc123").symlink_to(real)  # the link an older version moved aside
    _main(link, "--seed", 2, "--size", 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "run"]
    assert _one_run(real) == 2


def test_a_folder_whose_parent_cannot_be_written_lands_in_place(
    tmp_path, monkeypatch, run_of_seed_1
):
    """Where no folder can be built beside `out` (a read-only parent), the files land inside
    it through a journal: the same whole folder."""
    from sandbox import results

    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    (out / "stale.png").write_bytes(b"from an older run")
    (out / "checkpoints").mkdir()
    mkdtemp = results.tempfile.mkdtemp

    def read_only_parent(*args, dir=None, **kwargs):
        if Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied", str(dir))
        return mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(results.tempfile, "mkdtemp", read_only_parent)
    assert results.RunFolder(out).in_place
    _main(out, "--seed", 2, "--size", 1000)
    assert _one_run(out) == 2 and _leftovers(out) == []
    assert not (out / "stale.png").exists() and (out / "checkpoints").is_dir()


def test_a_landing_in_place_that_fails_midway_is_carried_out(tmp_path, monkeypatch, run_of_seed_1):
    """A rename that fails once while the files land in place: the run's error goes up, and
    the landing, already committed by its journal, is carried out to its end."""
    from sandbox import results

    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    monkeypatch.setattr(results, "_can_build_beside", lambda folder: False)
    replace, calls = os.replace, []

    def fails_once(src, dst):
        if Path(src).parent.name.startswith(".staging-") and Path(dst).parent == out:
            calls.append(dst)  # a file landing
            if len(calls) == 3:
                raise OSError(5, "Input/output error", str(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", fails_once)
    with pytest.raises(OSError, match="Input/output error"):
        _main(out, "--seed", 2, "--size", 1000)
    monkeypatch.undo()
    assert len(calls) > 3 and _one_run(out) == 2 and _leftovers(out) == []


def _landing_left(tmp_path: Path, run_of_seed_1: Path, moved: int) -> tuple[Path, Path]:
    """A run folder as a run killed while landing in place leaves it: seed 1's files, the
    journal, and seed 2's staged files of which the first `moved` already landed."""
    from sandbox import results

    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    new = tmp_path / "new"
    _main(new, "--seed", 2, "--size", 1000)
    stage = out / ".staging-1-abcd"
    stage.mkdir()
    for p in new.glob("[!.]*"):
        shutil.copy(p, stage / p.name)
    (out / "old.png").write_bytes(b"seed 1's figure")
    (out / results.LANDING).write_text(json.dumps({"stage": stage.name, "drop": ["old.png"]}))
    for name in sorted(os.listdir(stage))[:moved]:
        os.replace(stage / name, out / name)
    return out, stage


@pytest.mark.parametrize("moved", [0, 3, 6])
def test_a_landing_cut_short_is_finished_by_the_next_run_or_the_watcher(
    tmp_path, run_of_seed_1, moved
):
    from sandbox import results

    out, stage = _landing_left(tmp_path, run_of_seed_1, moved)
    if moved == 3:  # the dead run's watcher finishes it
        watcher = results._start_watcher(out, stage)
        watcher.stdin.close()
        assert watcher.wait(timeout=30) == 0
    else:  # the next run, before it starts
        with results.RunFolder(out):
            pass
    assert _one_run(out) == 2 and _leftovers(out) == [] and not (out / "old.png").exists()


# ----------------------------------------------------------------------------- disk full


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def test_a_full_disk_is_one_line_and_keeps_the_earlier_run(
    tmp_path, capsys, monkeypatch, run_of_seed_1
):
    """Simulated here (every fsync fails as on a full disk); test_run_folders_mounts.py fills a
    real one."""
    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    monkeypatch.setattr(os, "fsync", _disk_full)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _main(out, "--seed", 2, "--size", 1000)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: no space left on the device of '{out}': the new run needs")
    assert err.endswith(" free; the earlier run in it is unchanged\n"), err
    assert _one_run(out) == 1 and _leftovers(out) == []


def test_a_full_disk_elsewhere_names_that_folder(tmp_path, capsys, monkeypatch, run_of_seed_1):
    """A store (or another folder) on a full disk: the line names it, and the run folder."""
    out = tmp_path / "run"
    shutil.copytree(run_of_seed_1, out)
    store = tmp_path / "store"
    store.mkdir()

    def compute(cfg):
        raise OSError(28, "No space left on device", str(store / "x" / "c" / "0"))

    monkeypatch.setitem(TINY, "compute", compute)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _main(out, "--seed", 2)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(
        f"error: no space left on the device of '{store / 'x' / 'c'}': the new run needs more "
        "than the "
    ), err
    assert err.endswith(f" free; the earlier run in '{out}' is unchanged\n"), err
    assert _one_run(out) == 1 and _leftovers(out) == []
