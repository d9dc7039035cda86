"""connect: Bezier curves between two minima, their trained bend, barriers and the plane."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox import connect

# Two minima of the ring loss (|w|^2 - 1)^2 at (-1, 0) and (1, 0): the straight line between
# them crosses the ring's centre, a barrier of height 1; the half circle joins them at loss 0.
W1 = {"a": jnp.array([-1.0], jnp.float32), "b": jnp.array(0.0, jnp.float32)}
W2 = {"a": jnp.array([1.0], jnp.float32), "b": jnp.array(0.0, jnp.float32)}


def _ring(params):
    r2 = params["a"][0] ** 2 + params["b"] ** 2
    return (r2 - 1.0) ** 2


def _metrics(params):
    return {"loss": _ring(params)}


def _minibatch_loss(params, key):
    # A stochastic loss like a minibatch's: the ring loss times a positive random factor
    # with mean 1.
    return _ring(params) * jax.random.uniform(key, minval=0.5, maxval=1.5)


def test_the_curve_starts_and_ends_exactly_at_the_two_networks():
    bend = {"a": jnp.array([0.3]), "b": jnp.array(2.0)}
    for t, want in ((0.0, W1), (1.0, W2)):
        got = connect.bezier(jnp.float32(t), W1, bend, W2)
        jax.tree.map(np.testing.assert_array_equal, got, want)
        jax.tree.map(np.testing.assert_array_equal, connect.linear(jnp.float32(t), W1, W2), want)


def test_trained_bend_has_a_lower_barrier_than_the_line():
    ts = np.linspace(0, 1, 21)
    line = connect.along(_metrics, W1, W2, ts)
    # The line passes through the centre (t = 0.5): loss 1 there, 0 at both ends.
    assert connect.barrier(line["loss"]) == pytest.approx(1.0, abs=1e-6)
    # From a bend just off the line (the midpoint itself is a saddle of E_t L by symmetry).
    start = {"a": jnp.array([0.0]), "b": jnp.array(0.1)}
    bend, hist = connect.train_bend(
        _minibatch_loss,
        W1,
        W2,
        key=jax.random.key(0),
        steps=400,
        lr=0.05,
        bend=start,
        progress=False,
    )
    curve = connect.along(_metrics, W1, W2, ts, bend=bend)
    assert len(hist.loss_S) == 400 and np.all((hist.t_S >= 0) & (hist.t_S <= 1))
    # A quadratic Bezier cannot follow the circle exactly and leaves a ripple: measured
    # 0.052 (bend at (-0.02, 2.11)); the line's barrier is 1.
    assert connect.barrier(curve["loss"]) < 0.1
    assert float(bend["b"]) > 1.0  # the bend moved off the line, round the centre


def test_plane_coordinates_reproduce_the_curve():
    bend = {"a": jnp.array([0.2]), "b": jnp.array(1.5)}
    basis = connect.plane_basis(W1, W2, bend)
    np.testing.assert_allclose(basis.w2_xy, [2.0, 0.0], atol=1e-6)
    ts = np.linspace(0, 1, 7)
    xy = connect.plane_coords(basis, ts)
    on_plane = connect.plane(_metrics, W1, basis, xy)
    on_curve = connect.along(_metrics, W1, W2, ts, bend=bend)
    # phi(t) is an affine combination of w1, w2 and the bend, so it lies on their plane:
    # the two evaluations agree to float32 rounding (rtol 1e-5).
    np.testing.assert_allclose(on_plane["loss"], on_curve["loss"], rtol=1e-5, atol=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="`w2`"):
        connect.along(_metrics, W1, {"a": jnp.zeros(2)}, [0.5])
    with pytest.raises(ValueError, match="`ts`"):
        connect.along(_metrics, W1, W2, [])
    with pytest.raises(ValueError, match="`steps`"):
        connect.train_bend(_minibatch_loss, W1, W2, key=jax.random.key(0), steps=0, lr=0.1)
    with pytest.raises(ValueError, match="`lr`"):
        connect.train_bend(_minibatch_loss, W1, W2, key=jax.random.key(0), steps=1, lr=-1.0)
    with pytest.raises(ValueError, match="`bend`"):
        connect.plane_basis(W1, W2, connect.linear(0.5, W1, W2))
    with pytest.raises(ValueError, match="`values_T`"):
        connect.barrier([1.0])


# Another network: the same structure with a leaf of another shape, and another structure.
_RESHAPED = {"a": jnp.zeros(2, jnp.float32), "b": jnp.array(0.0, jnp.float32)}
_OTHER = {"c": jnp.zeros(1, jnp.float32)}


@pytest.mark.parametrize("other", [_RESHAPED, _OTHER], ids=["shape", "structure"])
def test_mismatched_networks_are_one_line_naming_them(other):
    key = jax.random.key(0)
    bend = {"a": jnp.array([0.0]), "b": jnp.array(1.0)}
    calls = [
        ("`w2`", lambda: connect.along(_metrics, W1, other, [0.5])),
        ("`bend`", lambda: connect.along(_metrics, W1, W2, [0.5], bend=other)),
        ("`w2`", lambda: connect.train_bend(_minibatch_loss, W1, other, key=key, steps=1, lr=0.1)),
        ("`w2`", lambda: connect.plane_basis(W1, other, bend)),
        ("`bend`", lambda: connect.plane_basis(W1, W2, other)),
        (
            "`w1`",
            lambda: connect.plane(_metrics, other, connect.plane_basis(W1, W2, bend), [[0.0, 0.0]]),
        ),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=name) as e:
            call()
        assert "\n" not in str(e.value), str(e.value)


def test_integer_parameters_are_refused_before_t_is_rounded():
    # With integer leaves t = 0.5 would be cast to 0 and the "curve" would be w1 throughout.
    w1 = {"a": jnp.array([-1]), "b": jnp.array(0)}
    w2 = {"a": jnp.array([1]), "b": jnp.array(0)}
    with pytest.raises(ValueError, match="`w1` must have floating-point leaves") as e:
        connect.along(_metrics, w1, w2, [0.5])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="`w2` must have floating-point leaves"):
        connect.along(_metrics, W1, {"a": jnp.array([1]), "b": jnp.array(0)}, [0.5])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_plane_through_a_non_finite_network_names_it(bad):
    w2 = {"a": jnp.array([bad], jnp.float32), "b": jnp.array(0.0, jnp.float32)}
    bend = {"a": jnp.array([0.0], jnp.float32), "b": jnp.array(1.0, jnp.float32)}
    with pytest.raises(ValueError, match="`w2` must be finite"):
        connect.plane_basis(W1, w2, bend)
    with pytest.raises(ValueError, match="`bend` must be finite"):
        connect.plane_basis(W1, W2, {"a": jnp.array([0.0]), "b": jnp.array(bad, jnp.float32)})
