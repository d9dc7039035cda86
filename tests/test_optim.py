"""Optimizers by name: every one minimizes a parabola; hyperparameters may be traced."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sandbox import optim


def _minimize(opt, x0, steps):
    f = lambda x: jnp.sum((x - 1.0) ** 2)  # noqa: E731
    state = opt.init(x0)

    def body(carry, _):
        x, state = carry
        updates, state = opt.update(jax.grad(f)(x), state, x)
        return (optax.apply_updates(x, updates), state), None

    (x, _), _ = jax.lax.scan(body, (x0, state), length=steps)
    return x


@pytest.mark.parametrize("name", optim.names())
def test_every_optimizer_minimizes_a_parabola(name):
    # lion moves by exactly lr per coordinate per step, so it ends within lr of the minimum;
    # adagrad's steps shrink like lr / sqrt(sum of squared gradients), so it needs a larger lr.
    lr = 0.3 if name == "adagrad" else 1e-2
    x = _minimize(optim.make(name, lr=lr), jnp.array([3.0, -2.0]), 3000)
    np.testing.assert_allclose(x, [1.0, 1.0], atol=2e-2)


def test_noisy_sgd_adds_gaussian_noise_of_variance_eta():
    # On a flat function the gradient is zero, so after t steps of lr 1 the point is minus a
    # sum of t independent N(0, eta) draws: its variance over many seeds is t * eta.
    from sandbox import sweep

    seeds = np.arange(4000, dtype=np.int32)
    r = sweep.descend(
        lambda x: 0.0 * x[0],
        np.zeros((4000, 1)),
        optimizer="noisy_sgd",
        steps=10,
        lr=1.0,
        eta=0.04,
        seed=seeds,
    )
    # Sample variance of 4000 normals: relative standard error sqrt(2 / 4000) = 2.2%.
    np.testing.assert_allclose(np.var(r.x[:, 0]), 10 * 0.04, rtol=0.1)
    again = sweep.descend(
        lambda x: 0.0 * x[0],
        np.zeros((4000, 1)),
        optimizer="noisy_sgd",
        steps=10,
        lr=1.0,
        eta=0.04,
        seed=seeds,
    )
    np.testing.assert_array_equal(r.x, again.x)
    with pytest.raises(ValueError, match="`seed` must be an integer"):
        sweep.descend(
            lambda x: x[0] ** 2,
            np.zeros((2, 1)),
            optimizer="noisy_sgd",
            steps=2,
            lr=0.1,
            seed=np.array([0.5, 1.0]),
        )


def test_names_cover_the_lecture():
    want = {"sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lion"}
    assert want <= set(optim.names())


def test_traced_hyperparameters_match_separate_builds():
    def run(lr, momentum):
        return _minimize(optim.make("momentum", lr=lr, momentum=momentum), jnp.array([3.0]), 20)

    lr = jnp.array([0.01, 0.05, 0.1])
    beta = jnp.array([0.0, 0.5, 0.9])
    batched = jax.jit(jax.vmap(run))(lr, beta)
    for i in range(3):
        one = _minimize(optax.sgd(float(lr[i]), momentum=float(beta[i])), jnp.array([3.0]), 20)
        np.testing.assert_allclose(batched[i], one, rtol=1e-6, atol=1e-6)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="unknown optimizer 'sgdd'.*adam"):
        optim.make("sgdd", lr=0.1)
    with pytest.raises(ValueError, match="beta"):
        optim.make("sgd", lr=0.1, beta=0.9)
    with pytest.raises(ValueError, match="`lr`"):
        optim.make("adam")
    with pytest.raises(ValueError, match="`lr` must be positive"):
        optim.check_scalar("lr", -1.0)
    with pytest.raises(ValueError, match="`momentum` must be in"):
        optim.check_scalar("momentum", 1.5)
