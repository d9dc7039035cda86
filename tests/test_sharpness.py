"""sharpness.track: the tracked sharpness against known and independently computed spectra."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from sandbox import sharpness
from sandbox.models import fc

EIGS = np.array([5.0, 3.0, 1.5, 1.0, 0.5, 0.25, 0.1, 0.05])


def _quadratic(eigs=EIGS, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    a = jnp.asarray(q @ np.diag(eigs) @ q.T, jnp.float32)

    def loss(x):
        return 0.5 * x @ a @ x

    return loss, jnp.ones(len(eigs), jnp.float32)


@pytest.mark.parametrize("optimizer", ["gd", "momentum"])
def test_quadratic_sharpness_is_its_top_eigenvalues_at_every_check(optimizer):
    loss, x0 = _quadratic()
    trace = sharpness.track(
        loss,
        x0,
        jnp.array([0.1, 0.3]),
        steps=30,
        every=5,
        key=jax.random.key(0),
        optimizer=optimizer,
        num_eigs=3,
    )
    assert trace.sharpness.shape == (2, 7, 3)
    np.testing.assert_array_equal(trace.steps[0], np.arange(0, 31, 5))
    # The Hessian is the constant A: each check's top three Ritz values of an 8-step
    # (complete) Lanczos run are its eigenvalues, to float32 rounding (rtol 1e-5).
    want = np.broadcast_to(EIGS[:3], trace.sharpness.shape)
    np.testing.assert_allclose(trace.sharpness, want, rtol=1e-5)
    # The losses are those of the same updates written out by hand.
    x, v = np.ones(8, np.float64), np.zeros(8)
    a = np.asarray(jax.hessian(loss)(x0), np.float64)
    beta = 0.9 if optimizer == "momentum" else 0.0
    for t in range(30):
        np.testing.assert_allclose(trace.losses[1, t], 0.5 * x @ a @ x, rtol=1e-4)
        v = beta * v + a @ x
        x = x - 0.3 * v


def _tiny_problem():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(12, 3)))
    y = jnp.asarray(rng.normal(size=(12, 2)))
    params = fc.init(jax.random.key(2), (3, 4, 2), dtype=jnp.float64)  # 26 parameters

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((fc.apply(p, x) - y) ** 2, -1))

    return loss, params


def _hessian(loss, params):
    """params -> the full Hessian [n, n] of `loss` (NumPy), compiled once."""
    _, unravel = ravel_pytree(params)
    hess = jax.jit(jax.hessian(lambda f: loss(unravel(f))))
    return lambda p: np.asarray(hess(ravel_pytree(p)[0]))


def test_tiny_mlp_gd_sharpness_equals_eigh_of_the_full_hessian_in_float64():
    with jax.enable_x64(True):
        loss, params = _tiny_problem()
        lr, steps, every = 0.5, 40, 10
        trace = sharpness.track(
            loss, params, lr, steps=steps, every=every, key=jax.random.key(3), num_eigs=2
        )
        # Reference: the same GD by Optax's sgd, stepped from Python, and `eigh` of
        # jax.hessian at each checked step.
        tx, p = optax.sgd(lr), params
        state, want = tx.init(p), []
        grad, hess = jax.jit(jax.grad(loss)), _hessian(loss, params)
        for t in range(steps + 1):
            if t % every == 0:
                want.append(np.linalg.eigvalsh(hess(p))[::-1][:2])
            if t == steps:
                break
            g = grad(p)
            u, state = tx.update(g, state)
            p = optax.apply_updates(p, u)
        # 20 Lanczos steps with full reorthogonalization on 26 parameters: the top two
        # Ritz values agree with eigh to float64 rounding amplified by the spectrum's
        # spread (rtol 1e-8).
        np.testing.assert_allclose(trace.sharpness, np.array(want), rtol=1e-8)
        final = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), trace.params, p)
        assert max(jax.tree.leaves(final)) < 1e-12


def test_adam_tracks_the_preconditioned_sharpness_with_bias_corrections():
    with jax.enable_x64(True):
        loss, params = _tiny_problem()
        lr, b1, b2, eps, steps, every = 0.01, 0.9, 0.999, 1e-8, 30, 10
        trace = sharpness.track(
            loss, params, lr, steps=steps, every=every, key=jax.random.key(4), optimizer="adam"
        )
        # Reference: optax.adam stepped from Python. Its update is -lr P^-1 m_t with
        # P_t = (1 - b1^t) diag(sqrt(v_t / (1 - b2^t)) + eps) (Cohen et al. 2022), checked
        # here on the update itself; the tracked value is the top eigenvalue of P^-1 H.
        tx, p = optax.adam(lr, b1=b1, b2=b2, eps=eps), params
        state, want = tx.init(p), [np.nan]
        grad, hess = jax.jit(jax.grad(loss)), _hessian(loss, params)
        for t in range(1, steps + 1):
            u, state = tx.update(grad(p), state)
            p = optax.apply_updates(p, u)
            adam = state[0]
            m = ravel_pytree(adam.mu)[0]
            v = ravel_pytree(adam.nu)[0]
            pre = (1 - b1**t) * (np.sqrt(v / (1 - b2**t)) + eps)
            np.testing.assert_allclose(ravel_pytree(u)[0], -lr * m / pre, rtol=1e-10)
            if t % every == 0:
                s = 1 / np.sqrt(pre)
                h = s[:, None] * hess(p) * s[None, :]
                want.append(np.linalg.eigvalsh(h)[-1])
        assert np.isnan(trace.sharpness[0, 0])  # no preconditioner before the first update
        np.testing.assert_allclose(trace.sharpness[1:, 0], want[1:], rtol=1e-8)


@pytest.mark.parametrize("optimizer, beta", [("gd", 0.0), ("momentum", 0.9)])
def test_threshold_separates_convergence_from_divergence_on_a_quadratic(optimizer, beta):
    # On 0.5 lambda x^2, GD and heavy ball are linear recurrences that converge iff
    # lr lambda < 2 (+ 2 beta): 2% below the threshold the loss falls, 2% above it grows.
    lam = 4.0
    lr = 1.0
    below = sharpness.threshold(optimizer, lr, beta=beta) / lam * 0.98
    above = sharpness.threshold(optimizer, lr, beta=beta) / lam * 1.02
    trace = sharpness.track(
        lambda x: 0.5 * lam * jnp.sum(x**2),
        jnp.ones(1),
        jnp.array([below, above]),
        steps=400,
        every=200,
        key=jax.random.key(0),
        optimizer=optimizer,
        beta=beta,
    )
    assert trace.losses[0, -1] < 1e-3 * trace.losses[0, 0]
    assert np.nanmax(trace.losses[1]) > 1e3 * trace.losses[1, 0]  # or overflowed to inf
    np.testing.assert_allclose(trace.sharpness, lam, rtol=1e-6)


@pytest.mark.slow  # make test keeps the per-run checks against eigh
def test_vmapped_learning_rates_equal_separate_runs():
    loss, x0 = _quadratic()
    both = sharpness.track(
        loss, x0, jnp.array([0.1, 0.2]), steps=12, every=4, key=jax.random.key(1)
    )
    one = sharpness.track(loss, x0, 0.2, steps=12, every=4, key=jax.random.key(1))
    assert one.losses.shape == (13,) and one.sharpness.shape == (4, 1)
    np.testing.assert_allclose(both.losses[1], one.losses, rtol=1e-6)
    np.testing.assert_allclose(both.sharpness[1], one.sharpness, rtol=1e-6)


def _equations(jaxpr) -> str:
    return re.sub(r"\s+", "", re.sub(r"\d+", "N", str(jaxpr)))


def test_the_compiled_loop_is_not_unrolled():
    # The program's text, with every number masked, is the same for 20 and 2000 steps:
    # the steps live in scan lengths, not in repeated code.
    loss, x0 = _quadratic()
    lr = jnp.ones(1, jnp.float32)
    texts = {}
    for steps in (20, 2000):
        run = sharpness._compiled(loss, "momentum", False, steps, 10, 1, 8, (("beta", 0.9),))
        texts[steps] = _equations(jax.make_jaxpr(run)(x0, lr, jax.random.key(0)))
    assert texts[20] == texts[2000]
    assert len(texts[20]) < 50_000


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": 0.0}, "`lr`"),
        ({"lr": -0.1}, "`lr`"),
        ({"lr": float("nan")}, "`lr`"),
        ({"lr": float("inf")}, "`lr`"),
        ({"lr": [[0.1]]}, "`lr`"),
        ({"lr": "fast"}, "`lr`"),
        ({"every": 0}, "`every`"),
        ({"every": 11}, "`every`"),
        ({"steps": 0}, "`steps`"),
        ({"optimizer": "sgd"}, "`optimizer`"),
        ({"num_eigs": 9}, "`num_eigs`"),
        ({"num_iters": 9}, "`num_iters`"),
        ({"optimizer": "momentum", "beta": 1.0}, "`beta`"),
        ({"optimizer": "adam", "eps": 0.0}, "`eps`"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    loss, x0 = _quadratic()
    args = {"lr": 0.1, "steps": 10, "every": 5, "key": jax.random.key(0)} | kwargs
    with pytest.raises(ValueError, match=re.escape(name)):
        sharpness.track(loss, x0, **args)


@pytest.mark.parametrize("loop", ["lax", pytest.param("host", marks=pytest.mark.slow)])
def test_sharpness_map_equals_eigh_at_every_point(loop):
    with jax.enable_x64(True):
        loss, params = _tiny_problem()
        d1 = jax.tree.map(lambda a: jnp.full_like(a, 0.1), params)
        d2 = jax.tree.map(lambda a: jnp.linspace(-0.2, 0.2, a.size).reshape(a.shape), params)
        coords = np.array([[0.0, 0.0], [1.0, -0.5], [-2.0, 1.5], [0.5, 2.0], [3.0, 0.0]])
        got = sharpness.on_plane(
            loss, params, d1, d2, coords, key=jax.random.key(0), chunk=2, loop=loop
        )
        hess = _hessian(loss, params)
        want = []
        for a, b in coords:
            p = jax.tree.map(lambda w, u, v, a=a, b=b: w + a * u + b * v, params, d1, d2)
            want.append(np.linalg.eigvalsh(hess(p))[-1])
    # 20 Lanczos steps on 26 parameters at each point, chunks of 2 points: lambda_max to
    # float64 rounding (rtol 1e-8), whatever the chunk.
    np.testing.assert_allclose(got, want, rtol=1e-8)
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="`coords`"):
            sharpness.on_plane(loss, params, d1, d2, np.zeros((3, 3)), key=jax.random.key(0))
        with pytest.raises(ValueError, match="`d2`"):
            sharpness.on_plane(loss, params, d1, {"x": 1}, coords, key=jax.random.key(0))
        n = sum(np.size(a) for a in jax.tree.leaves(params))
        with pytest.raises(ValueError, match="`num_iters`"):
            sharpness.on_plane(loss, params, d1, d2, coords, key=jax.random.key(0), num_iters=n + 1)


def test_losses_that_are_not_real_scalars_are_named_before_any_work():
    loss, x0 = _quadratic()
    kw = {"lr": 0.1, "steps": 10, "every": 5, "key": jax.random.key(0)}
    with pytest.raises(ValueError, match=r"`loss` must return a real scalar, got .*shape \(8,\)"):
        sharpness.track(lambda x: x * loss(x), x0, **kw)
    with pytest.raises(ValueError, match="`loss` must return a pair"):
        sharpness.track(loss, x0, has_aux=True, **kw)
    with pytest.raises(ValueError, match="a pair needs `has_aux=True`"):
        sharpness.track(lambda x: (loss(x), x[0]), x0, **kw)
    with pytest.raises(ValueError, match="`loss` must return a real scalar .*first of its pair"):
        sharpness.track(lambda x: (x, loss(x)), x0, has_aux=True, **kw)
    mixed = {"a": x0, "b": jnp.ones(2, jnp.bfloat16)}
    with pytest.raises(ValueError, match="`params` must have leaves of one floating dtype"):
        sharpness.track(lambda p: loss(p["a"]), mixed, **kw)
