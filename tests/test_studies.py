"""Every study in --quick mode: files written, key numbers against theory, clean CLI errors."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sandbox import cli, results

ROOT = Path(__file__).parents[1]


# One config field per study set from the command line in its --quick run: (flags, field,
# value in config.json, array name, the array's shape with it). Descent's further flags
# shrink its run: 6 GD steps for the paths and the GIF (quick: 30; 7 frames), and 30 steps
# per run of the alpha sweep (quick: 200), where even alpha = 1.2 grows |theta| only 1.4^30
# = 2.4e4-fold, inside the 1e6 bound: runs above alpha = 1 end farther out than they
# started (not converged) without diverging, so none is run a second time on the exact path.
OVERRIDES = {
    "gradient": (["--quiver-n", "11"], "quiver_n", 11, "quiver_x_Q", (121, 2)),
    "descent": (
        ["--gif_balls", "8", "--steps", "6", "--sweep-steps", "30"],
        "gif_balls",
        8,
        "gif_path_BxTx2",
        (8, 7, 2),
    ),
    "optimizers": (
        ["--picture-steps", "60"],
        "picture_steps",
        60,
        "picture_path_OxTx2",
        (4, 61, 2),
    ),
}


class _QuickRuns(dict):
    """name -> run folder of the study's --quick run (with its override), run the first time
    it is asked for (the slow tests' studies are not run by `make test`)."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.tmp = tmp_path_factory

    def __missing__(self, name):
        folder = self.tmp.mktemp(name)
        flags = OVERRIDES[name][0]
        importlib.import_module(f"studies.{name}").main(["--quick", "--out", str(folder), *flags])
        self[name] = folder
        return folder


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    return _QuickRuns(tmp_path_factory)


@pytest.mark.parametrize(
    "name",
    [
        "gradient",
        "descent",
        # 64 sweeps and a GIF: 21 s of --quick; the optimizers test below is slow too.
        pytest.param("optimizers", marks=pytest.mark.slow),
    ],
)
def test_quick_run_writes_the_run_folder(quick_runs, name):
    folder = quick_runs[name]
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json"):
        assert (folder / f).is_file(), f
    assert list(folder.glob("*.png"))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["wall_s"] > 0 and meta["backend"]
    # The field set on the command line is in config.json and shapes the saved arrays.
    _, field, value, array, shape = OVERRIDES[name]
    assert json.loads((folder / "config.json").read_text())[field] == value
    with np.load(folder / "arrays.npz") as z:
        assert z[array].shape == shape


def test_plot_only_redraws_from_saved_arrays(quick_runs):
    folder = quick_runs["gradient"]
    png = folder / "surface_quiver.png"
    png.unlink()
    importlib.import_module("studies.gradient").main(
        ["--quick", "--out", str(folder), "--plot-only"]
    )
    assert png.is_file()


def test_gradient_study_matches_the_analytic_gradient(quick_runs):
    s = json.loads((quick_runs["gradient"] / "summary.json").read_text())
    # |grad| <= 8 on [-2, 2]^2: one float32 rounding is 8 * 2^-23 ~ 1e-6.
    assert s["grad_max_abs_error"]["measured"] <= 1e-6
    assert s["uphill_fraction"]["measured"] == 1.0
    # Marching-squares segments on a 101-point grid are straight chords of curved
    # contours: their angle to the gradient is within a few degrees of 90.
    assert s["contour_cos_median"]["measured"] < 0.01


def test_descent_study_matches_theory(quick_runs):
    s = json.loads((quick_runs["descent"] / "summary.json").read_text())
    assert s["contraction_max_abs_error"]["measured"] < 1e-6
    lo, hi = s["divergence_threshold"]["bracket"]
    # The quick sweep spaces its 256 alphas (1.2 - 0.001) / 255 = 4.7e-3 apart.
    assert lo < 1.0 <= hi and hi - lo < 5e-3
    assert s["parabola_lr_0.98"]["oscillates"]
    np.testing.assert_allclose(
        s["parabola_lr_0.98"]["ratio_per_step"]["measured"], -0.96, atol=1e-6
    )
    assert (quick_runs["descent"] / "descent.gif").read_bytes()[:6] == b"GIF89a"


@pytest.mark.slow  # the optimizers --quick run (21 s); make quick runs it in CI
def test_optimizers_study_is_fair_and_matches_theory(quick_runs):
    folder = quick_runs["optimizers"]
    s = json.loads((folder / "summary.json").read_text())
    table = s["table"]
    # GD cannot settle at a minimum whose largest Hessian eigenvalue exceeds 2 / lr. From the
    # hand-derived Hessian at Himmelblau's four minima, lambda_max is 82.3, 80.6, 133.8 and
    # 105.4: above lr = 2 / 80.6 = 0.0248 no start can succeed.
    lam_max = []
    for x, y in [(3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)]:
        fxy = 4 * x + 4 * y
        hess = [[12 * x**2 + 4 * y - 42, fxy], [fxy, 12 * y**2 + 4 * x - 26]]
        lam_max.append(np.linalg.eigvalsh(np.array(hess))[-1])
    with np.load(folder / "arrays.npz") as z:
        lr_G, success_G = z["himmelblau/sgd/lr_G"], z["himmelblau/sgd/success_G"]
    unstable_G = lr_G > 2 / min(lam_max)
    assert unstable_G.any() and np.all(success_G[unstable_G] == 0.0)
    # Plain GD reaches Himmelblau's minima from every start only if its lr lies below
    # 2 / lambda_max of the sharpest minimum, 0.01495: otherwise that basin cannot attract.
    sgd = table["himmelblau"]["sgd"]
    assert sgd["success_rate"] == 1.0 and sgd["best_lr"] < 0.01495
    assert "| himmelblau |" in (quick_runs["optimizers"] / "table.md").read_text()
    assert (quick_runs["optimizers"] / "all_optimizers.gif").read_bytes()[:6] == b"GIF89a"


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_bad_command_line_from_the_shell_is_one_line_and_exit_status_2():
    r = _cli("studies.gradient", "--quick", "--out", "/proc/forbidden")
    assert r.returncode == 2
    assert "`--out` must be a writable folder" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["--out", "/proc/forbidden"], "`--out` must be a writable folder"),
        (["--seed", "abc"], "--seed"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_status_2(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module("studies.gradient").main(["--quick", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert match in err and len(err.strip().splitlines()) == 1


def test_plot_only_without_results_is_a_clean_error(tmp_path):
    r = _cli("studies.descent", "--quick", "--plot-only", "--out", str(tmp_path))
    assert r.returncode == 2 and "without --plot-only" in r.stderr
    assert "Traceback" not in r.stderr


def test_failed_run_keeps_earlier_results(tmp_path):
    study = importlib.import_module("studies.gradient")
    study.main(["--quick", "--out", str(tmp_path)])
    before = (tmp_path / "arrays.npz").read_bytes()

    def boom(cfg):
        raise ValueError("`grid_n` broke")

    failing = cli.study_main(study.__name__, boom, study.plot)
    with pytest.raises(SystemExit) as e:
        failing(["--quick", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert (tmp_path / "arrays.npz").read_bytes() == before
    cfg, arrays, _ = results.load(tmp_path, study.Config)
    assert cfg == study.QUICK


class _Stop(Exception):
    pass


@pytest.mark.parametrize("name", ["mode_connectivity", "sharpness_map"])
def test_no_progress_disables_the_study_bar(name, tmp_path, monkeypatch):
    # The study's bar (pairs, networks) is disabled, and with it every bar opened inside it;
    # the run stops there.
    study = importlib.import_module(f"studies.{name}")
    seen = []

    def bar(iterable, **kw):
        seen.append(kw)
        raise _Stop

    monkeypatch.setattr(study.engine, "bar", bar)
    for flags, disabled in (([], False), (["--no-progress"], True)):
        with pytest.raises(_Stop):
            study.main(["--quick", "--out", str(tmp_path / "run"), *flags])
        assert seen.pop()["disable"] is disabled
