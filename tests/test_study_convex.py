"""studies/convex in --quick mode: PSD fractions and GD endpoints against theory."""

import json
import math

import numpy as np
import pytest

from sandbox import landscapes
from studies import convex

FUNCTIONS = convex.QUICK.functions
KAPPA = 5.0  # set from the command line over the --quick preset (10)
# Fewer GD starts than --quick (10 000): Rastrigin's smallest basins (the corners, ~0.4% of
# the box) are still missed with probability ~1e-3 at 2000 starts; every other check is per
# landscape or per grid cell.
NUM_STARTS = 2000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("convex")
    convex.main(
        ["--quick", "--out", str(folder), "--kappa", str(KAPPA), "--num-starts", str(NUM_STARTS)]
    )
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, summary, arrays


@pytest.fixture(scope="module")
def cfg(run):
    """The config the run used (the --quick preset with the overrides above)."""
    return json.loads((run[0] / "config.json").read_text())


def test_writes_the_run_folder_and_figure(run, cfg):
    folder, summary, _ = run
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json", "nonconvex_regions.png"):
        assert (folder / f).is_file(), f
    assert set(summary) == set(FUNCTIONS)
    assert cfg["kappa"] == KAPPA
    assert cfg["num_starts"] == NUM_STARTS
    assert all(summary[name]["gd"]["starts"] == NUM_STARTS for name in FUNCTIONS)


@pytest.mark.parametrize("name", ["bowl", "quadratic"])
def test_convex_functions_have_a_psd_hessian_everywhere(run, name):
    summary = run[1]
    s = summary[name]
    assert s["psd_fraction"]["theory"] == 1.0
    assert s["psd_fraction"]["measured"] == 1.0
    # Constant Hessians, diag(2, 2) and diag(1, kappa): every grid point has those eigenvalues.
    want = {"bowl": [2.0, 2.0], "quadratic": [1.0, KAPPA]}[name]
    got = [s["lambda_min_on_grid"], s["lambda_max_on_grid"]]
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_psd_fraction_matches_its_exact_value(run, cfg, name):
    s = run[1][name]["psd_fraction"]
    # One uniform point per cell: only cells cut by the PSD boundary add variance, so the
    # error is about 0.1 / grid_n (measured over seeds and sizes 200..1024); allow 0.5 / n.
    assert abs(s["measured"] - s["theory"]) <= 0.5 / cfg["grid_n"]


def test_exact_values_agree_with_closed_forms(run):
    summary = run[1]
    # Rosenbrock: PSD iff y <= x^2 + 0.005, over [-2, 2] x [-1, 3].
    s = math.sqrt(2.995)
    rosen = 2 * (s**3 / 3 + 1.005 * s + 4 * (2 - s)) / 16
    # The quadrature over x is a midpoint rule with 20001 points: error O(h^2) ~ 1e-8.
    np.testing.assert_allclose(summary["rosenbrock"]["psd_fraction"]["theory"], rosen, atol=1e-7)
    # Rastrigin: f_ii >= 0 iff cos(2 pi x_i) >= -1 / (20 pi^2), on 1/2 + asin(c)/pi of each
    # period; [-5.12, 5.12] is 10 periods plus two 0.12 ends where cos > 0.
    c = 1 / (20 * math.pi**2)
    share = (10 * (0.5 + math.asin(c) / math.pi) + 0.24) / 10.24
    np.testing.assert_allclose(summary["rastrigin"]["psd_fraction"]["theory"], share**2, rtol=1e-12)


@pytest.mark.parametrize(
    "name, minima",
    [
        ("bowl", 1),
        ("quadratic", 1),
        ("himmelblau", 4),
        ("rosenbrock", 1),
        ("six_hump_camel", 6),
        ("rastrigin", 121),
    ],
)
def test_gd_reaches_one_endpoint_per_local_minimum(run, name, minima):
    s = run[1][name]
    assert s["distinct_endpoints"]["theory"] == minima
    assert s["distinct_endpoints"]["measured"] == minima
    assert s["endpoints_at_a_local_minimum"]["measured"] == minima
    assert s["diverged"] == 0 and s["not_converged"] == 0


def test_endpoints_are_the_stored_minima(run):
    _, summary, arrays = run
    np.testing.assert_allclose(summary["bowl"]["endpoints"][0]["x"], [0.0, 0.0], atol=1e-6)
    ends = arrays["himmelblau/endpoints_Cx2"]
    for m in landscapes.get("himmelblau").minima:  # matched by coordinates
        assert np.min(np.linalg.norm(ends - m, axis=1)) < 1e-4
    # Rosenbrock's flat valley: float32 GD stalls within a few 1e-3 of (1, 1).
    np.testing.assert_allclose(summary["rosenbrock"]["endpoints"][0]["x"], [1.0, 1.0], atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"grid_n": 0}, "`grid_n`"),
        ({"num_starts": -5}, "`num_starts`"),
        ({"functions": ()}, "`functions`"),
        ({"functions": ("bowl", "nope"), "steps": (10, 10)}, "'nope'"),
        ({"steps": (10,)}, "`steps`"),
        ({"lr_scale": 2.5}, "`lr_scale`"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        convex.Config(**kwargs)
