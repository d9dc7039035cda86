"""fractal: the hand gradient, the score, train == score(losses), boundaries, box counting."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox import fractal
from sandbox.models import mlp


@pytest.fixture
def problem8(key):
    with jax.enable_x64(True):
        yield fractal.problem(key, 8)


def test_problem_has_as_many_points_as_weights(key):
    with jax.enable_x64(True):
        params, data = fractal.problem(key, 5)
    assert [w.shape for w in params] == [(5, 5), (5, 1)]
    assert data.x.shape == (30, 5) and data.y.shape == (30, 1)
    assert params[0].dtype == data.x.dtype == jnp.float64


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_hand_gradient_equals_autodiff(problem8, key, scale):
    with jax.enable_x64(True):
        params, data = problem8
        params = tuple(scale * w for w in params)  # also deep in tanh saturation
        value, grads = fractal.loss_and_grad(params, data)
        want_value, want_grads = jax.value_and_grad(fractal.loss)(params, data)
        np.testing.assert_allclose(value, want_value, rtol=1e-13, atol=0)
        for g, w in zip(grads, want_grads, strict=True):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-15 * float(jnp.abs(w).max()))


def test_losses_are_gd_with_one_lr_per_layer(problem8):
    with jax.enable_x64(True):
        params, data = problem8
        lr1, lr2 = 3.0, 0.5
        loss_T = fractal.losses(params, data, lr1, lr2, 2)
        assert loss_T.shape == (3,)
        p = params
        for t in range(3):
            np.testing.assert_allclose(loss_T[t], fractal.loss(p, data), rtol=1e-13)
            g = jax.grad(fractal.loss)(p, data)
            p = (p[0] - lr1 * g[0], p[1] - lr2 * g[1])


def _curve(v_T):
    return jnp.asarray(np.asarray(v_T, np.float64) * 2.5)  # loss_T[0] = 2.5


def test_score_of_a_converging_run_is_its_speed():
    with jax.enable_x64(True):
        v = 0.5 ** np.arange(11)  # T = 10
        got = float(fractal.score(_curve(v), window=3))
        np.testing.assert_allclose(got, 1 - np.mean(v[1:]), rtol=1e-14)
        # A loss that went up and came back down still counts, by the last `window` steps.
        v = np.array([1.0, 3.0, 5.0, 2.0, 0.5, 0.4, 0.3])
        np.testing.assert_allclose(
            float(fractal.score(_curve(v), window=3)), 1 - np.mean(np.minimum(v[1:], 1)), rtol=1e-14
        )


def test_score_of_a_diverging_run_counts_the_steps_left():
    with jax.enable_x64(True):
        t_total = 10
        for t_b in (1, 4, 10):
            v = np.ones(t_total + 1)
            v[t_b:] = np.inf  # inf from step t_b on
            got = float(fractal.score(_curve(v), window=3))
            assert got == pytest.approx(-(t_total + 2 - t_b) / (t_total + 1), rel=1e-14)
        # NaN counts as blown up; a bounded loss that does not go down is just below 0.
        v = np.ones(t_total + 1)
        v[5] = np.nan
        assert float(fractal.score(_curve(v), window=3)) == pytest.approx(-7 / 11)
        flat = float(fractal.score(_curve(np.ones(t_total + 1)), window=3))
        assert flat == pytest.approx(-1 / 11)
        # Blown up once is diverged for good, even if the loss comes back.
        v = np.array([1.0, 2e6, 0.1, 0.1, 0.1])
        assert float(fractal.score(_curve(v), window=2)) == pytest.approx(-5 / 5)


def test_score_bad_window():
    with pytest.raises(ValueError, match="`window`"):
        fractal.score(jnp.ones(5), window=5)


# (lr1, lr2) pairs well inside each region: fast, slow, bounded-flat and quick blow-up.
PAIRS = [(10.0, 3.0), (0.1, 0.1), (1e6, 1.0), (10.0, 1000.0), (100.0, 100.0)]


def test_train_equals_score_of_losses(problem8):
    with jax.enable_x64(True):
        params, data = problem8
        steps = 120
        train = jax.jit(lambda a, b: fractal.train(params, data, a, b, steps, block=7))
        curve = jax.jit(lambda a, b: fractal.score(fractal.losses(params, data, a, b, steps)))
        got = np.array([float(train(a, b)) for a, b in PAIRS])
        want = np.array([float(curve(a, b)) for a, b in PAIRS])
    assert np.all(np.isfinite(got))
    assert (got > 0).sum() >= 2 and (got < 0).sum() >= 2  # both regimes are covered
    # The same updates in the same order; only the sums of the score are accumulated in a
    # different order (one by one vs pairwise): float64 rounding, far below 1e-12.
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_boundary_marks_both_sides_of_a_change():
    a = np.zeros((5, 6), bool)
    a[:, 3:] = True
    b = fractal.boundary(a)
    want = np.zeros_like(a)
    want[:, 2:4] = True
    np.testing.assert_array_equal(b, want)
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    assert fractal.boundary(dot).sum() == 5  # the pixel and its 4 neighbours
    assert not fractal.boundary(np.ones((4, 4), bool)).any()


def _line(n, diagonal=False):
    m = np.zeros((n, n), bool)
    if diagonal:
        m[np.arange(n), np.arange(n)] = True
    else:
        m[n // 3, :] = True
    return m


def _carpet(level):  # Sierpinski carpet on a 3^level grid: dimension log 8 / log 3
    m = np.ones((1, 1), bool)
    for _ in range(level):
        z = np.zeros_like(m)
        m = np.block([[m, m, m], [m, z, m], [m, m, m]])
    return m


def _cantor_dust(level):  # product of two Cantor sets: dimension log 4 / log 3
    c = np.ones(1, bool)
    for _ in range(level):
        c = np.concatenate([c, np.zeros_like(c), c])
    return c[:, None] & c[None, :]


def _sierpinski_triangle(level):  # Pascal's triangle mod 2: dimension log 3 / log 2
    n = 2**level
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return (i & j) == 0


@pytest.mark.parametrize(
    "mask, sizes, want, atol",
    [
        # Exact self-similar sets on box-aligned grids: counts are exact powers.
        (_line(256), [1, 2, 4, 8, 16, 32], 1.0, 1e-12),
        (_line(256, diagonal=True), [1, 2, 4, 8, 16, 32], 1.0, 1e-12),
        (np.ones((256, 256), bool), [1, 2, 4, 8, 16, 32], 2.0, 1e-12),
        (_carpet(5), [1, 3, 9, 27], math.log(8) / math.log(3), 1e-12),
        (_cantor_dust(5), [1, 3, 9, 27], math.log(4) / math.log(3), 1e-12),
        (_sierpinski_triangle(8), [1, 2, 4, 8, 16, 32], math.log(3) / math.log(2), 1e-12),
        # Sizes that do not divide the image: padded boxes, the line still gives ~1.
        (_line(250), [3, 5, 7, 11, 13], 1.0, 0.03),
    ],
)
def test_box_counting_dimension_of_known_sets(mask, sizes, want, atol):
    dim, fit = fractal.box_counting_dimension(mask, sizes)
    assert dim == pytest.approx(want, abs=atol)
    assert fit.sizes.tolist() == sorted(sizes) and len(fit.counts) == len(sizes)


def test_box_counting_dimension_of_a_circle_and_of_noise():
    n = 512
    yy, xx = np.mgrid[:n, :n]
    disk = (xx - n / 2) ** 2 + (yy - n / 2) ** 2 < (0.4 * n) ** 2
    dim, _ = fractal.box_counting_dimension(fractal.boundary(disk), [2, 4, 8, 16, 32])
    # A smooth curve, but digital: the boundary is two pixels thick (both sides of the edge)
    # and curved, which tilts the slope by a few percent at these sizes (1.03 to 1.07 for
    # 256 to 1024 pixels), against 1.5 to 2 for the fractals of the study.
    assert dim == pytest.approx(1.0, abs=0.1)
    noise = np.random.default_rng(0).random((n, n)) < 0.5
    dim, _ = fractal.box_counting_dimension(noise, [2, 4, 8, 16, 32])
    # Fills the plane at every scale: a 2x2 box is empty with probability 1/16 only.
    assert 1.95 < dim <= 2.0


@pytest.mark.parametrize(
    "mask, sizes, match",
    [
        (np.ones((8, 8), bool), [2], "`sizes`"),
        (np.ones((8, 8), bool), [2, 16], "`sizes`"),
        (np.ones((8, 8), bool), [0, 2], "`sizes`"),
        (np.ones((8, 8), bool), [1.5, 2], "`sizes`"),
        (np.zeros((8, 8), bool), [1, 2], "`mask_HxW`"),
        (np.ones(8, bool), [1, 2], "`mask_HxW`"),
    ],
)
def test_box_counting_bad_input(mask, sizes, match):
    with pytest.raises(ValueError, match=match):
        fractal.box_counting_dimension(mask, sizes)


def test_train_rejects_deeper_networks(key):
    params = mlp.init(key, (3, 3, 3, 1))
    data = fractal.Data(jnp.ones((4, 3)), jnp.ones((4, 1)))
    with pytest.raises(ValueError, match="`params`"):
        fractal.train(params, data, 1.0, 1.0, 10)


def _bad_inputs(params, data):
    w1, w2 = params
    nan, x, y = float("nan"), data.x, data.y
    return [
        (dict(lr1=nan), "`lr1`"),
        (dict(lr1=-1.0), "`lr1`"),
        (dict(lr2=nan), "`lr2`"),
        (dict(lr2=-0.5), "`lr2`"),
        (dict(lr2=float("inf")), "`lr2`"),
        (dict(lr1=jnp.array([1.0, 2.0])), "`lr1`"),  # one rate per call (vmap for more)
        (dict(lr1=1j), "`lr1`"),
        (dict(lr2=True), "`lr2`"),
        (dict(steps=1.5), "`steps`"),
        (dict(steps=2**40), "`steps`"),
        (dict(steps=0), "`steps`"),
        (dict(data=fractal.Data(x[:0], y[:0])), "`data`"),
        (dict(data=fractal.Data(x, y[:-1])), "`data`"),
        (dict(data=fractal.Data(x[:, :-1], y)), "`data`"),
        (dict(data=fractal.Data(x, jnp.concatenate([y, y], 1))), "`data`"),
        (dict(params=(w1.astype(jnp.int32), w2)), "`params`"),
        (dict(params=(w1, w2.astype(jnp.int32))), "`params`"),
        (dict(data=fractal.Data(x.astype(jnp.int32), y)), "`data`"),
    ]


def test_train_refuses_bad_input_naming_it_before_any_work(problem8, monkeypatch):
    params, data = problem8
    calls = []
    real = fractal._step
    monkeypatch.setattr(fractal, "_step", lambda *a: calls.append(1) or real(*a))
    with jax.enable_x64(True):
        for change, name in _bad_inputs(params, data):
            kw = {**dict(params=params, data=data, lr1=1.0, lr2=10.0, steps=30), **change}
            with pytest.raises(ValueError, match=name):
                fractal.train(kw["params"], kw["data"], kw["lr1"], kw["lr2"], kw["steps"])
            if change.get("steps") != 0:  # losses(): the same checks (0 steps is allowed)
                with pytest.raises(ValueError, match=name):
                    fractal.losses(kw["params"], kw["data"], kw["lr1"], kw["lr2"], kw["steps"])
    assert calls == []  # refused before a single update was traced


def test_init_vs_lr_grid_is_train_on_offset_weights(problem8):
    # The paper's second phase space: an offset added to W1's initial weights (columns)
    # against one lr for both layers (rows), each point `train` called on its own.
    params, data = problem8
    offsets, lrs = np.array([0.1, 3.0, 30.0]), np.array([2.0, 25.0, 40.0])
    with jax.enable_x64(True):
        grid = fractal.score_grid(
            params, data, offsets, lrs, steps=60, batch_size=4, phase_space="init_vs_lr"
        )
        one = jax.jit(lambda p, lr: fractal.train(p, data, lr, lr, 60))
        want = np.array(
            [[float(one(fractal.offset_init(params, o), b)) for o in offsets] for b in lrs]
        )
    np.testing.assert_array_equal(fractal.offset_init(params, 2.0)[0], params[0] + 2.0)
    assert (want > 0).any() and (want < 0).any()  # both regimes
    # Vmapped against one by one: the same float64 updates up to reduction order, which the
    # dynamics near the boundary amplify (measured 2e-9 relative at offset 3, lr 25).
    np.testing.assert_array_equal(grid > 0, want > 0)
    np.testing.assert_allclose(grid, want, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="`phase_space`"):
        fractal.score_grid(params, data, offsets, lrs, steps=60, batch_size=4, phase_space="x")


def test_boundary_of_integer_labels():
    labels = np.array([[0, 0, 1], [0, 2, 1], [0, 0, 1]])
    want = np.array([[0, 1, 1], [1, 1, 1], [0, 1, 1]], bool)
    np.testing.assert_array_equal(fractal.boundary(labels), want)
    # Only the classes matter, not their values: bool is two classes.
    two = np.where(labels == 1, 7, 3)
    np.testing.assert_array_equal(fractal.boundary(labels == 1), fractal.boundary(two))
    np.testing.assert_array_equal(fractal.boundary(labels == 1)[:, 1:], True)
