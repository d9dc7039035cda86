"""studies/mode_connectivity in --quick mode: the curve against the line, recomputed statistics.

The quick run trains four ResNet-8 and compiles their evaluations (minutes on 2 busy cores):
its tests are `slow` (make test-all); tests/test_connect.py checks the same claim, a trained
curve below the line's barrier, on a problem of two parameters in make test.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sandbox import data
from sandbox.models import resnet
from studies import mode_connectivity as mc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mc")
    # One config field set from the command line (the preset's plane is 3 x 3).
    mc.main(["--quick", "--out", str(folder), "--no-progress", "--grid", "2"])
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, summary, arrays


@pytest.mark.slow
def test_quick_run_writes_both_pairs_and_the_figures(run):
    folder, summary, arrays = run
    for s in mc.QUICK.shortcuts:
        for part in ("ends", "line", "curve", "barrier_ratio_curve_to_line"):
            assert part in summary[s], (s, part)
        assert arrays[f"{s}/plane_train_loss"].shape == (2, 2)
        assert (folder / "networks" / f"{s}-seed0" / "checkpoints").is_dir()
    for f in ("paths.png", "plane.png"):
        assert (folder / f).stat().st_size > 10_000, f
    assert json.loads((folder / "config.json").read_text())["grid"] == 2


@pytest.mark.slow
def test_line_and_curve_share_their_ends(run):
    _, _, arrays = run
    # phi(0) = w1 and phi(1) = w2 exactly, so both paths evaluate the same two networks
    # (through two compiled programs: equal to float32 rounding, rtol 1e-5).
    for s in mc.QUICK.shortcuts:
        for name in mc.METRICS:
            line, curve = arrays[f"{s}/line_{name}"], arrays[f"{s}/curve_{name}"]
            np.testing.assert_allclose(curve[[0, -1]], line[[0, -1]], rtol=1e-5)
        xy = arrays[f"{s}/curve_xy"]
        np.testing.assert_allclose(xy[0], [0, 0], atol=1e-9)
        np.testing.assert_allclose(xy[-1], arrays[f"{s}/points_xy"][1], rtol=1e-9)


@pytest.mark.slow
def test_the_trained_curve_lowers_the_barrier(run):
    _, summary, _ = run
    # Garipov et al. 2018: where the line crosses a barrier, the trained curve's is lower
    # (after the quick run's 30 bend steps). The no-shortcut pair has one even in --quick.
    with_barrier = [
        s for s in mc.QUICK.shortcuts if summary[s]["line"]["train_loss_barrier"] > 0.05
    ]
    assert "none" in with_barrier
    for s in with_barrier:
        assert summary["claims"][f"{s}_curve_barrier_below_line"], s
        assert summary[s]["barrier_ratio_curve_to_line"] < 0.9, s


@pytest.mark.slow
def test_recomputed_statistics_are_the_training_sets_own():
    # Evaluating with the statistics metrics_fn recomputes equals a training-mode forward
    # pass over the whole training set (which normalizes by that set's batch statistics),
    # computed here directly: the same loss to float32 rounding (rtol 1e-5).
    ds = mc.subset(data.digits_dataset(), 128)
    model = resnet.ResNet(depth=8, shortcut="A", num_classes=10)
    v = model.init(jax.random.key(3), jnp.asarray(ds.x_train[:1]))
    params = jax.tree.map(lambda a: a + 0.05, v["params"])  # any point, not the init
    got = jax.jit(mc.metrics_fn(model, ds))(params)
    logits, _ = model.apply(
        {"params": params, "batch_stats": v["batch_stats"]},
        jnp.asarray(ds.x_train),
        train=True,
        mutable=["batch_stats"],
    )
    want = optax.softmax_cross_entropy_with_integer_labels(logits, ds.y_train).mean()
    np.testing.assert_allclose(got["train_loss"], want, rtol=1e-5)


@pytest.mark.parametrize("epochs", ["0", "99999999999999999999"])
def test_bad_command_line_is_one_line(tmp_path, capsys, epochs):
    # Every count has a bound a run can reach: 10^20 epochs once trained without end.
    with pytest.raises(SystemExit) as e:
        mc.main(["--quick", "--out", str(tmp_path), "--epochs", epochs])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`--epochs` must be an integer in [1, 10000]" in err[0], err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data-dir", "/tmp"], "`--data-dir` is the CIFAR-10 folder, for `--data cifar10` only"),
        (["--data", "digits", "--data-dir", "/no/such"], "only, not `--data digits`"),
    ],
)
def test_a_data_folder_with_another_data_set_is_refused(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        mc.main(["--quick", "--out", str(tmp_path), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not any(tmp_path.iterdir())
