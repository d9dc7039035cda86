"""Every stored critical point of every landscape is checked in float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox import calculus, landscapes

KINDS = {"minima": "minimum", "saddles": "saddle", "maxima": "maximum"}

# Stored points whose Hessian is singular: (name, field, row).
DEGENERATE = {("monkey_saddle", "saddles", 0), ("x2sinx", "saddles", 0)}

CASES = [(name, {}) for name in landscapes.names()] + [
    ("quadratic", {"kappa": 100.0}),
    ("rosenbrock", {"dim": 5}),
    ("rastrigin", {"dim": 3}),
    ("ackley", {"dim": 3}),
    ("styblinski_tang", {"dim": 1}),
    ("styblinski_tang", {"dim": 3}),
]
CASE_IDS = [name + "".join(f"-{k}={v}" for k, v in p.items()) for name, p in CASES]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def landscape(request):
    name, params = request.param
    return landscapes.get(name, **params)


def _stored(ls):
    """(field, row index, point [d]) for every stored critical point."""
    return [(field, i, p) for field in KINDS for i, p in enumerate(getattr(ls, field))]


def test_shapes_and_bounds(landscape):
    d = landscape.dim
    assert landscape.bounds.shape == (d, 2)
    assert landscape.bounds.dtype == np.float64
    assert np.all(landscape.bounds[:, 0] < landscape.bounds[:, 1])
    for field in KINDS:
        points = getattr(landscape, field)
        assert points.dtype == np.float64
        assert points.ndim == 2 and points.shape[1] == d
        assert np.all(points >= landscape.bounds[:, 0])
        assert np.all(points <= landscape.bounds[:, 1])
    # Only the functions without a minimum may store none.
    assert (len(landscape.minima) == 0) == (landscape.f_min == -math.inf)
    assert landscape.formula


def test_critical_points_are_stationary(landscape):
    points = np.concatenate([getattr(landscape, field) for field in KINDS])
    refined = calculus.newton_refine(landscape.fn, points)
    np.testing.assert_allclose(refined, points, rtol=0, atol=1e-8)
    with jax.enable_x64(True):
        norm = jax.vmap(lambda x: calculus.gradient_norm(landscape.fn, x), in_axes=0)
        grad_norm = np.asarray(jax.jit(norm)(jnp.asarray(points)))
    assert grad_norm.dtype == np.float64
    assert np.all(grad_norm < 1e-8), grad_norm


def test_critical_points_are_classified(landscape):
    for field, i, point in _stored(landscape):
        degenerate = (landscape.name, field, i) in DEGENERATE
        expected = "degenerate" if degenerate else KINDS[field]
        assert calculus.critical_point_kind(landscape.fn, point) == expected, (field, i, point)


def test_f_min_at_global_minima(landscape):
    if landscape.f_min == -math.inf:
        assert landscape.global_minima.shape == (0, landscape.dim)
        return
    glob = landscape.global_minima
    assert len(glob) >= 1
    # Global minima come first.
    np.testing.assert_array_equal(glob, landscape.minima[: len(glob)])
    with jax.enable_x64(True):
        f_glob = np.asarray(jax.vmap(landscape.fn)(jnp.asarray(glob)))
        f_all = np.asarray(jax.vmap(landscape.fn)(jnp.asarray(landscape.minima)))
    np.testing.assert_allclose(f_glob, landscape.f_min, rtol=1e-10, atol=1e-12)
    # Local minima follow, by value.
    assert np.all(np.diff(f_all) >= -1e-12)


def _grid(bounds: np.ndarray, key: jax.Array) -> np.ndarray:
    """Points in bounds, [N, d]: a full grid with its edges in 1-D and 2-D."""
    d = bounds.shape[0]
    if d <= 2:
        axes = [np.linspace(lo, hi, 257 if d == 1 else 65) for lo, hi in bounds]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
    u = np.asarray(jax.random.uniform(key, (4096, d)))
    return bounds[:, 0] + u * (bounds[:, 1] - bounds[:, 0])


def test_jit_vmap_float32_grid(landscape):
    x_Nd = _grid(landscape.bounds, jax.random.key(0)).astype(np.float32)
    f_N = jax.jit(jax.vmap(landscape.fn, in_axes=0))(x_Nd)
    assert f_N.dtype == jnp.float32
    assert f_N.shape == (len(x_Nd),)
    assert bool(jnp.all(jnp.isfinite(f_N)))
    # No grid point lies below f_min (float32 rounding allowed for).
    f_min = landscape.f_min
    assert float(jnp.min(f_N)) >= f_min - 1e-5 * (1 + abs(f_min))


def test_float64_in_float64_out(landscape):
    with jax.enable_x64(True):
        x = jnp.asarray(landscape.bounds.mean(axis=1))
        assert jax.jit(landscape.fn)(x).dtype == jnp.float64
        assert jax.jit(jax.grad(landscape.fn))(x).dtype == jnp.float64


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown landscape 'nope'; known: ") as info:
        landscapes.get("nope")
    assert str(info.value).endswith(", ".join(landscapes.names()))


def test_names():
    names = landscapes.names()
    assert names == sorted(names)
    required = {"bowl", "saddle", "monkey_saddle", "double_well", "quadratic"}
    required |= {"himmelblau", "rosenbrock", "rastrigin", "ackley", "beale", "booth"}
    required |= {"goldstein_price", "six_hump_camel", "styblinski_tang", "mccormick"}
    required |= {"x2sinx"}
    assert required <= set(names)


def test_the_2d_landscapes_with_a_minimum_are_those_no_grid_point_goes_below():
    # Each named one: 2-D, and no point of a 101 x 101 grid over its bounds lies below its
    # global minimum (tolerance 1e-6 relative, float64). The saddles, unbounded below, not.
    named = landscapes.names_2d_with_minimum()
    assert named == sorted(named) and {"saddle", "monkey_saddle", "x2sinx"}.isdisjoint(named)
    assert len(named) == len([n for n in landscapes.names() if landscapes.get(n).dim == 2]) - 2
    with jax.enable_x64(True):
        for name in named:
            land = landscapes.get(name)
            b = np.asarray(land.bounds, np.float64)
            g = np.stack(np.meshgrid(*(np.linspace(lo, hi, 101) for lo, hi in b)), -1)
            values = jax.vmap(land.fn)(jnp.asarray(g.reshape(-1, 2)))
            f_min = min(float(land.fn(jnp.asarray(m))) for m in land.global_minima)
            assert float(values.min()) >= f_min - 1e-6 * max(1.0, abs(f_min)), name
        for name in ("saddle", "monkey_saddle"):
            land = landscapes.get(name)
            edge = jnp.array([land.bounds[0][0], 0.0])  # (x_lo, 0): below the critical point
            assert float(land.fn(edge)) < float(land.fn(jnp.zeros(2))), name


@pytest.mark.parametrize(
    "name, params, argument",
    [
        ("quadratic", {"kappa": 0.5}, "kappa"),
        ("quadratic", {"kappa": float("nan")}, "kappa"),
        ("quadratic", {"kappa": "10"}, "kappa"),
        ("rosenbrock", {"dim": 1}, "dim"),
        ("rastrigin", {"dim": 2.5}, "dim"),
        ("bowl", {"kappa": 2.0}, "kappa"),
        ("quadratic", {"dim": 2}, "dim"),
    ],
)
def test_bad_params_raise(name, params, argument):
    with pytest.raises(ValueError, match=argument):
        landscapes.get(name, **params)


def test_factories_and_get_agree():
    with pytest.raises(ValueError, match="kappa"):
        landscapes.quadratic(kappa=0.5)
    ls = landscapes.get("quadratic", kappa=100.0)
    assert ls.name == "quadratic"
    np.testing.assert_allclose(ls.fn(jnp.array([0.0, 1.0])), 50.0, rtol=1e-7)
    assert landscapes.rosenbrock(dim=4).dim == 4
    assert landscapes.get("rosenbrock", dim=4).dim == 4


def test_stored_arrays_are_read_only():
    ls = landscapes.get("himmelblau")
    with pytest.raises(ValueError, match="read-only"):
        ls.minima[0, 0] = 1.0


def test_as_fn():
    assert landscapes.as_fn("bowl") is landscapes.get("bowl").fn
    fn = landscapes.get("booth").fn
    assert landscapes.as_fn(fn) is fn
    with pytest.raises(ValueError, match="f_or_name"):
        landscapes.as_fn(3)
    with pytest.raises(ValueError, match="unknown landscape"):
        landscapes.as_fn("nope")


def _himmelblau_grad(x, y):
    return np.stack(
        [
            4 * x * (x**2 + y - 11) + 2 * (x + y**2 - 7),
            2 * (x**2 + y - 11) + 4 * y * (x + y**2 - 7),
        ],
        axis=-1,
    )


# Hand-derived gradients of the lecture's functions, (x [N], y [N]) -> [N, d].
ANALYTIC_GRADS = {
    "bowl": lambda x, y: np.stack([2 * x, 2 * y], axis=-1),
    "saddle": lambda x, y: np.stack([-2 * x, 2 * y], axis=-1),
    "double_well": lambda x, y: np.stack([4 * x * (x**2 - 1), 2 * y], axis=-1),
    "himmelblau": _himmelblau_grad,
    "x2sinx": lambda x, y: (2 * x * np.sin(x) + x**2 * np.cos(x))[:, None],
}


@pytest.mark.parametrize("name", sorted(ANALYTIC_GRADS))
def test_analytic_gradients(name):
    ls = landscapes.get(name)
    rng = np.random.default_rng(0)
    x_Nd = rng.uniform(ls.bounds[:, 0], ls.bounds[:, 1], size=(32, ls.dim))
    y = x_Nd[:, 1] if ls.dim > 1 else None
    expected = ANALYTIC_GRADS[name](x_Nd[:, 0], y)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(jax.vmap(jax.grad(ls.fn)))(jnp.asarray(x_Nd)))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_local_minima_of_rastrigin_one_near_each_integer_point():
    lscape = landscapes.get("rastrigin")
    x_Kx2 = landscapes.local_minima(lscape)
    assert x_Kx2.shape == (11 * 11, 2)  # integer points -5..5 inside [-5.12, 5.12]^2
    # Each is a stationary point (float64 Newton) within 0.1 of its integer point, a minimum.
    grad = jax.jit(jax.vmap(jax.grad(lscape.fn)))
    with jax.enable_x64(True):
        assert np.max(np.abs(grad(jnp.asarray(x_Kx2)))) < 1e-9
    assert np.max(np.abs(x_Kx2 - np.round(x_Kx2))) < 0.1
    himmelblau = landscapes.get("himmelblau")  # the others: their stored minima
    np.testing.assert_array_equal(landscapes.local_minima(himmelblau), himmelblau.minima)
