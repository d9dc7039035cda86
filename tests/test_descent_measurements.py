"""descent's measurements of finished runs and its batched runs against closed forms: rates, the
divergence bracket, the exact step count of gradient descent on quadratics, escapes."""

import numpy as np
import pytest

from sandbox import descent


def _gd_norms(lr: float, c: float, steps: int, x0: float = 1.5) -> np.ndarray:
    """|x_t| of GD on 0.5 c x^2, step by step in float64: x_t+1 = x_t - lr c x_t."""
    x = [x0]
    for _ in range(steps):
        x.append(x[-1] - lr * c * x[-1])
    return np.abs(np.asarray(x))


@pytest.mark.parametrize("lr", [0.1, 0.3, 0.9, 1.1])
@pytest.mark.parametrize("from_half", [False, True])
def test_geometric_rate_of_gd_on_a_quadratic_is_its_factor(lr, from_half):
    # On 0.5 c x^2 every step multiplies x by 1 - lr c: the rate is |1 - lr c| exactly.
    rate = descent.geometric_rate(_gd_norms(lr, 1.0, 60), from_half=from_half)
    assert rate == pytest.approx(abs(1 - lr), rel=1e-12)


def test_geometric_rate_stops_where_the_norms_do():
    # Norms that reach 0 or overflow: only the representable prefix counts.
    norm = np.array([1.0, 0.5, 0.25, 0.0, 0.0])
    assert descent.geometric_rate(norm) == pytest.approx(0.5, rel=1e-15)
    assert descent.geometric_rate(np.array([1.0, 0.0])) == 0.0  # at 0 after one step
    assert descent.geometric_rate(np.array([1.0, 2.0, np.inf])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="`norm_T` must have shape"):
        descent.geometric_rate(np.ones((2, 3)))


def test_fitted_rate_of_heavy_ball_is_its_spectral_radius():
    # Heavy ball on 0.5 x^2 (lambda = 1) with complex roots: the state's norm oscillates
    # around r^t, r = sqrt(beta) (the modulus of both roots of z^2 - (1 + beta - lr) z + beta).
    lr, beta, steps = 0.1, 0.81, 400
    x, prev, norms = 1.0, 1.0, []
    for _ in range(steps):
        norms.append(np.hypot(x, prev))
        x, prev = x - lr * x + beta * (x - prev), x
    norm_T = np.asarray(norms)
    rate = descent.fitted_rate(norm_T[None], np.ones((1, steps), bool))[0]
    # The oscillation moves the fit by 2e-4 here (relative); 2e-3 leaves room.
    assert rate == pytest.approx(np.sqrt(beta), rel=2e-3)
    # A run cut short: only its valid prefix is fitted; fewer than 4 steps in the
    # second half of the prefix give NaN.
    valid = np.arange(steps) < 7  # a window of steps 3..6: 4 steps, enough
    assert np.isfinite(descent.fitted_rate(norm_T[None], valid[None])[0])
    valid = np.arange(steps) < 6  # steps 3..5
    assert np.isnan(descent.fitted_rate(norm_T[None], valid[None])[0])


def test_the_divergence_bracket_holds_two_over_the_curvature():
    # GD on 0.5 c x^2 converges iff lr < 2 / c: measured by running each lr.
    c = 4.0
    lr_L = np.linspace(0.05, 1.0, 40)
    converged_L = np.array([_gd_norms(lr, c, 200)[-1] < 1.5 for lr in lr_L])
    lo, hi = descent.divergence_bracket(lr_L, converged_L)
    assert lo < 2 / c <= hi
    assert hi == lr_L[lr_L > lo].min()  # neighbours on the grid
    shuffled = np.random.default_rng(0).permutation(len(lr_L))
    assert descent.divergence_bracket(lr_L[shuffled], converged_L[shuffled]) == (lo, hi)
    nan_lo, first = descent.divergence_bracket(lr_L, np.zeros(40, bool))
    assert np.isnan(nan_lo) and first == lr_L[0]
    last, nan_hi = descent.divergence_bracket(lr_L, np.ones(40, bool))
    assert last == lr_L[-1] and np.isnan(nan_hi)
    with pytest.raises(ValueError, match="`lr_L` and `converged_L`"):
        descent.divergence_bracket(lr_L, converged_L[:-1])


def _steps_by_enumeration(a0, f, tol, budget):
    t = np.arange(budget + 1)
    g = np.sum((a0[:, None, :] * np.abs(f[:, None, :]) ** t[None, :, None]) ** 2, axis=2)
    ok = g <= tol * tol
    return np.where(ok.any(axis=1), ok.argmax(axis=1), -1)


def test_steps_to_tol_equals_every_step_enumerated():
    # Random quadratics in 3 dimensions with decaying, oscillating and growing modes (the
    # sum then dips and rises again), against the plain enumeration of every t.
    rng = np.random.default_rng(0)
    a0 = rng.normal(size=(500, 3)) * 10.0 ** rng.uniform(-4, 1, (500, 3))
    f = rng.uniform(-1.3, 1.1, (500, 3))
    for tol, budget in ((1e-3, 300), (0.5, 40), (0.0, 10)):
        got = descent.steps_to_tol(a0, f, tol, budget)
        np.testing.assert_array_equal(got, _steps_by_enumeration(a0, f, tol, budget))
    assert (descent.steps_to_tol(a0, f, 1e-3, 300) >= 0).sum() > 100  # both outcomes occur


def test_steps_to_tol_of_one_mode_is_the_logarithm():
    # One mode: |a0| |f|^t <= tol first at t = ceil(log(tol / |a0|) / log |f|).
    a0 = np.array([[2.0], [2.0], [0.5]])
    f = np.array([[0.5], [-0.9], [3.0]])
    theory = np.ceil(np.log(1e-3 / 2.0) / np.log(np.abs(f[:2, 0])))  # 11 and 73
    np.testing.assert_array_equal(descent.steps_to_tol(a0, f, 1e-3, 100)[:2], theory)
    assert descent.steps_to_tol(a0, f, 1e-3, 50)[1] == -1  # 73 steps: over the budget
    assert descent.steps_to_tol(a0, f, 1e-3, 100)[2] == -1  # a growing mode never gets there
    assert descent.steps_to_tol(a0, f, 1.0, 100)[2] == 0  # ... unless it starts there
    # 3^1000 overflows float64: inf is "not reached", without a warning.
    np.testing.assert_array_equal(descent.steps_to_tol(a0, f, 1e-3, 1000), [11, 73, -1])
    with pytest.raises(ValueError, match="`budget`"):
        descent.steps_to_tol(a0, f, 1e-3, -1)
    with pytest.raises(ValueError, match="`tol`"):
        descent.steps_to_tol(a0, f, np.nan, 10)


def test_run_batched_escapes_when_theory_says_and_equals_single_runs():
    # GD on 2 |x|^2 (c = 4) from (1, 0): |x_t| = |1 - 4 lr|^t, so with bound 10 a run with
    # |1 - 4 lr| > 1 leaves after ceil(log 10 / log |1 - 4 lr|) updates; lr < 0.5 converges.
    import jax.numpy as jnp

    def fn(x):
        return 2.0 * jnp.sum(x**2)

    lr_N = np.array([0.45, 0.55, 0.6], np.float32)
    x0_Nx2 = np.tile(np.float32([1.0, 0.0]), (3, 1))
    kw = {"optimizer": "sgd", "steps": 50, "bound": 10.0}
    out = descent.run_batched(fn, jnp.asarray(x0_Nx2), {"lr": jnp.asarray(lr_N)}, **kw)
    np.testing.assert_array_equal(out.diverged, [False, True, True])
    factor = np.abs(1 - 4 * lr_N[1:].astype(np.float64))
    np.testing.assert_array_equal(out.diverged_step[1:] + 1, np.ceil(np.log(10) / np.log(factor)))
    for i in range(3):  # each run as `run` computes it alone
        one = descent.run(fn, jnp.asarray(x0_Nx2[i]), {"lr": jnp.asarray(lr_N[i])}, **kw)
        assert int(one.diverged_step) == int(out.diverged_step[i])
        np.testing.assert_allclose(one.x, out.x[i], rtol=1e-6)
