"""studies/normalization in --quick mode: steps ~ kappa, rescaling removes kappa, regression."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from sandbox import landscapes
from studies import normalization


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("normalization")
    # One config field set from the command line (the preset has 100 samples).
    normalization.main(["--quick", "--out", str(folder), "--num-samples", "80"])
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, summary, arrays


def test_quick_run_writes_the_run_folder_and_figures(run):
    folder, _, a = run
    assert json.loads((folder / "config.json").read_text())["num_samples"] == 80
    assert a["raw_X"].shape == (80, 2)
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json"):
        assert (folder / f).is_file(), f
    for f in ("steps_vs_kappa.png", "regression.png"):
        assert (folder / f).stat().st_size > 10_000, f


def test_the_family_function_is_the_landscape_quadratic():
    p = np.array([[0.3, -1.2], [1.5, 0.7], [-2.0, 0.1]])
    for kappa in (1.0, 37.0, 1e4):
        want = [float(landscapes.quadratic(kappa).fn(jnp.asarray(x))) for x in p]
        got = [float(normalization.quadratic(jnp.array([*x, kappa, 1.0]))) for x in p]
        np.testing.assert_allclose(got, want, rtol=1e-6)
        # Rescaled, v = sqrt(kappa) y: 0.5 (x^2 + v^2) whatever kappa.
        res = [
            float(normalization.quadratic(jnp.array([*x, kappa, 1 / math.sqrt(kappa)]))) for x in p
        ]
        np.testing.assert_allclose(res, 0.5 * np.sum(p**2, axis=1), rtol=1e-6)


def test_steps_grow_like_kappa(run):
    _, s, a = run
    q = s["quadratic"]
    tol = normalization.QUICK.tol
    kappa_K = a["kappa_K"]
    # At lr = 2 / (1 + kappa) both gradient components shrink by exactly
    # rho = (kappa - 1) / (kappa + 1) per step: steps = ceil(ln(1/tol) / ln(1/rho)).
    rho = (kappa_K - 1) / (kappa_K + 1)
    with np.errstate(divide="ignore"):
        theory_K = np.where(kappa_K > 1, np.ceil(np.log(1 / tol) / np.log(1 / rho)), 1)
    # float32 rounding moves a crossing by at most one step.
    np.testing.assert_allclose(a["steps_formula_K"], theory_K, atol=1)
    big = kappa_K >= 10
    slope = np.polyfit(np.log(kappa_K[big]), np.log(a["steps_KxU"].min(axis=1)[big]), 1)[0]
    # Exact formula over kappa in [10, 1000]: slope 0.997; a 48-point lr grid costs < 1%.
    assert abs(slope - 1) < 0.03
    # The summary's slope against the exact counts' slope at lr = 2 / (1 + kappa), 0.997:
    # the best swept lr lands 0.8% below it.
    exact_slope = np.polyfit(np.log(kappa_K[big]), np.log(theory_K[big]), 1)[0]
    np.testing.assert_allclose(q["slope_loglog"]["measured"], exact_slope, rtol=0.01)
    # The best swept lr is within 5% of the formula's steps (the grid misses 2/(1 + kappa)).
    np.testing.assert_allclose(a["steps_KxU"].min(axis=1)[big], theory_K[big], rtol=0.05)
    # Every grid point agrees with the exact count for its lr (worst of the starts), to one
    # step plus float32's rounding of lr near the stability edge (0.2%).
    assert q["agreement_with_exact"]["cells_within_tolerance"]["measured"] == 1.0
    # Large kappa: steps / kappa -> (1/2) ln(1/tol) = 3.45.
    np.testing.assert_allclose(
        q["steps_over_kappa_at_kappa_max"]["measured"], 0.5 * math.log(1 / tol), rtol=0.03
    )


def test_rescaling_makes_steps_independent_of_kappa(run):
    _, s, a = run
    q = s["quadratic"]
    # In v = sqrt(kappa) y the Hessian is the identity: lr 1 lands on the minimum in one step.
    np.testing.assert_array_equal(a["rescaled_steps_formula_K"], 1.0)
    best_K = a["rescaled_steps_KxU"].min(axis=1)
    assert best_K.max() == best_K.min() and best_K.max() <= 3
    assert abs(q["rescaled_slope_loglog"]["measured"]) < 1e-6
    assert q["rescaled_agreement_with_exact"]["cells_within_tolerance"]["measured"] == 1.0


def test_standardizing_the_regression_features(run):
    _, s, _ = run
    cfg = normalization.QUICK
    r = s["regression"]
    raw, std = r["raw"], r["standardized"]
    # Independent features of scales 1 and 100: kappa ~ (100 / 1)^2 up to sampling.
    assert 0.3e4 < raw["kappa"] < 3e4
    assert std["kappa"] < 2
    # Loss gap at lr 2 / (L + mu) shrinks by exactly rho^2 per step (two eigen-directions).
    for entry in (raw, std):
        rho = (entry["kappa"] - 1) / (entry["kappa"] + 1)
        theory = math.ceil(math.log(1 / cfg.regression_tol) / (2 * math.log(1 / rho)))
        measured = entry["steps_formula_lr"]["measured"]
        # Measured steps are read from points recorded every `steps_resolution` steps.
        # float64 runs: at most a rounding step early.
        assert theory - 1 <= measured <= theory + entry["steps_resolution"]
    assert std["steps_best_lr"]["measured"] <= 3
    ratio = r["steps_ratio_raw_over_standardized"]["measured"]
    assert ratio > 1000


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_kappas": 0}, "num_kappas"),
        ({"num_lrs": -3}, "num_lrs"),
        ({"kappa_max": 0.5}, "kappa_max"),
        ({"tol": 2.0}, "tol"),
        ({"feature_scales": (1.0, -5.0)}, "feature_scales"),
        ({"edge_gap_range": (0.5, 0.1)}, "edge_gap_range"),
        ({"num_samples": 2}, "num_samples"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        normalization.Config(**kwargs)
