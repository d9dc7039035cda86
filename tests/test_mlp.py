"""models.mlp: shapes, init statistics, the mean-field forward pass, bad widths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox.models import mlp


def test_init_shapes_and_count(key):
    params = mlp.init(key, (3, 5, 4, 2))
    assert [w.shape for w in params] == [(3, 5), (5, 4), (4, 2)]
    assert mlp.num_params(params) == 15 + 20 + 8


def test_init_is_standard_normal(key):
    (w,) = mlp.init(key, (200, 300))
    # 60,000 draws: the standard error of the mean is 0.004 and of the std 0.003; 5 sigma.
    assert abs(float(jnp.mean(w))) < 0.02
    assert abs(float(jnp.std(w)) - 1.0) < 0.015


def test_init_dtype_follows_x64(key):
    with jax.enable_x64(True):
        assert mlp.init(key, (2, 3, 1))[0].dtype == jnp.float64
        assert mlp.init(key, (2, 3, 1), dtype=jnp.float32)[0].dtype == jnp.float32


def test_apply_is_the_mean_field_formula(key):
    with jax.enable_x64(True):
        w1, w2 = params = mlp.init(key, (6, 4, 1))
        x = jax.random.normal(jax.random.fold_in(key, 1), (6,))
        n_in, n = 6, 4
        want = (w2.T @ np.tanh(math.sqrt(2 / n_in) * (w1.T @ x))) / n
        np.testing.assert_allclose(mlp.apply(params, x), want, rtol=1e-13, atol=0)


def test_apply_batch_equals_one_at_a_time(key):
    with jax.enable_x64(True):
        params = mlp.init(key, (5, 7, 3, 2))
        x_B = jax.random.normal(jax.random.fold_in(key, 2), (9, 5))
        got = mlp.apply(params, x_B)
        assert got.shape == (9, 2)
        for i in range(9):
            np.testing.assert_allclose(got[i], mlp.apply(params, x_B[i]), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("widths", [(3,), (), (3, 0, 1), (2, 2.5, 1), (2, True), 5])
def test_bad_widths_name_the_argument(key, widths):
    with pytest.raises(ValueError, match="`widths`"):
        mlp.init(key, widths)


def test_fc_scaled_init_is_lecun_normal_times_the_scale(key):
    from sandbox.models import fc

    # Standard-normal draws for a 64-200-10 network: W = z scale / sqrt(fan_in), b = 0.
    shapes = [(64, 200), (200, 10)]
    keys = jax.random.split(key, len(shapes))
    normals = [jax.random.normal(k, s) for k, s in zip(keys, shapes, strict=True)]
    params = fc.scaled_init(normals, 2.0)
    for (w, b), z in zip(params, normals, strict=True):
        np.testing.assert_allclose(w, z * 2.0 / math.sqrt(z.shape[0]), rtol=1e-6)
        assert np.all(b == 0) and b.shape == (z.shape[1],)
    # LeCun's normal times the scale: the first layer's 12,800 weights have standard
    # deviation 2 / sqrt(64); the sample's standard error is 0.6%, 3% is 5 of them.
    assert float(jnp.std(params[0][0])) == pytest.approx(2.0 / 8.0, rel=0.03)
