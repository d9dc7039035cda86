"""Run folders on real mounts: a full disk (a 3 MiB tmpfs), a mount point as --out, a
read-only parent. Mounting needs root (as in CI); elsewhere these tests are skipped."""

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_run_folders import TINY, _cleaned, _leftovers, _main, _one_run, _tiny


@pytest.fixture
def mount(tmp_path):
    """mount(path, size="3m", options=()) mounts a tmpfs at `path`; all unmounted after."""
    mounted = []

    def mount(path: Path, size: str = "3m", options: tuple[str, ...] = ()) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        opts = ",".join([f"size={size}", *options])
        try:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                capture_output=True,
                text=True,
            )
        except OSError as e:
            pytest.skip(f"cannot mount a tmpfs here ({e})")
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not permitted'})")
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def _fill(disk: Path, leave: int) -> None:
    """Fills `disk` until about `leave` bytes are free."""
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    assert shutil.disk_usage(disk).free <= leave + 4096


def _sizes(line: str) -> tuple[float, float]:
    """(needed, free) in bytes from a disk-full line."""
    unit = {"bytes": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    m = re.search(r"needs at least ([\d.]+) (\w+), ([\d.]+) (\w+) free", line)
    assert m, line
    return float(m[1]) * unit[m[2]], float(m[3]) * unit[m[4]]


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.glob("[!.]*")}


def test_a_study_on_a_full_disk_is_one_line_and_keeps_the_earlier_run(tmp_path, mount):
    disk = mount(tmp_path / "disk")
    out = disk / "run"
    _main(out, "--seed", 1, "--size", 100_000)  # 0.75 MB of arrays
    before = _files(out)
    _fill(disk, leave=200_000)
    p = _tiny(out, "--seed", 2, "--size", 100_000, capture=True)
    stdout, err = p.communicate()
    assert p.returncode == 2 and stdout == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: no space left on the device of '{out}': the new run needs")
    assert err.endswith("; the earlier run in it is unchanged\n"), err
    needed, free = _sizes(err)
    assert needed > free and 0 <= free <= 210_000 and needed >= 750_000, err
    assert _files(out) == before and _one_run(out) == 1 and _leftovers(out) == []


def test_plot_only_on_a_full_disk_is_one_line_and_keeps_the_run(tmp_path, mount, capsys):
    disk = mount(tmp_path / "disk")
    out = disk / "run"
    _main(out, "--seed", 1, "--size", 1000)
    before = _files(out)
    _fill(disk, leave=0)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _main(out, "--plot-only")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: no space left on the device of '{out}'"), err
    assert err.endswith("; the earlier run in it is unchanged\n"), err
    assert _files(out) == before and _leftovers(out) == []


# The tiny study with a batched computation, so that --store writes chunks.
STORE_STUDY = """
import dataclasses
import numpy as np
from sandbox import cli, engine

@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = 0

def one(x, shared):
    return {"y": x * 2.0}

def compute(cfg):
    x = np.random.default_rng(cfg.seed).random((4000, 64), np.float32)  # 1 MB, incompressible
    out = engine.map_chunks(one, x, chunk=500, progress=False)
    return {"y": out["y"]}, {"seed": cfg.seed}

@cli.command
def main(argv=None):
    args = cli.study_parser("store_tiny").parse_args(argv)
    cli.run_study("store_tiny", args, Config(), compute, lambda a, c, s: {})
"""


def test_a_store_on_a_full_disk_is_one_line_naming_it(tmp_path, mount, capsys):
    study = {}
    exec(STORE_STUDY, study)
    out = tmp_path / "run"  # on a disk with room
    study["main"](["--out", str(out), "--seed", "1"])
    before = _files(out)
    disk = mount(tmp_path / "disk")
    _fill(disk, leave=300_000)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        study["main"](["--out", str(out), "--seed", "2", "--store", str(disk / "store")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    # The line names the store (the engine may say it itself, before any chunk is computed).
    assert f"'{disk}/store" in err and "no space left on" in err.lower(), err
    assert _files(out) == before and _leftovers(out) == []


def test_a_mount_point_out_lands_inside_it(tmp_path, mount):
    out = mount(tmp_path / "mnt", size="16m")
    _main(out, "--seed", 1, "--size", 1000)
    (out / "stale.png").write_bytes(b"an older run's figure")
    _main(out, "--seed", 2, "--size", 1000)
    assert os.path.ismount(out) and _one_run(out) == 2 and _leftovers(out) == []
    assert not (out / "stale.png").exists()
    _main(out, "--plot-only")
    assert _one_run(out) == 2 and _leftovers(out) == []


def test_a_read_only_parent(tmp_path, mount, capsys, monkeypatch):
    """An --out mounted in a read-only folder lands inside it; one that cannot be created or
    written there is one line, before any work."""
    parent = mount(tmp_path / "ro", size="1m")
    (parent / "mnt").mkdir()
    (parent / "plain").mkdir()
    _remount_read_only(parent)
    out = mount(parent / "mnt", size="16m")
    _main(out, "--seed", 1, "--size", 1000)
    _main(out, "--seed", 2, "--size", 1000)
    assert _one_run(out) == 2 and _leftovers(out) == []

    def no_work(cfg):
        raise AssertionError("computed before refusing --out")

    monkeypatch.setitem(TINY, "compute", no_work)
    for bad in [parent / "missing", parent / "plain"]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            _main(bad, "--seed", 3)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert f"`--out` must be a writable folder, got '{bad}'" in err, err
    assert not (parent / "missing").exists() and not any((parent / "plain").iterdir())


@pytest.mark.slow  # five runs of the tiny study; test_run_folders.py kills exchanged folders
def test_a_run_into_a_mount_point_killed_at_any_moment_leaves_one_whole_run(tmp_path, mount):
    out = mount(tmp_path / "mnt", size="256m")
    assert _tiny(out, "--seed", 1).wait() == 0
    start = time.monotonic()
    assert _tiny(tmp_path / "timing", "--seed", 2).wait() == 0
    total = time.monotonic() - start
    seen = set()
    for i in range(3):
        p = _tiny(out, "--seed", 2)
        time.sleep(total * (0.6 + 0.4 * i / 3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        # A landing cut short by the kill is finished by the run's watcher (meanwhile
        # results.load would refuse the mixed files by their digests).
        assert _cleaned(out), _leftovers(out)
        seen.add(_one_run(out))
        assert seen <= {1, 2}
    assert _tiny(out, "--seed", 3).wait() == 0
    assert _one_run(out) == 3 and _leftovers(out) == []
