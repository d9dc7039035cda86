"""sandbox.network against closed forms and plain NumPy: points of parameter space, masked
batch sums, batch-norm statistics recomputed at a point, and full-batch Optax training."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sandbox import network

MOMENTUM = 0.9


class DenseBN(nn.Module):
    """Dense(5) -> BatchNorm -> tanh -> Dense(3): one batch-norm layer whose input is known."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(5)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM)(h)
        return nn.Dense(3)(jnp.tanh(h))


@pytest.fixture(scope="module")
def dense_bn():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((40, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 40), jnp.int32)
    model = DenseBN()
    return model, model.init(jax.random.key(0), x[:1]), x, y


def test_point_is_the_origin_plus_the_weighted_directions_in_order():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        p, d1, d2 = ({"w": jnp.asarray(rng.standard_normal(6))} for _ in range(3))
        c = jnp.asarray([0.3, -1.7])
        got = network.point(p, c, (d1, d2))["w"]
        # Left to right, to the bit: ((p + c0 d1) + c1 d2).
        np.testing.assert_array_equal(got, (p["w"] + 0.3 * d1["w"]) + -1.7 * d2["w"])
        np.testing.assert_array_equal(network.point(p, jnp.zeros(2), (d1, d2))["w"], p["w"])


def test_masked_sums_equal_a_numpy_log_softmax_over_the_real_rows():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((9, 4)).astype(np.float32)
    y = rng.integers(0, 4, 9).astype(np.int32)
    mask = np.arange(9) < 6  # three rows of padding
    loss, correct = network.masked_sums(jnp.asarray(logits), jnp.asarray(y), jnp.asarray(mask))
    z = logits.astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    expected = -logp[np.arange(9), y][mask].sum()
    assert float(loss) == pytest.approx(expected, rel=1e-6)  # float32 sums of 6 terms
    assert int(correct) == int(np.sum((z.argmax(1) == y) & mask))
    assert correct.dtype == jnp.int32


def test_batch_stats_are_the_mean_and_variance_of_the_layers_input(dense_bn):
    model, v, x, _ = dense_bn
    stats = network.batch_stats(model, v["params"], x, momentum=MOMENTUM)
    k = v["params"]["Dense_0"]
    h = np.asarray(x, np.float64) @ np.asarray(k["kernel"], np.float64) + np.asarray(k["bias"])
    bn = stats["BatchNorm_0"]
    # float32 passes: 1e-5 relative (the variance divides by 1 - momentum = 0.1 exactly once).
    np.testing.assert_allclose(bn["mean"], h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn["var"], h.var(0), rtol=1e-5, atol=1e-6)


def test_metrics_use_the_recomputed_statistics(dense_bn):
    model, v, x, y = dense_bn
    fn = network.metrics(model, {"train": (x, y), "half": (x[:20], y[:20])}, x, momentum=MOMENTUM)
    out = fn(v["params"])
    assert set(out) == {"train_loss", "train_acc", "half_loss", "half_acc"}
    # Eval mode with the training set's own statistics is training mode on the whole set.
    logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    assert float(out["train_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(out["train_acc"]) == float(jnp.mean(jnp.argmax(logits, -1) == y))
    loss = network.eval_loss(
        model,
        {**v, "batch_stats": network.batch_stats(model, v["params"], x, momentum=MOMENTUM)},
        x,
        y,
    )
    assert float(loss(v["params"])) == pytest.approx(float(out["train_loss"]), rel=1e-6)


def test_fit_full_batch_is_gradient_descent_on_a_quadratic():
    # GD on 0.5 c |w|^2: w_T = (1 - lr c)^T w_0.
    c, lr, steps = 3.0, 0.1, 25
    w0 = {"w": jnp.asarray([1.0, -2.0], jnp.float32)}
    w = network.fit_full_batch(lambda p: 0.5 * c * jnp.sum(p["w"] ** 2), w0, optax.sgd(lr), steps)
    np.testing.assert_allclose(w["w"], (1 - lr * c) ** steps * np.array([1.0, -2.0]), rtol=1e-5)
    with pytest.raises(ValueError, match="`steps`"):
        network.fit_full_batch(lambda p: jnp.sum(p["w"]), w0, optax.sgd(lr), 0)
