"""studies/saddle in --quick mode: GD stops at the saddle from the ridge, escape times vs theory."""

import json
import math

import numpy as np
import pytest

from studies import saddle


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saddle")
    # One config field set from the command line (a comma-separated tuple): the run uses it.
    saddle.main(["--quick", "--out", str(folder), "--escape-lrs", "0.05,0.1"])
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, summary, arrays


def test_quick_run_writes_the_run_folder_and_figures(run):
    folder, _, a = run
    assert json.loads((folder / "config.json").read_text())["escape_lrs"] == [0.05, 0.1]
    np.testing.assert_array_equal(a["escape_lrs_L"], [0.05, 0.1])
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json"):
        assert (folder / f).is_file(), f
    for f in ("surface_paths.png", "escape_time.png", "escape_distributions.png"):
        assert (folder / f).stat().st_size > 10_000, f


@pytest.mark.parametrize("name, eigenvalues", [("saddle", [-2, 2]), ("double_well", [-4, 2])])
def test_gd_from_the_ridge_converges_to_a_saddle_not_a_minimum(run, name, eigenvalues):
    _, s, _ = run
    ridge = s["ridge"][name]
    cfg = saddle.QUICK
    # On x = 0, y shrinks by (1 - 2 alpha) per step: |grad| = 2 y0 (1 - 2 alpha)^T = 6.4e-8
    # after 80 steps; float32 keeps that to a few ulps.
    expected = 2 * cfg.path_y0 * (1 - 2 * cfg.lr) ** cfg.path_steps
    np.testing.assert_allclose(ridge["grad_norm"]["measured"], expected, rtol=1e-4)
    assert ridge["distance_to_saddle"]["measured"] < 1e-6
    # The Hessian there (float64) is indefinite: one negative, one positive eigenvalue.
    np.testing.assert_allclose(ridge["hessian_eigenvalues"]["measured"], eigenvalues, atol=1e-9)
    assert ridge["kind"]["measured"] == "saddle"


def test_escape_steps_against_the_offset_match_log_r_over_eps(run):
    _, s, a = run
    cfg = saddle.QUICK
    eps_E = a["eps_E"]
    assert math.log10(eps_E.max() / eps_E.min()) >= 6  # at least six decades of eps
    for i, lr in enumerate(a["escape_lrs_L"]):
        # GD multiplies x by exactly 1 + 2 alpha per step on z = y^2 - x^2; it leaves the
        # box at the first t with eps (1 + 2 alpha)^t > R.
        theory_E = np.floor(np.log(cfg.radius / eps_E) / np.log(1 + 2 * lr)) + 1
        steps_E = a["saddle_steps_LxE"][i]
        # float32 rounding of x_t can move a crossing by one step when eps q^t is within
        # ~1e-6 of R.
        assert np.max(np.abs(steps_E - theory_E)) <= 1
        slope = np.polyfit(np.log10(1 / eps_E), steps_E, 1)[0]
        np.testing.assert_allclose(slope, math.log(10) / math.log(1 + 2 * lr), rtol=0.01)
        # The summary's theory uses |lambda_min| from a float64 Hessian: exactly 2 here.
        entry = s["escape_vs_offset"][f"saddle_gd_lr_{lr:g}"]["steps_per_decade"]
        np.testing.assert_allclose(entry["theory"], math.log(10) / math.log(1 + 2 * lr), rtol=1e-12)
        np.testing.assert_allclose(entry["measured"], entry["theory"], rtol=0.01)


def test_double_well_and_momentum_escape_slopes(run):
    _, s, a = run
    cfg = saddle.QUICK
    esc = s["escape_vs_offset"]
    # Double well: x grows by 1 + 4 alpha near the saddle; the quartic term only adds a
    # constant number of steps near R, so the slope keeps the theory's value.
    dw = esc[f"double_well_gd_lr_{cfg.lr:g}"]
    np.testing.assert_allclose(
        dw["steps_per_decade"]["measured"], math.log(10) / math.log(1 + 4 * cfg.lr), rtol=0.02
    )
    assert dw["max_abs_step_error"]["measured"] <= 2
    # Heavy ball at alpha 0.1, beta 0.9: r^2 = 2.1 r - 0.9, r = 1.5 (GD: 1.2).
    mom = esc[f"saddle_momentum_lr_{cfg.lr:g}_beta_{cfg.momentum:g}"]
    np.testing.assert_allclose(mom["growth_per_step"]["theory"], 1.5, rtol=1e-12)
    np.testing.assert_allclose(
        mom["steps_per_decade"]["measured"], math.log(10) / math.log(1.5), rtol=0.01
    )
    assert mom["max_abs_step_error"]["measured"] <= 1
    assert np.all(a["momentum_steps_E"] < a["saddle_steps_LxE"][1])  # faster than GD


def test_escape_time_distributions_follow_their_laws(run):
    _, s, a = run
    d = s["escape_distributions"]
    for method in ("gd_offsets", "momentum_offsets", "noise_ridge"):
        n = d[method]["runs"]
        assert n == saddle.QUICK.num_runs
        assert d[method]["escaped_fraction"]["measured"] == 1.0
        # Kolmogorov-Smirnov: sampling alone stays below 1.63 / sqrt(n) = 0.036 with 99%
        # probability (2048 runs); the laws are exact for GD, leading-order otherwise.
        assert d[method]["ks_distance"]["measured"] < 1.63 / math.sqrt(n), method
        med = d[method]["median_steps"]
        assert abs(med["measured"] - med["theory"]) <= 1, method
    # Momentum escapes in about half GD's steps from the same starts.
    assert np.median(a["momentum_offsets_steps_N"]) < 0.6 * np.median(a["gd_offsets_steps_N"])
    # Without noise, nothing started exactly on the ridge ever leaves it.
    assert d["gd_ridge"]["escaped_fraction"]["measured"] == 0.0
    assert d["momentum_ridge"]["escaped_fraction"]["measured"] == 0.0


def test_median_escape_time_against_noise_level(run):
    _, s, _ = run
    noise = s["escape_vs_noise"]
    # sigma ~ sqrt(eta): -1 / (2 log10 1.2) = -6.31 steps per decade of eta.
    np.testing.assert_allclose(
        noise["steps_per_decade_of_eta"]["measured"], -1 / (2 * math.log10(1.2)), rtol=0.05
    )
    for eta in saddle.QUICK.noise_etas:
        med = noise[f"{eta:g}"]["median_steps"]
        # 512 runs per eta: the sample median's standard error is about one step.
        assert abs(med["measured"] - med["theory"]) <= 2, eta


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_runs": -1}, "num_runs"),
        ({"num_eps": 1}, "num_eps"),
        ({"escape_lrs": ()}, "escape_lrs"),
        ({"noise_etas": ()}, "noise_etas"),
        ({"noise_eta": 1e-40}, "noise_eta"),
        ({"eps_min": 1e-3, "eps_max": 1e-4}, "eps_min"),
        ({"lr": -0.1}, "lr"),
        ({"double_well_radius": 1.5}, "double_well_radius"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        saddle.Config(**kwargs)


@pytest.mark.parametrize(
    "argv, message",
    [
        # The fitted steps per decade of eta need two noise levels, each its own summary key.
        (["--noise-etas", "1e-8,1e-8"], "`--noise-etas` must be a list of at least 2"),
        (["--noise-etas", "1e-8"], "`--noise-etas` must be a list of at least 2"),
        (["--noise-etas", "1e-8,1.0000001e-8"], "distinct to 6 significant digits"),
        # float32 flushes a subnormal eta to 0: no run would ever escape.
        (["--noise-etas", "1e-40,1e-8"], "each a finite number >= 1.17549e-38"),
        (["--noise-eta", "1e-40"], "`--noise-eta` must be a finite number >= 1.17549e-38"),
        # The median of eta 1e-30 is 203 steps, past a budget of 100; at eta 1e3 every run
        # leaves in one step.
        (["--noise-etas", "1e-30,1e-8", "--escape-steps", "100"], "must satisfy 2 <= median"),
        (["--noise-etas", "1e-8,1e3"], "`--noise-etas`: must satisfy 2 <= median"),
    ],
)
def test_noise_levels_the_fit_cannot_use_are_refused_in_one_line(argv, message):
    with pytest.raises(ValueError, match="`--noise-eta") as e:
        saddle.main.parse(["--quick", *argv])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_refused_noise_level_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        saddle.main(["--quick", "--out", str(tmp_path / "run"), "--noise-etas", "1e-8,1e-8"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "`--noise-etas`" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("lr, radius", [(0.01, 0.1), (0.1, 1.0), (0.249, 10.0)])
def test_the_closed_form_median_is_the_laws(lr, radius):
    for eta in np.geomspace(saddle.ETA_MIN, 1e3, 25):
        median = saddle.noise_median_steps(lr, eta, radius)
        # Past the median by a few steps (far past it, v_t overflows).
        cdf_T = saddle.cdf_noise(np.arange(median + 5), lr, eta, 2.0, radius)
        assert median == saddle.median_from_cdf(cdf_T), eta


@pytest.mark.parametrize(
    "argv", [[], ["--quick"], ["--lr", "0.05", "--num-runs", "4096"], ["--noise-etas", "1e-6,1e-8"]]
)
def test_the_presets_the_readme_override_and_two_noise_levels_parse(argv):
    saddle.main.parse(argv)
