"""studies/edge_of_stability in --quick mode: sharpness against the stability thresholds."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sandbox import hessian, results
from studies import edge_of_stability as eos

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eos")
    # One config field set from the command line (the preset checks every 10 updates). The
    # run is four XLA compiles (GD, flow, momentum, Adam), each several times its compute: one
    # GD learning rate (the preset's larger, 0.15) over the flow's 600 steps gives GD the
    # flow's shapes, so the two share one compiled program.
    eos.main(
        ["--quick", "--out", str(folder), "--every", "20", "--gd-lrs", "0.15", "--steps", "600"]
    )
    cfg, arrays, summary = results.load(folder, eos.Config)
    return folder, cfg, summary, arrays


@pytest.mark.slow  # the run, about 16 s: make quick runs it; test_sharpness, test_flows stay
def test_quick_run_writes_one_entry_per_run_and_the_figures(run):
    folder, cfg, summary, arrays = run
    assert json.loads((folder / "config.json").read_text())["every"] == 20
    np.testing.assert_array_equal(arrays["gd_steps"], np.arange(0, cfg.steps + 1, 20))
    runs = {f"gd_{lr:g}" for lr in cfg.gd_lrs} | {"flow", "momentum", "adam"}
    assert runs <= set(summary)
    for key in runs:
        for field in (
            "threshold",
            "first_crossing_step",
            "sharpness_plateau",
            "plateau_ratio",
            "loss_rise_share",
            "final_loss",
            "final_accuracy",
        ):
            assert field in summary[key], (key, field)
    for f in ("gd.png", "flow.png", "momentum_adam.png"):
        assert (folder / f).stat().st_size > 10_000, f


@pytest.mark.slow  # the run, about 16 s: make quick runs it; test_sharpness, test_flows stay
def test_thresholds_are_those_of_the_papers(run):
    _, cfg, s, _ = run
    # Cohen et al. 2021: 2 / lr; heavy ball (2 + 2 beta) / lr; Cohen et al. 2022, Adam with
    # b1 = 0.9: 38 / lr.
    assert s["gd_0.15"]["threshold"] == pytest.approx(2 / 0.15)
    assert s["momentum"]["threshold"] == pytest.approx(3.8 / cfg.momentum_lr)
    assert s["adam"]["threshold"] == pytest.approx(38 / cfg.adam_lr)


@pytest.mark.slow  # the run, about 16 s: make quick runs it; test_sharpness, test_flows stay
def test_initial_sharpness_is_the_hessian_top_eigenvalue_and_below_every_threshold(run):
    _, cfg, s, arrays = run
    # An independent computation of lambda_max at the initial parameters: hessian.top_eigenvalues
    # (its own Lanczos run, 40 steps, another start) agrees with the tracked value at step 0
    # to float32 Lanczos accuracy (rtol 1e-4).
    loss, params, _ = eos.problem(cfg)
    lam = hessian.top_eigenvalues(
        lambda p: loss(p)[0], params, 1, key=jax.random.key(7), num_iters=40
    )
    np.testing.assert_allclose(arrays["gd_sharpness"][:, 0], float(lam[0]), rtol=1e-4)
    assert s["claims"]["initial_sharpness_below_threshold"]


@pytest.mark.slow  # the run, about 16 s: make quick runs it; test_sharpness, test_flows stay
def test_gd_and_adam_hover_at_their_thresholds(run):
    _, cfg, s, arrays = run
    lo, hi = eos.PLATEAU_BAND
    # The largest GD step and Adam reach the edge within the run's steps, and then
    # stay within [0.9, 1.15] of the threshold (Cohen et al.: at or just above it).
    for key in ("gd_0.15", "adam"):
        assert s[key]["first_crossing_step"] is not None, key
        assert lo <= s[key]["plateau_ratio"] <= hi, (key, s[key]["plateau_ratio"])
    # At the edge the loss falls non-monotonically; below it (the flow) it never rises.
    assert s["gd_0.15"]["loss_rise_share"] > 0.02
    assert s["flow"]["loss_rise_share"] == 0
    # ... and still falls overall: at least halved over the run.
    i = list(cfg.gd_lrs).index(0.15)
    assert s["gd_0.15"]["final_loss"] < 0.5 * arrays["gd_losses"][i, 0]


@pytest.mark.slow  # the run, about 16 s: make quick runs it; test_sharpness, test_flows stay
def test_no_run_stays_far_above_its_threshold(run):
    # Above the threshold the top direction grows by |1 - lr lambda| > 1 per step, so the
    # sharpness cannot settle there: every run's plateau is at most 1.15 x its threshold.
    _, _, s, _ = run
    for key, v in s.items():
        if isinstance(v, dict) and "threshold" in v:
            assert v["plateau_ratio"] <= eos.PLATEAU_BAND[1], key


@pytest.mark.slow  # the run, about 16 s: make quick runs it; test_sharpness, test_flows stay
def test_flow_sharpness_keeps_rising(run):
    _, cfg, _, arrays = run
    flow_K = arrays["flow_sharpness"][0]
    # Progressive sharpening: after a dip in the first checks the flow's sharpness rises by
    # half, never falling by more than the 12-step Lanczos noise (1% per check) after the
    # first, and ends above the threshold of the largest GD step.
    assert np.all(np.diff(flow_K[1:]) > -1e-2 * flow_K[1:-1])
    assert flow_K[-1] > 1.5 * flow_K.min()
    assert flow_K[-1] > 2 / max(cfg.gd_lrs)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--lrs", "0"], "--lrs"),
        (["--lrs", "0.1,nan"], "--lrs"),
        (["--lrs", "fast"], "--lrs"),
        (["--every", "0"], "--every"),
        (["--every", "100000"], "--every"),
        (["--optimizers", "sgd"], "--optimizers"),
        (["--steps", "0"], "--steps"),  # the flag, not the field `steps`
        (["--train_size", "0"], "--train_size"),  # as typed
        (["--steps", "99999999999999999999"], "--steps"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(args, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        eos.main(["--quick", "--out", str(tmp_path), *args])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"`{flag}`" in lines[0], lines
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # make test keeps test_config's and test_studies' shell checks
def test_bad_command_line_from_the_shell_has_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "studies.edge_of_stability", "--lrs", "-1", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "`--lrs`" in p.stderr, p.stderr


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="`every`"):
        eos.Config(steps=10, every=11)
    with pytest.raises(ValueError, match="`momentum_lr`"):
        eos.Config(momentum_lr=-1.0)


def test_a_cifar10_folder_switches_the_data_to_its_first_images(tiny_cifar):
    folder, _ = tiny_cifar
    _, cfg = eos.main.parse(["--quick", "--data-dir", str(folder)])
    assert cfg.data == "cifar10"
    _, params, n = eos.problem(cfg, str(folder))
    # The quick run's 512 images are more than the folder's 20: all of them, flattened to
    # 3072 inputs.
    assert n == 20 and params[0][0].shape == (3072, 64)


@pytest.mark.parametrize("data", ["digits", "synthetic"])
def test_a_cifar10_folder_with_another_data_set_is_refused(tmp_path, capsys, data):
    # --data-dir alone means CIFAR-10; with --data naming another set it is refused, not
    # turned into cifar10 behind the flag's back.
    with pytest.raises(SystemExit) as e:
        eos.main(["--quick", "--out", str(tmp_path), "--data", data, "--data-dir", "/tmp"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"for `--data cifar10` only, not `--data {data}`" in err[0], err
    assert not any(tmp_path.iterdir())
    _, cfg = eos.main.parse(["--quick", "--data", "cifar10", "--data-dir", "/tmp"])
    assert cfg.data == "cifar10"
