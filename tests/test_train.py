"""Training: schedules, config checks, the metrics log, checkpoints kept, resume to the same
parameters after an interruption anywhere, and checkpoints that must not be loaded."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from sandbox import checkpoints, data, train
from sandbox.models.resnet import ResNet

ROOT = Path(__file__).parents[1]
MODEL = ResNet(depth=8, num_classes=4)
CFG = train.TrainConfig(epochs=3, batch_size=16, lr=0.05, eval_batch_size=32)


@pytest.fixture(scope="module", autouse=True)
def quick_compile():
    """XLA's optimizations take most of the compile time of this small network; runs stay
    deterministic without them, which is all the resume tests compare."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic(64, 32, shape=(8, 8, 1), num_classes=4, seed=0)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted run of CFG."""
    folder = tmp_path_factory.mktemp("reference")
    state, hist = train.fit(MODEL, tiny, CFG, workdir=folder, progress=False, keep_epochs=(0,))
    return folder, state, hist


def _assert_same_state(a, b):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def _assert_same_history(a, b):
    for k in a._fields:
        if k != "epoch_s_E":
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


class Interrupt(Exception):
    pass


def _interrupt_at(epoch, step):
    def callback(e, i):
        if (e, i) == (epoch, step):
            raise Interrupt

    return callback


# ----------------------------------------------------------------------------- pieces


def test_schedules():
    cos = train.make_schedule(train.TrainConfig(epochs=10, lr=0.1), 10)
    np.testing.assert_allclose([cos(0), cos(50), cos(100)], [0.1, 0.05, 0.0], atol=1e-7)
    step = train.make_schedule(train.TrainConfig(epochs=4, lr=0.1, schedule="step"), 25)
    np.testing.assert_allclose(
        [step(0), step(49), step(50), step(74), step(75)], [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6
    )
    warm = train.make_schedule(
        train.TrainConfig(epochs=4, lr=0.2, schedule="constant", warmup_epochs=1), 10
    )
    np.testing.assert_allclose(
        [warm(0), warm(5), warm(10), warm(39)], [0, 0.1, 0.2, 0.2], atol=1e-7
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "`epochs` must be an integer >= 1, got 0"),
        ({"batch_size": 1.5}, "`batch_size`"),
        ({"optimizer": "sgdd"}, "unknown optimizer 'sgdd'; known: adagrad"),
        ({"schedule": "linear"}, "`schedule` must be one of cosine, step, constant"),
        ({"lr": -1.0}, "`lr` must be positive"),
        ({"lr": float("nan")}, "`lr` must be finite"),
        ({"momentum": 1.0}, "`momentum` must be in"),
        ({"weight_decay": -1e-4}, "`weight_decay` must be non-negative"),
        ({"warmup_epochs": 3, "epochs": 3}, "`warmup_epochs`"),
    ],
)
def test_bad_config_is_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**kwargs)


def test_batch_larger_than_the_data_set(tiny, tmp_path):
    cfg = train.TrainConfig(epochs=1, batch_size=100)
    with pytest.raises(ValueError, match="`batch_size` 100 is larger than the training set"):
        train.fit(MODEL, tiny, cfg, workdir=tmp_path, progress=False)
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


# ----------------------------------------------------------------------------- a run


def test_fit_logs_every_epoch_and_keeps_the_chosen_checkpoints(reference, tiny):
    folder, state, hist = reference
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["step"] == 3 * 4
    assert {"lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_s"} <= set(rows[0])
    np.testing.assert_array_equal(hist.test_acc_E, [r["test_acc"] for r in rows])
    assert hist.train_loss_E[-1] < hist.train_loss_E[0]
    assert int(state["step"]) == 12
    # keep_last=3 keeps 1, 2, 3; keep_epochs keeps the initialization.
    assert sorted(int(p.name) for p in (folder / "checkpoints").iterdir() if p.name.isdigit()) == [
        0,
        1,
        2,
        3,
    ]
    saved, meta = checkpoints.load_checkpoint(folder / "checkpoints")
    assert meta["epoch"] == 3 and meta["run"]["model"]["depth"] == 8
    for k in ("step", "params", "batch_stats"):  # opt_state comes back as plain lists
        _assert_same_state(saved[k], state[k])
    init, _ = checkpoints.load_checkpoint(folder / "checkpoints", 0)
    assert int(init["step"]) == 0


def test_any_optimizer_of_sandbox_optim(tiny, tmp_path):
    cfg = train.TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-3, schedule="step")
    state, hist = train.fit(MODEL, tiny, cfg, workdir=tmp_path, progress=False)
    assert int(state["step"]) == 2 and np.isfinite(hist.train_loss_E).all()


@pytest.mark.parametrize(
    "epoch, step",
    [
        (1, 0),
        pytest.param(2, 2, marks=pytest.mark.slow),
        pytest.param(3, 3, marks=pytest.mark.slow),
    ],
)
def test_an_interrupted_run_resumes_to_the_same_parameters(reference, tiny, tmp_path, epoch, step):
    _, ref_state, ref_hist = reference
    with pytest.raises(Interrupt):
        train.fit(
            MODEL, tiny, CFG, workdir=tmp_path, progress=False, callback=_interrupt_at(epoch, step)
        )
    state, hist = train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False)
    _assert_same_state(state, ref_state)
    _assert_same_history(hist, ref_hist)


def test_killed_between_log_line_and_checkpoint(reference, tiny, tmp_path, monkeypatch):
    _, ref_state, ref_hist = reference
    real_save = checkpoints.Checkpoints.save

    def save(self, epoch, state, identity):
        if epoch == 2:
            raise Interrupt
        real_save(self, epoch, state, identity)

    monkeypatch.setattr(checkpoints.Checkpoints, "save", save)
    with pytest.raises(Interrupt):
        train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False)
    monkeypatch.undo()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "trai')  # and a line cut short
    state, hist = train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False)
    _assert_same_state(state, ref_state)
    _assert_same_history(hist, ref_hist)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_finished_run_is_reloaded_without_training(reference, tiny):
    folder, ref_state, ref_hist = reference

    def fail(epoch, step):
        raise AssertionError("trained again")

    state, hist = train.fit(MODEL, tiny, CFG, workdir=folder, progress=False, callback=fail)
    _assert_same_state(state, ref_state)
    _assert_same_history(hist, ref_hist)


def test_reload_reads_the_same_finished_run_and_writes_nothing(reference, tiny, tmp_path):
    folder, ref_state, ref_hist = reference
    before = _snapshot(folder)
    state, hist = train.reload(MODEL, tiny, CFG, folder, keep_epochs=(0,))
    _assert_same_state(state, ref_state)
    _assert_same_history(hist, ref_hist)
    # Not this run, or not all of it: None, and the caller trains its own.
    longer = train.TrainConfig(**{**CFG.__dict__, "epochs": 5})
    assert train.reload(MODEL, tiny, longer, folder) is None
    assert train.reload(ResNet(depth=14, num_classes=4), tiny, CFG, folder) is None
    assert train.reload(MODEL, tiny, CFG, tmp_path / "absent") is None
    assert _snapshot(folder) == before
    pruned = tmp_path / "pruned"
    shutil.copytree(folder, pruned)
    shutil.rmtree(pruned / "checkpoints" / "1")  # as a run with keep_last=2 leaves it
    assert train.reload(MODEL, tiny, CFG, pruned, keep_epochs=(0,)) is not None
    assert train.reload(MODEL, tiny, CFG, pruned, keep_epochs=(0, 1)) is None
    with pytest.raises(Interrupt):  # an unfinished run
        train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False, callback=_interrupt_at(3, 0))
    assert train.reload(MODEL, tiny, CFG, tmp_path) is None


def test_a_half_written_checkpoint_is_ignored(reference, tiny, tmp_path):
    _, ref_state, _ = reference
    with pytest.raises(Interrupt):
        train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False, callback=_interrupt_at(3, 0))
    # What a save killed half way leaves: a temporary folder that was never renamed.
    tmp = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "manifest.ocdbt").write_bytes(b"\x00" * 10)
    state, _ = train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False)
    _assert_same_state(state, ref_state)
    assert not tmp.exists()


# ----------------------------------------------------------------------------- refusals


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_of_another_model_is_refused(reference, tiny, tmp_path):
    with pytest.raises(Interrupt):
        train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False, callback=_interrupt_at(2, 0))
    before = _snapshot(tmp_path)
    other = ResNet(depth=14, num_classes=4)
    with pytest.raises(ValueError, match=r"from a different run \(model.depth=8 there, 14 here\)"):
        train.fit(other, tiny, CFG, workdir=tmp_path, progress=False)
    longer = train.TrainConfig(**{**CFG.__dict__, "epochs": 5})
    with pytest.raises(ValueError, match="train.epochs=3 there, 5 here"):
        train.fit(MODEL, tiny, longer, workdir=tmp_path, progress=False)
    other_data = data.synthetic(64, 32, shape=(8, 8, 1), num_classes=4, seed=1)
    with pytest.raises(ValueError, match="data.sha256="):
        train.fit(MODEL, other_data, CFG, workdir=tmp_path, progress=False)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_corrupt_checkpoint_is_never_loaded_and_never_overwritten(
    reference, tiny, tmp_path, damage
):
    with pytest.raises(Interrupt):
        train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False, callback=_interrupt_at(3, 0))
    latest = tmp_path / "checkpoints" / "2" / "state"
    files = sorted((p for p in latest.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)
    victim = files[0]  # the largest file: array data
    raw = bytearray(victim.read_bytes())
    if damage == "flip":
        for i in range(len(raw) // 2, len(raw) // 2 + 64):
            raw[i] ^= 0xFF
        victim.write_bytes(bytes(raw))
    elif damage == "truncate":
        victim.write_bytes(bytes(raw[: len(raw) // 3]))
    else:
        victim.unlink()
    before = _snapshot(tmp_path / "checkpoints")
    with pytest.raises(ValueError, match=r"checkpoint '.*checkpoints/2' is corrupt") as e:
        train.fit(MODEL, tiny, CFG, workdir=tmp_path, progress=False)
    assert "\n" not in str(e.value)
    # A reader without the model (the landscape study's PCA path) is refused alike.
    with pytest.raises(ValueError, match=r"checkpoint '.*checkpoints/2' is corrupt") as e:
        checkpoints.load_checkpoint(tmp_path / "checkpoints", 2)
    assert "\n" not in str(e.value)
    assert _snapshot(tmp_path / "checkpoints") == before


# ----------------------------------------------------------------------------- a real kill

_SCRIPT = """
import sys
import jax
jax.config.update("jax_disable_most_optimizations", True)
from sandbox import data, train
from sandbox.models.resnet import ResNet
tiny = data.synthetic(64, 32, shape=(8, 8, 1), num_classes=4, seed=0)
cfg = train.TrainConfig(epochs=6, batch_size=16, lr=0.05, eval_batch_size=32)
state, _ = train.fit(ResNet(depth=8, num_classes=4), tiny, cfg, workdir=sys.argv[1], progress=False)
train.results.write_arrays(sys.argv[2], {"/".join(map(str, k)): v for k, v in
    jax.tree_util.tree_flatten_with_path(jax.device_get(state["params"]))[0]})
"""


@pytest.mark.slow
def test_sigkill_then_the_same_command_ends_with_the_same_parameters(tmp_path):
    def command(workdir, out):
        return [sys.executable, "-c", _SCRIPT, str(workdir), str(out)]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(
        command(tmp_path / "whole", tmp_path / "whole.npz"), env=env, check=True, cwd=ROOT
    )
    run = tmp_path / "killed"
    proc = subprocess.Popen(command(run, tmp_path / "killed.npz"), env=env, cwd=ROOT)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "3").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.npz").exists()
    subprocess.run(command(run, tmp_path / "killed.npz"), env=env, check=True, cwd=ROOT)
    with np.load(tmp_path / "whole.npz") as a, np.load(tmp_path / "killed.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
