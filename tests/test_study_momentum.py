"""studies.momentum in --quick mode: heavy-ball rates against theory, escaping a shallow minimum."""

import dataclasses
import importlib

import numpy as np
import pytest

from sandbox import landscapes, results, sweep

momentum = importlib.import_module("studies.momentum")


# Smaller than the preset: a 4 x 12 (beta, lr) rate grid (beta 0 and both sides of the
# complex-pair regime, a threshold inside every row), 4 escape betas (0, 0.5, 0.93, 0.99) and
# a GIF of 5 steps. The escape keeps its 256 starts: the margins below are counted in them.
SMALL = {"rate_num_betas": 4, "rate_num_lrs": 12, "escape_num_betas": 4, "gif_steps": 5}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("momentum")
    # One config field set from the command line (the preset's GIF has 32 balls).
    argv = ["--quick", "--out", str(out), "--gif-balls", "16"]
    for field, value in SMALL.items():
        argv += [f"--{field.replace('_', '-')}", str(value)]
    momentum.main(argv)
    cfg, arrays, summary = results.load(out, momentum.Config)
    return out, cfg, arrays, summary


def test_quick_run_writes_the_run_folder(quick):
    out, cfg, arrays, summary = quick
    assert cfg == dataclasses.replace(momentum.QUICK, gif_balls=16, **SMALL)
    assert arrays["gif/sgd/path_GxT"].shape == (16, cfg.gif_steps + 1)
    for name in ("config.json", "arrays.npz", "summary.json", "meta.json"):
        assert (out / name).is_file(), name
    for name in ("rate", "escape", "escape_map"):
        assert (out / f"{name}.png").is_file(), name
    assert (out / "balls.gif").read_bytes()[:6] == b"GIF89a"
    assert set(summary) >= {"rate_max_abs_error", "divergence_threshold_by_beta", "escape"}


@pytest.mark.parametrize(
    "lr, beta, lam",
    [(0.05, 0.0, 10.0), (0.3, 0.0, 10.0), (0.1, 0.5, 1.0), (0.2, 0.9, 10.0), (0.39, 0.95, 10.0)],
)
def test_heavy_ball_theory_is_the_spectral_radius(lr, beta, lam):
    # Roots of sigma^2 - (1 + beta - lr lam) sigma + beta = 0, the characteristic polynomial.
    roots = np.roots([1.0, -(1 + beta - lr * lam), beta])
    np.testing.assert_allclose(
        momentum.heavy_ball_rate(lr, beta, lam), np.abs(roots).max(), rtol=1e-12, atol=0
    )
    if beta == 0:  # plain GD: |1 - lr lam|
        np.testing.assert_allclose(
            momentum.heavy_ball_rate(lr, beta, lam), abs(1 - lr * lam), rtol=1e-12
        )
    if (1 + beta - lr * lam) ** 2 < 4 * beta:  # complex pair: |sigma| = sqrt(beta)
        np.testing.assert_allclose(
            momentum.heavy_ball_rate(lr, beta, lam), np.sqrt(beta), rtol=1e-12
        )


def test_measured_rate_matches_heavy_ball_theory(quick):
    _, cfg, arrays, summary = quick
    meas, theory = arrays["rate_measured_BxL"], arrays["rate_theory_BxL"]
    assert np.all(np.isfinite(meas))
    # float64 runs of 1000 steps; what the least-squares slope cannot remove is the
    # transient: t * rho^t at a double eigenvalue, the beat of two complex pairs of the
    # same modulus (8e-5 at worst on this grid, 2e-4 on the preset's, 4e-4 on the default
    # one).
    np.testing.assert_allclose(meas, theory, rtol=0, atol=1e-3)
    assert summary["rate_max_abs_error"]["measured"] < 1e-3
    # Away from the double eigenvalues the fit is exact to rounding.
    assert summary["rate_median_abs_error"] < 1e-6


def test_converges_iff_lr_lambda_below_2_plus_2_beta(quick):
    _, cfg, arrays, summary = quick
    lr_BxL, beta_BxL = np.meshgrid(arrays["rate_lr_L"], arrays["rate_beta_B"])
    theory = lr_BxL * cfg.kappa < 2 + 2 * beta_BxL  # lr > 0 on the whole grid
    np.testing.assert_array_equal(arrays["rate_measured_BxL"] < 1, theory)
    assert summary["convergence_disagreements"]["measured"] == 0
    spacing = cfg.rate_lr_max / cfg.rate_num_lrs
    for beta in arrays["rate_beta_B"]:
        entry = summary["divergence_threshold_by_beta"][f"{beta:.4g}"]
        lo, hi = entry["bracket"]
        assert lo < (2 + 2 * beta) / cfg.kappa <= hi and entry["contains_theory"], beta
        np.testing.assert_allclose(hi - lo, spacing, rtol=1e-9)


def test_gd_reaches_the_global_minimum_from_its_gradient_flow_basin(quick):
    _, cfg, _, summary = quick
    for fname in momentum.ESCAPE_FUNCTIONS:
        gd = summary["escape"][fname]["sgd"]["global_fraction"]
        # A grid of 256 starts resolves the basin's share to 1/255 of the domain.
        assert abs(gd["measured"] - gd["theory"]) <= 1.0 / (cfg.escape_starts - 1), fname


def test_momentum_reaches_the_global_minimum_of_x2sinx_more_often_than_gd(quick):
    _, cfg, arrays, summary = quick
    esc = summary["escape"]["x2sinx"]
    gd = esc["sgd"]["global_fraction"]["measured"]
    by_beta = np.array(esc["momentum"]["global_fraction_by_beta"])
    # At least 8 more of the 256 starts (3 percentage points) at the best beta.
    assert by_beta.max() >= gd + 8 / cfg.escape_starts
    assert esc["momentum"]["best"]["beta"] > 0.9
    # Against a float64 NumPy heavy-ball loop from every start: a start on the edge between
    # two outcomes may move (none does in the quick run); allow 2 per beta.
    betas, x0_N = arrays["escape_beta_B"], arrays["x2sinx/x0_N"]
    n = len(x0_N)
    x = _heavy_ball_x2sinx(np.tile(x0_N, len(betas)), np.repeat(betas, n), cfg)
    prob = momentum.escape_problem("x2sinx", cfg)
    labels_BxN = momentum._outcomes(x, np.zeros(len(x), bool), prob, cfg.tol).reshape(-1, n)
    direct_B = (labels_BxN == 0).mean(axis=1)
    np.testing.assert_allclose(by_beta, direct_B, rtol=0, atol=2 / n)
    gain = direct_B.max() - direct_B[0]  # beta = 0 is plain GD
    assert esc["momentum_gain_over_gd"] == pytest.approx(gain, abs=4 / n)


def test_beta_zero_is_plain_gd(quick):
    _, cfg, arrays, _ = quick
    x2 = landscapes.get("x2sinx")
    x0 = arrays["x2sinx/x0_N"][:, None].astype(np.float32)
    gd = sweep.descend(x2.fn, x0, optimizer="sgd", steps=cfg.escape_steps, lr=cfg.lr)
    labels = momentum._outcomes(
        gd.x[:, 0], gd.diverged, momentum.escape_problem("x2sinx", cfg), cfg.tol
    )
    np.testing.assert_array_equal(labels, arrays["x2sinx/momentum/labels_BxN"][0])


def _heavy_ball_x2sinx(x0_N, beta_N, cfg):
    """x [N] after escape_steps of heavy ball on x^2 sin x from x0_N, in float64 NumPy."""

    def grad(x):  # d/dx x^2 sin x
        return 2 * x * np.sin(x) + x**2 * np.cos(x)

    # x_{t+1} = x_t - lr grad(x_t) + beta (x_t - x_{t-1}), x_{-1} = x_0.
    x_prev = x = np.asarray(x0_N, np.float64)
    for _ in range(cfg.escape_steps):
        x, x_prev = x - cfg.lr * grad(x) + beta_N * (x - x_prev), x
    return x


def test_saved_outcomes_match_a_direct_heavy_ball_recurrence(quick):
    _, cfg, arrays, _ = quick
    betas = arrays["escape_beta_B"]
    labels_BxN = arrays["x2sinx/momentum/labels_BxN"]
    x0_N = arrays["x2sinx/x0_N"]
    # Three starts per beta, each inside a stripe of equal outcomes: float32 against
    # float64 may move a start that sits on the edge between two outcomes.
    picks = []
    for b, row in enumerate(labels_BxN):
        inner = np.flatnonzero((row[1:-1] == row[:-2]) & (row[1:-1] == row[2:])) + 1
        picks += [(b, i) for i in inner[:: max(1, len(inner) // 3)][:3]]
    b_P, i_P = np.array(picks).T
    assert len(b_P) >= 2 * len(betas)

    x = _heavy_ball_x2sinx(x0_N[i_P], betas[b_P], cfg)
    prob = momentum.escape_problem("x2sinx", cfg)
    labels_P = momentum._outcomes(x, np.zeros(len(x), bool), prob, cfg.tol)
    np.testing.assert_array_equal(labels_P, labels_BxN[b_P, i_P])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"kappa": 0.5}, "`kappa`"),
        ({"rate_steps": 1}, "`rate_steps`"),
        ({"rate_beta_max": 1.0}, "`rate_beta_max`"),
        ({"lr": -0.01}, "`lr`"),
        ({"adam_lr": float("nan")}, "`adam_lr`"),
        ({"tilt": 2.0}, "`tilt`"),
        ({"escape_starts": 2.5}, "`escape_starts`"),
        ({"gif_beta": 1.0}, "`gif_beta`"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        momentum.Config(**kwargs)
