"""studies.learning_rate in --quick mode: its numbers against theory, its config."""

import json

import numpy as np
import pytest

from sandbox import results
from studies import learning_rate as study

FIGURES = ("quadratic_lr", "regimes", "himmelblau_phase")
# On top of --quick: two quadratics (kappa 4 and 16: 2/L and 2/(mu + L) still move with L)
# of 128 steps (kappa 16's fewest, 76, within them). Each quadratic is its own compiled
# programs, and 128 steps need no re-run horizon beyond the sweep's 16 and 128.
SHRINK = ["--kappas", "4", "16", "--quad-steps", "128"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("learning_rate")
    # One config field set from the command line (the preset has 64 starts per line).
    study.main(["--quick", "--out", str(folder), "--phase-starts", "32", *SHRINK])
    cfg, arrays, summary = results.load(folder, study.Config)
    return folder, summary, arrays, cfg


def test_run_folder_and_figures(run):
    folder, _, arrays, _ = run
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json"):
        assert (folder / f).is_file(), f
    for name in FIGURES:
        assert (folder / f"{name}.png").stat().st_size > 10_000, name
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(FIGURES)
    config = json.loads((folder / "config.json").read_text())
    assert config["quad_num_lrs"] == study.QUICK.quad_num_lrs
    assert config["phase_starts"] == 32 and arrays["phase_t_W"].shape == (32,)


def test_divergence_boundary_on_quadratics_is_2_over_L(run):
    _, s, arrays, cfg = run
    lr_L = arrays["quad_lr_L"].astype(np.float64)
    step = lr_L[1] / lr_L[0]  # neighbouring lrs of the log grid, 3.2% apart in --quick
    assert set(s["divergence_boundary"]) == {f"{k:g}" for k in cfg.kappas}
    for kappa in cfg.kappas:
        b = s["divergence_boundary"][f"{kappa:g}"]
        lo, hi = b["bracket"]
        # Below 2/L every mode contracts, above it the stiff one grows: the last lr that
        # converged and the first that did not enclose 2/L (one grid step of slack for lrs
        # within a fraction of a percent of 2/L, where the run's steps barely tell).
        assert b["theory"] == pytest.approx(2 / kappa, rel=1e-12)
        assert lo / step < 2 / kappa < hi * step
        assert abs(b["measured"] / b["theory"] - 1) < step - 1


def test_steps_to_tolerance_follow_the_exact_rates(run):
    _, s, _, cfg = run
    st = s["steps_to_tol"]
    # Measured (float32 GD) against the exact count of updates until |grad| <= tol: equal
    # but for float32 rounding right at tol (one step), and the same lrs reach it at all
    # (but for at most one lr per quadratic at the margin of the step budget).
    assert st["max_abs_error_steps"] <= 1
    assert st["reached_mismatches"] <= len(cfg.kappas)
    assert set(st["best_lr"]) == {f"{k:g}" for k in cfg.kappas}
    for kappa in cfg.kappas:
        best = st["best_lr"][f"{kappa:g}"]
        lo, hi = best["measured"]
        # The lrs with the fewest steps: among those of the exact count (the same grid),
        # near 2/(mu + L), where both modes contract by (k - 1)/(k + 1) per step (the stiff
        # mode's larger gradient moves the best lr a little below it: 3% at k = 16).
        assert max(lo, best["theory"][0]) <= min(hi, best["theory"][1])
        assert lo <= 1.01 * best["rate_optimal_2_over_mu_plus_L"]
        assert hi >= 0.96 * best["rate_optimal_2_over_mu_plus_L"]


def test_too_small_right_too_large_rates(run):
    _, s, _, _ = run
    reg = s["regimes"]
    kappa = reg["kappa"]
    # The optimal constant step 2/(mu + L) contracts both modes by (kappa - 1)/(kappa + 1).
    right = reg["right"]["rate_per_step"]
    assert right["theory"] == pytest.approx((kappa - 1) / (kappa + 1), rel=1e-12)
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


def test_himmelblau_phase_maps_too_small_right_too_large(run):
    _, s, arrays, _ = run
    labels = arrays["phase_labels_AxHxW"]
    lr_H = arrays["phase_lr_H"].astype(np.float64)
    # Too small, right, too large along the phase maps: the smallest lr leaves most starts
    # unconverged, the largest sends most of them off, and every minimum is reached between.
    assert np.mean(labels[:, 0] == -1) > 0.5
    assert np.mean(labels[:, -1] == -2) > 0.5
    assert set(range(4)) <= set(np.unique(labels).tolist())
    ph = s["himmelblau_phase"]
    assert ph["not_converged_at_smallest_lr"] == np.mean(labels[:, 0] == -1)
    assert ph["diverged_at_largest_lr"] == np.mean(labels[:, -1] == -2)
    assert ph["minima_reached"] == [0, 1, 2, 3]
    # A minimum is a stable fixed point of GD iff lr < 2 / lambda_max there: no start of
    # either map settles at it above that lr. Exact, no slack: above it a run cannot settle,
    # and no lr of the quick grid (14% apart) lies within float32 rounding of 2 / lambda_max.
    for i, lam in enumerate(arrays["lambda_max_k"]):
        settled_H = (labels == i).any(axis=(0, 2))
        assert lr_H[settled_H].max() < 2 / lam, i
    # The lines drawn across the maps: 2 / lambda_max of float64 Hessians at the minima
    # (known to 4 digits: 0.01495, 0.01897, 0.02431, 0.02483), so rtol 5e-4.
    stable = ph["stable_below_2_over_lambda_max"].values()
    theory = sorted(v["theory_2_over_lambda_max"] for v in stable)
    np.testing.assert_allclose(theory, [0.01495, 0.01897, 0.02431, 0.02483], rtol=5e-4)


@pytest.mark.parametrize(
    "field, value",
    [
        ("kappas", (0.5,)),
        ("quad_lr_range", (0.0, 1.0)),
        ("phase_lr_range", (0.05, 1e-4)),
        ("regime_small", 1.5),
        ("himmelblau_steps", 0),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        study.Config(**{field: value})


def test_plot_only_redraws(run):
    folder, _, _, _ = run
    (folder / "himmelblau_phase.png").unlink()
    study.main(["--quick", "--out", str(folder), "--plot-only", "--phase_starts", "32", *SHRINK])
    assert (folder / "himmelblau_phase.png").is_file()


def test_plot_only_refuses_flags_the_saved_run_differs_from(run, capsys):
    folder, _, _, _ = run
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    with pytest.raises(SystemExit) as e:
        study.main(
            ["--quick", "--out", str(folder), "--plot-only", "--phase_starts", "16", *SHRINK]
        )
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "phase_starts = 32" in err and "--phase_starts 16" in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
