"""Shared test settings: strict rank promotion, a PRNG key fixture, runs on N devices, a tiny
CIFAR-10 folder, train_resnet's quick pair, and how pytest-xdist shares out the files."""

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sandbox import data, devices

devices.use_all_cores()  # as the study commands do: one CPU device per core
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


# ----------------------------------------------------------------------------- scheduling

# `make test` runs files on two workers, a file at a time (`--dist loadfile`), so that a
# file's module fixtures are computed once. Files that share a session fixture form one unit
# (one worker, one computation), and the longest units start first: with two workers, a long
# file started last would leave one worker idle while it runs.
SHARED = {
    "tests/test_study_train_resnet.py": "resnet pair",
    "tests/test_study_resnet_landscape.py": "resnet pair",
}
LONGEST_FIRST = (
    "resnet pair",  # under `make test-all`; `make test` keeps only its one-line error checks
    "tests/test_run_folders.py",
    "tests/test_hessian.py",
    "tests/test_explore.py",
    "tests/test_sweep.py",
    "tests/test_landscapes.py",
    "tests/test_surface.py",
    "tests/test_train.py",
    "tests/test_study_initialization.py",
    "tests/test_sharpness.py",
    "tests/test_resnet.py",
    "tests/test_explore_page.py",
    "tests/test_sweep_jobs.py",
    "tests/test_studies.py",
)


def _unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return SHARED.get(path, path)


def pytest_collection_modifyitems(config, items):
    rank = {u: i for i, u in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))  # stable


with contextlib.suppress(ImportError):  # xdist is a dev dependency; plain pytest runs too
    from xdist.scheduler import LoadFileScheduling

    class _SharedFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") == "loadfile":
            config.option.loadscopereorder = False  # keep LONGEST_FIRST's order
            return _SharedFileScheduling(config, log)
        return None


# Files whose checks are numbers against theory or an independent reference with written
# tolerances (eigh, closed forms, recurrences, the library's own other path), and whose time
# goes into compiling many small programs: they run with XLA's optimizations off, which
# take most of the compile time (as flax's example tests do). The flag is not part of JAX's
# compilation cache key in memory, so the caches are cleared after each such file: no later
# file runs a program compiled without optimizations.
FAST_COMPILE = {
    "test_calculus",
    "test_explore",
    "test_flows",
    "test_fractal",
    "test_hessian",
    "test_landscapes",
    "test_mlp",
    "test_optim",
    "test_precision",
    "test_sharpness",
    "test_studies",
    "test_study_initialization",
    "test_study_learning_rate",
    "test_study_normalization",
    "test_study_saddle",
    "test_surface",
}


@pytest.fixture(scope="module", autouse=True)
def _fast_compile(request):
    if request.module.__name__.rsplit(".", 1)[-1] not in FAST_COMPILE:
        yield
        return
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)
        jax.clear_caches()


@pytest.fixture(scope="session")
def resnet_pair(tmp_path_factory):
    """train_resnet's quick run (ResNet-8 with shortcut A and without), trained once for the
    train_resnet and resnet_landscape tests (one scheduling unit, `SHARED`). Tests that
    write into a run folder work on a copy."""
    from studies import train_resnet

    out = tmp_path_factory.mktemp("resnet_pair")
    train_resnet.main(["--quick", "--out", str(out), "--no-progress"])
    return out


def run_on_devices(script: str, count: int, out: Path) -> dict:
    """Runs `script` (which saves an .npz to sys.argv[1]) in a fresh Python with `count`
    simulated CPU devices (XLA reads the flag at start-up) and returns what it saved."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
    subprocess.run(
        [sys.executable, "-c", script, str(out)],
        env=env,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return dict(np.load(out))


# ----------------------------------------------------------------------------- CIFAR-10


def _write_batch(path, images_Nx32x32x3, labels, *, protocol=2):
    """A batch file in the format of cifar-10-python.tar.gz: a pickled dict with uint8
    rows of 3072 bytes (the red plane, then green, then blue) and a list of labels."""
    rows = images_Nx32x32x3.transpose(0, 3, 1, 2).reshape(len(labels), 3072)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in labels],
        b"data": rows,
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)


@pytest.fixture
def tiny_cifar(tmp_path):
    """A cifar-10-batches-py folder with 5 x 4 training and 3 test images."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for i, name in enumerate((*data.CIFAR10_TRAIN, data.CIFAR10_TEST)):
        n = 3 if name == data.CIFAR10_TEST else 4
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = (np.arange(n) + i) % 10
        _write_batch(folder / name, x, y)
        images[name] = (x, y)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in data.CIFAR10_CLASSES]}, f, protocol=2)
    return folder, images
