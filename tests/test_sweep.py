"""sweep.descend against theory and against a plain loop of single runs."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import run_on_devices

from sandbox import descent, sweep


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def _starts(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-6, 6, (n, 2)).astype(np.float32)


@pytest.mark.parametrize("record_every", [0, 50])
@pytest.mark.parametrize("optimizer, atol", [("momentum", 1e-5), ("adam", 1e-3)])
def test_vmapped_sweep_equals_a_loop_of_single_runs(optimizer, atol, record_every):
    x0 = _starts(37)
    lr = np.geomspace(1e-4, 1e-2, 37).astype(np.float32)
    kw = dict(optimizer=optimizer, steps=200, tol=1e-2)
    got = sweep.descend(himmelblau, x0, lr=lr, record_every=record_every, **kw)
    one = jax.jit(
        lambda x, lr: descent.run(himmelblau, x, {"lr": lr}, record_every=record_every, **kw)
    )
    for i in range(len(x0)):
        want = one(x0[i], lr[i])
        # Batched and unbatched code round differently (vector FMA, reduction order).
        # Momentum contracts those differences; Adam divides by sqrt(nu), which amplifies
        # them where the gradient is tiny, so its tolerance is looser.
        np.testing.assert_allclose(got.x[i], want.x, rtol=0, atol=atol)
        if record_every:
            np.testing.assert_allclose(got.path[i], want.path, rtol=0, atol=atol)
        assert abs(int(got.steps_to_tol[i]) - int(want.steps_to_tol)) <= 1


def test_fast_path_equals_the_exactly_checked_path():
    # Himmelblau GD with lr up to 0.06 diverges from many starts; the fast path flags those
    # every 4 updates and re-runs them with per-update checks, so every field agrees with a
    # sweep that checks every update.
    x0 = _starts(500, seed=5)
    lr = np.geomspace(1e-3, 6e-2, 500).astype(np.float32)
    kw = dict(steps=300, lr=lr, tol=1e-3, bound=100.0)
    fast = sweep.descend(himmelblau, x0, **kw)
    exact = sweep.descend(himmelblau, x0, check_every=1, **kw)
    exact_only = sweep.descend(himmelblau, x0, exact=True, **kw)
    for name in ("x", "diverged", "diverged_step"):
        np.testing.assert_array_equal(
            getattr(exact_only, name)[fast.diverged], getattr(fast, name)[fast.diverged]
        )
    recorded = sweep.descend(himmelblau, x0, record_every=300, **kw)
    assert 50 < fast.diverged.sum() < 450
    # Diverged runs of both go through the same per-update program: identical outcomes.
    np.testing.assert_array_equal(fast.diverged, exact.diverged)
    np.testing.assert_array_equal(fast.diverged_step, exact.diverged_step)
    np.testing.assert_array_equal(fast.x[fast.diverged], exact.x[exact.diverged])
    # The fast and the recording loops are fused differently, so XLA may contract a
    # multiply-add in one and not the other. Below lr = 0.0149 = 2 / lambda_max at
    # Himmelblau's sharpest minimum every run settles and such one-ulp differences die out;
    # above it runs that do not diverge bounce chaotically and amplify them.
    stable = lr < 0.0149
    for other in (exact, recorded):
        np.testing.assert_allclose(fast.x[stable], other.x[stable], rtol=0, atol=1e-4)
        # A gradient norm right at `tol` can cross it one step apart.
        np.testing.assert_allclose(
            fast.steps_to_tol[stable], other.steps_to_tol[stable], rtol=0, atol=1
        )
    np.testing.assert_array_equal(fast.diverged[stable], recorded.diverged[stable])
    assert np.all(np.abs(fast.x[fast.diverged]) <= 100.0)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_results_do_not_depend_on_chunk_size(chunk_size):
    x0 = _starts(300, seed=1)
    lr = np.geomspace(1e-3, 6e-2, 300).astype(np.float32)
    ref = sweep.descend(himmelblau, x0, steps=300, lr=lr, tol=1e-3)
    got = sweep.descend(himmelblau, x0, steps=300, lr=lr, tol=1e-3, chunk_size=chunk_size)
    # Every run goes through the same vectorized code whatever the chunk (chunks are padded
    # to whole vector blocks), so even the chaotic high-lr runs agree bit for bit.
    np.testing.assert_array_equal(got.x, ref.x)
    np.testing.assert_array_equal(got.diverged, ref.diverged)
    np.testing.assert_array_equal(got.diverged_step, ref.diverged_step)
    np.testing.assert_array_equal(got.steps_to_tol, ref.steps_to_tol)


@pytest.mark.slow  # make test keeps test_engine's 2 against 3 devices
def test_results_do_not_depend_on_device_count(tmp_path):
    # Eight simulated CPU devices need a fresh process: XLA reads the flag at start-up.
    script = textwrap.dedent(
        """
        import sys, numpy as np, jax
        from sandbox import sweep
        f = lambda x: (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2
        x0 = np.random.default_rng(2).uniform(-6, 6, (203, 2)).astype(np.float32)
        lr = np.geomspace(1e-3, 6e-2, 203).astype(np.float32)
        r = sweep.descend(f, x0, optimizer="momentum", steps=250, lr=lr, momentum=0.5,
                          chunk_size=64)
        np.savez(sys.argv[1], x=r.x, diverged=r.diverged, n=jax.device_count())
        """
    )
    outs = {}
    for count in (1, 8):
        outs[count] = run_on_devices(script, count, tmp_path / f"d{count}.npz")
        assert int(outs[count]["n"]) == count
    np.testing.assert_array_equal(outs[8]["x"], outs[1]["x"])
    np.testing.assert_array_equal(outs[8]["diverged"], outs[1]["diverged"])


@pytest.mark.parametrize("c", [0.5, 3.0, 40.0])
def test_gd_on_a_quadratic_converges_iff_lr_below_two_over_curvature(c):
    f = lambda x: 0.5 * c * jnp.sum(x**2)  # noqa: E731
    lr = np.array([0.9, 1.1]) * 2 / c
    r = sweep.descend(f, np.ones((2, 1), np.float32), steps=2000, lr=lr, bound=1e3)
    # |1 - lr c| = 0.8 contracts to ~1e-194 (0 in float32); 1.2 grows past the bound.
    assert abs(r.x[0, 0]) < 1e-6 and not r.diverged[0]
    assert r.diverged[1]


def test_divergence_freezes_the_run_at_its_last_good_point_and_spares_the_others():
    f = lambda x: jnp.sum(x**2)  # noqa: E731  GD: x_t+1 = (1 - 2 lr) x_t
    x0 = np.ones((3, 1), np.float32)
    lr = np.array([1.5, 0.25, 1.5], np.float32)  # factors -2, 0.5, -2
    r = sweep.descend(f, x0, steps=50, lr=lr, bound=1e3)
    # x_t = (-2)^t: x_10 = 1024 leaves the bound, so update 9 diverges and x_9 = -512 stays.
    np.testing.assert_array_equal(r.diverged, [True, False, True])
    np.testing.assert_array_equal(r.diverged_step, [9, -1, 9])
    np.testing.assert_allclose(r.x[[0, 2], 0], [-512.0, -512.0], rtol=0)
    alone = sweep.descend(f, x0[1:2], steps=50, lr=0.25)
    np.testing.assert_array_equal(r.x[1], alone.x[0])
    # Non-finite growth (inf / nan) is caught the same way.
    r = sweep.descend(f, x0[:1], steps=500, lr=1.5, bound=3e38)
    assert r.diverged[0] and np.all(np.isfinite(r.x))


def test_recorded_path_matches_the_recurrence_and_steps_to_tol():
    f = lambda x: jnp.sum(x**2)  # noqa: E731
    x0 = np.array([[1.0, -2.0]], np.float32)
    r = sweep.descend(f, x0, steps=20, lr=0.25, record_every=4, tol=1e-3)
    t = np.arange(0, 21, 4)
    np.testing.assert_allclose(r.path[0], x0[0] * 0.5 ** t[:, None], rtol=1e-6)
    np.testing.assert_allclose(r.losses[0], 5.0 * 0.25**t, rtol=1e-6)
    # |grad| = 2 |x0| 0.5^t = 2 sqrt(5) 0.5^t <= 1e-3 first at t = ceil(log2(2 sqrt5 / 1e-3)).
    assert r.steps_to_tol[0] == int(np.ceil(np.log2(2 * np.sqrt(5) / 1e-3)))
    # A path whose length is not a multiple of record_every still runs every step.
    r2 = sweep.descend(f, x0, steps=22, lr=0.25, record_every=4)
    assert r2.path.shape == (1, 6, 2)
    np.testing.assert_allclose(r2.x[0], x0[0] * 0.5**22, rtol=1e-6)


def test_no_recompilation_for_new_values_of_the_same_shapes():
    traces = []

    def f(x):
        traces.append(1)  # runs only while tracing
        return jnp.sum(x**2)

    sweep.descend(f, _starts(16), steps=10, lr=0.1, tol=1e-2)
    sweep.descend(f, _starts(16), steps=10, lr=np.full(16, 0.1, np.float32))
    n = len(traces)
    sweep.descend(f, _starts(16, seed=3), steps=10, lr=0.3, tol=1e-3, bound=10.0)
    sweep.descend(f, _starts(16, seed=4), steps=10, lr=np.linspace(0.01, 0.2, 16))
    assert len(traces) == n


def test_named_landscape_equals_its_function():
    from sandbox import landscapes

    x0 = _starts(10)
    a = sweep.descend("himmelblau", x0, steps=100, lr=0.01)
    b = sweep.descend(landscapes.get("himmelblau").fn, x0, steps=100, lr=0.01)
    np.testing.assert_array_equal(a.x, b.x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="nope"), "unknown optimizer 'nope'.*adam"),
        (dict(lr=0.0), "`lr` must be positive"),
        (dict(lr=float("nan")), "`lr` must be finite"),
        (dict(lr=np.array([0.1, -0.1, 0.1])), "`lr` must be positive"),
        (dict(lr=np.ones(4)), r"`lr` must be a scalar or have shape \[3\]"),
        (dict(steps=0), r"`steps` must be an integer in \[1, 2147483647\]"),
        (dict(steps=2**40), r"`steps` must be an integer in \[1, 2147483647\]"),
        (dict(steps=2.5), "`steps` must be an integer"),
        (dict(record_every=200), "`record_every` must be at most `steps`"),
        (dict(x0=np.ones(3)), r"`x0` must have shape \[N, d\]"),
        (dict(x0=np.ones((0, 2))), r"`x0` must have shape \[N, d\]"),
        (dict(x0=np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]])), "`x0` must be finite; row 1"),
        (dict(fn="nope"), "unknown landscape 'nope'"),
        (dict(chunk_size=0), "`chunk_size` must be an integer >= 1"),
        (dict(fn="himmelblau", x0=np.zeros((3, 3))), r"`x0` must have shape \[N, 2\] for the 2-D"),
        (dict(fn=lambda x: x**2), r"`fn` must return a scalar for x of shape \[2\], got \(2,\)"),
        (dict(fn=lambda x, y: x[0] * y), "`fn` must take one point x of shape"),
        (dict(fn=lambda x: x[0] if x[0] > 0 else -x[0]), "`fn` must be traceable by JAX"),
        (dict(tol=-1.0), "`tol` must be a positive"),
        (dict(momentum=0.9), "unknown hyperparameter"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_argument(kwargs, match):
    args = dict(fn=himmelblau, x0=np.zeros((3, 2)), steps=100, lr=0.1)
    args.update(kwargs)
    fn, x0 = args.pop("fn"), args.pop("x0")
    with pytest.raises(ValueError, match=match):
        sweep.descend(fn, x0, **args)


def test_grid_is_row_major_with_y_along_rows():
    g = sweep.grid([[-1, 1], [0, 2]], (3, 2))
    np.testing.assert_array_equal(g, [[-1, 0], [1, 0], [-1, 1], [1, 1], [-1, 2], [1, 2]])
    with pytest.raises(ValueError, match="`bounds`"):
        sweep.grid([[1, -1], [0, 1]], 4)


def test_same_inputs_give_the_same_arrays():
    x0 = _starts(50)
    a = sweep.descend(himmelblau, x0, optimizer="adam", steps=100, lr=0.01)
    b = sweep.descend(himmelblau, x0.copy(), optimizer="adam", steps=100, lr=0.01)
    for name in ("x", "loss", "grad_norm", "diverged"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    json.dumps(a.x.tolist())  # plain floats: results serialize


def test_ten_million_runs_in_bounded_chunks():
    # 10^7 runs go through fixed-size chunks (one compilation); rows taken out and run alone
    # come out bit for bit the same.
    n = 10_000_000
    x0 = np.random.default_rng(7).uniform(-6, 6, (n, 2)).astype(np.float32)
    r = sweep.descend("himmelblau", x0, steps=20, lr=0.01)
    assert r.x.shape == (n, 2) and not r.diverged.any()
    rows = np.random.default_rng(8).choice(n, 100, replace=False)
    alone = sweep.descend("himmelblau", x0[rows], steps=20, lr=0.01)
    np.testing.assert_array_equal(r.x[rows], alone.x)


def test_log_uniform_draws_are_uniform_in_log_space():
    # 4096 draws in [1e-4, 1e-1]: log10 of each is uniform on [-4, -1]. The Kolmogorov-Smirnov
    # distance to that uniform law is below 1.63 / sqrt(n) = 0.025 with probability 0.99
    # (fixed key: the draw is one number, checked once).
    lr = sweep.log_uniform(jax.random.key(0), 4096, 1e-4, 1e-1)
    assert lr.shape == (4096,) and np.all((lr >= 1e-4) & (lr <= 1e-1))
    u = np.sort((np.log10(lr.astype(np.float64)) + 4) / 3)
    n = len(u)
    ks = max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n))
    assert ks < 1.63 / np.sqrt(n), ks
    np.testing.assert_array_equal(lr, sweep.log_uniform(jax.random.key(0), 4096, 1e-4, 1e-1))
    with pytest.raises(ValueError, match="0 < lo < hi"):
        sweep.log_uniform(jax.random.key(0), 8, 1e-1, 1e-4)
