"""studies.learning_rate in --quick mode: its numbers against theory, its grid, its config."""

import json
import math

import jax
import numpy as np
import pytest

from sandbox import fractal
from studies import learning_rate as study

FIGURES = (
    "quadratic_lr",
    "regimes",
    "parabola",
    "himmelblau_phase",
    "fractal",
    "fractal_dimension",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learning_rate")
    study.main(["--quick", "--out", str(folder)])
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, summary, arrays


def test_run_folder_and_figures(run):
    folder, _, _ = run
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json"):
        assert (folder / f).is_file(), f
    for name in FIGURES:
        assert (folder / f"{name}.png").stat().st_size > 10_000, name
    config = json.loads((folder / "config.json").read_text())
    assert config["grid_n"] == study.QUICK.grid_n


def test_divergence_boundary_on_quadratics_is_2_over_L(run):
    _, s, arrays = run
    lr_L = arrays["quad_lr_L"].astype(np.float64)
    step = lr_L[1] / lr_L[0]  # neighbouring lrs of the log grid, 3.2% apart in --quick
    for kappa in study.QUICK.kappas:
        b = s["divergence_boundary"][f"{kappa:g}"]
        lo, hi = b["bracket"]
        # Below 2/L every mode contracts, above it the stiff one grows: the last lr that
        # converged and the first that did not enclose 2/L (one grid step of slack for lrs
        # within a fraction of a percent of 2/L, where 200 steps barely tell).
        assert b["theory"] == pytest.approx(2 / kappa)
        assert lo / step < 2 / kappa < hi * step
        assert abs(b["measured"] / b["theory"] - 1) < step - 1


def test_steps_to_tolerance_follow_the_exact_rates(run):
    _, s, arrays = run
    st = s["steps_to_tol"]
    # Measured (float32 GD) against the exact count of updates until |grad| <= tol: equal
    # but for float32 rounding right at tol (one step), and the same lrs reach it at all
    # (but for at most one lr per quadratic at the margin of the step budget).
    assert st["max_abs_error_steps"] <= 1
    assert st["reached_mismatches"] <= len(study.QUICK.kappas)
    for kappa in study.QUICK.kappas:
        best = st["best_lr"][f"{kappa:g}"]
        lo, hi = best["measured"]
        # The lrs with the fewest steps: among those of the exact count (the same grid),
        # near 2/(mu + L), where both modes contract by (k - 1)/(k + 1) per step (the stiff
        # mode's larger gradient moves the best lr a little below it: 3% at k = 16).
        assert max(lo, best["theory"][0]) <= min(hi, best["theory"][1])
        assert lo <= 1.01 * best["rate_optimal_2_over_mu_plus_L"]
        assert hi >= 0.96 * best["rate_optimal_2_over_mu_plus_L"]


def test_too_small_right_too_large_rates(run):
    _, s, _ = run
    reg = s["regimes"]
    kappa = reg["kappa"]
    # The optimal constant step 2/(mu + L) contracts both modes by (kappa - 1)/(kappa + 1).
    right = reg["right"]["rate_per_step"]
    assert right["theory"] == pytest.approx((kappa - 1) / (kappa + 1))
    assert right["measured"] == pytest.approx(right["theory"], abs=1e-4)
    # Too large: the stiff mode grows by |1 - lr L| > 1 (the other has died out by then).
    large = reg["too large"]["rate_per_step"]
    assert large["theory"] > 1
    assert large["measured"] == pytest.approx(large["theory"], rel=1e-3)
    # Too small: the slow mode contracts by 1 - lr mu, close to 1; the faster one still
    # contributes a little over 12 steps, so 0.01.
    small = reg["too small"]["rate_per_step"]
    assert small["measured"] == pytest.approx(small["theory"], abs=0.01)
    assert small["measured"] > right["measured"]


def test_parabola_at_lr_098_oscillates_with_ratio_minus_096(run):
    _, s, arrays = run
    par = s["parabola"]
    assert par["oscillates"]
    assert par["ratio_per_step"]["theory"] == pytest.approx(-0.96)
    # float32: x_t+1 = x_t - 0.98 * 2 x_t rounds once per step.
    assert par["ratio_per_step"]["max_abs_deviation"] < 1e-6
    x_T = arrays["parabola_path_T"].astype(np.float64)
    t = np.arange(len(x_T))
    np.testing.assert_allclose(x_T, (-0.96) ** t, rtol=1e-5)


def test_himmelblau_minima_stop_attracting_at_2_over_lambda_max(run):
    _, s, arrays = run
    lr_B = arrays["basin_lr_B"].astype(np.float64)
    step = lr_B[1] / lr_B[0]  # 10% apart in --quick
    for name, v in s["himmelblau_last_lr_reaching_minimum"].items():
        lo, hi = v["bracket"]
        # A minimum is a stable fixed point of GD iff lr < 2 / lambda_max: no start settles
        # there above it; just below it, some still do within the steps (slack: one step).
        assert lo < v["theory"] < hi * step, name
    # Too small, right, too large along the phase maps: the smallest lr leaves most starts
    # unconverged, the largest sends most of them off, and every minimum is reached between.
    labels = arrays["phase_labels_AxHxW"]
    assert np.mean(labels[:, 0] == -1) > 0.5
    assert np.mean(labels[:, -1] == -2) > 0.5
    assert set(range(4)) <= set(np.unique(labels).tolist())


def test_fractal_scores_boundary_and_dimension(run):
    _, s, arrays = run
    assert s["fractal"]["dtype"] == "float64"
    levels = s["fractal"]["levels"]
    assert len(levels) == study.QUICK.zoom_levels + 1
    for e in levels:
        score = arrays[f"fractal_score_{e['level']}_HxW"]
        assert score.shape == tuple(e["grid"])
        assert np.all(np.isfinite(score)) and np.all(np.abs(score) <= 1) and np.all(score != 0)
        # Both trainable and divergent runs in every view, full and zoomed.
        assert 0.02 < e["trainable_fraction"] < 0.98, e["level"]
        # A boundary between a curve (1) and an area (2).
        assert 1.0 < e["dimension"] < 2.0, e["level"]
    # Each zoom window is centred on a boundary pixel of the view before, inside it.
    win = arrays["fractal_window_Vx2x2"]
    for outer, inner in zip(win[:-1], win[1:], strict=True):
        assert np.all(inner[:, 0] > outer[:, 0]) and np.all(inner[:, 1] < outer[:, 1])
    assert 1.0 < s["boundary_dimension"]["measured"] < 2.0
    # Two neighbouring pixels of the deepest zoom, 1e-4 apart: one trains, the other not.
    nb = s["fractal_neighbours"]
    assert nb["relative_distance"] < 1e-3
    assert nb["scores"][0] > 0 > nb["scores"][1]


def test_vmapped_grid_equals_a_loop_of_single_runs(key):
    steps = 150
    lr1_W = np.array([0.3, 3.0, 30.0])
    lr2_H = np.array([1.0, 10.0, 300.0])
    with jax.enable_x64(True):
        params, data = fractal.problem(key, 6)
        got = fractal.score_grid(params, data, lr1_W, lr2_H, steps=steps, batch_size=4)
        one = jax.jit(lambda a, b: fractal.train(params, data, a, b, steps))
        want = np.array([[float(one(a, b)) for a in lr1_W] for b in lr2_H])
    assert (got > 0).any() and (got < 0).any()
    # Batched and unbatched products round differently (vector FMA, reduction order):
    # float64 differences of ~1e-16 per step. Runs at the edge of stability (the loss going
    # up and down, as at lr2 = 10 here) amplify them to ~1e-5 of the score; 1e-4 still
    # tells a mix-up of the trainable pixels, whose scores differ by more than 1e-2.
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize(
    "field, value",
    [
        ("width", 0),
        ("steps", 1),
        ("grid_n", 4),
        ("log10_lr1", (2.0, 1.0)),
        ("kappas", (0.5,)),
        ("parabola_lr", -0.98),
        ("zoom_factor", 1.0),
        ("box_sizes", (2,)),
        ("quad_lr_range", (0.0, 1.0)),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        study.Config(**{field: value})


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--scale", "huge"], "invalid choice: 'huge'"),
        (["--scale", "paper", "--quick"], "`--scale paper`"),
    ],
)
def test_bad_scale_is_one_line_and_exit_status_2(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        study.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_plot_only_redraws(run):
    folder, _, _ = run
    (folder / "fractal.png").unlink()
    study.main(["--quick", "--out", str(folder), "--plot-only"])
    assert (folder / "fractal.png").is_file()


def test_paper_scale_is_the_papers_setting():
    p = study.PAPER
    assert p.width == 16 and p.steps >= 1000 and p.grid_n >= 1024 and p.zoom_grid_n >= 1024
    d = study.Config()
    assert d.width == 8 and d.steps >= 500 and d.grid_n >= 512
    assert math.isclose(p.zoom_factor, d.zoom_factor)
