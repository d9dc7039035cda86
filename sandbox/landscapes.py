"""Test-function landscapes with their verified critical points.

Each landscape is a pure jnp function of a point x of shape [d] (leading axes broadcast,
so x of shape [..., d] also works), together with a plotting and search domain and its
critical points. The points were found once, offline: Newton's method in float64 from a
dense grid of starts over the bounds, deduplicated and classified by the eigenvalues of
the Hessian. They are stored below as literals (or closed forms where one exists);
nothing is searched at import. `tests/test_landscapes.py` checks every stored point.

Where a landscape has more than about 25 critical points inside its bounds (rastrigin,
ackley, rosenbrock and styblinski_tang in 3 or more dimensions), only the global minima
are stored.
"""

import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sandbox import calculus
from sandbox.types import Array, ScalarFn


@dataclasses.dataclass(frozen=True, eq=False)
class Landscape:
    """A test function with its domain and critical points.

    Attributes:
        name: the registry name, as accepted by `get`.
        fn: x of shape [d] -> scalar; pure jnp, works under jit, vmap and grad, in float32
            and float64.
        bounds: [d, 2] float64, (lo, hi) per coordinate: the usual plotting/search domain.
        minima: [k, d] float64, global minima first, then local minima by value.
        saddles: [k, d] float64, possibly (0, d). Degenerate critical points that are
            neither minima nor maxima (monkey_saddle and x2sinx at 0) are stored here.
        maxima: [k, d] float64, possibly (0, d).
        formula: a short plain-text formula.
        f_min: the value at the global minima, which is the lowest value inside `bounds`.
            -inf for the functions without a minimum (saddle, monkey_saddle), which are
            unbounded below.
    """

    name: str
    fn: ScalarFn
    bounds: np.ndarray
    minima: np.ndarray
    saddles: np.ndarray
    maxima: np.ndarray
    formula: str
    f_min: float

    @property
    def dim(self) -> int:
        return self.bounds.shape[0]

    @property
    def global_minima(self) -> np.ndarray:
        """Rows of `minima` whose value is within 1e-6 * (1 + |f_min|) of `f_min`, [k, d]."""
        if len(self.minima) == 0:
            return self.minima
        # float64, so that f32 rounding cannot split minima related by a symmetry.
        with jax.enable_x64(True):
            f_k = np.asarray(jax.device_get(jax.vmap(self.fn)(jnp.asarray(self.minima))))
        return self.minima[np.abs(f_k - self.f_min) <= 1e-6 * (1 + abs(self.f_min))]


def _points(rows, d: int) -> np.ndarray:
    """Read-only float64 array [k, d] from a (possibly empty) list of rows."""
    out = np.array(rows, dtype=np.float64).reshape(-1, d)
    out.setflags(write=False)
    return out


def _landscape(
    name, fn, bounds, minima, saddles=(), maxima=(), *, formula: str, f_min: float = 0.0
) -> Landscape:
    """A Landscape from lists of rows (empty lists of critical points may be left out)."""
    bounds = _points(bounds, 2)
    d = bounds.shape[0]
    return Landscape(
        name=name,
        fn=fn,
        bounds=bounds,
        minima=_points(minima, d),
        saddles=_points(saddles, d),
        maxima=_points(maxima, d),
        formula=formula,
        f_min=float(f_min),
    )


def _check_dim(dim, lowest: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < lowest:
        raise ValueError(f"`dim` must be an integer >= {lowest}, got {dim!r}")
    return int(dim)


# Functions. Constants are Python floats (weakly typed), so that float32 inputs stay
# float32 and float64 inputs are not rounded through float32 constants.


def _bowl(x: Array) -> Array:
    return x[..., 0] ** 2 + x[..., 1] ** 2


def _saddle(x: Array) -> Array:
    return x[..., 1] ** 2 - x[..., 0] ** 2


def _monkey_saddle(x: Array) -> Array:
    return x[..., 0] ** 3 - 3 * x[..., 0] * x[..., 1] ** 2


def _double_well(x: Array) -> Array:
    return (x[..., 0] ** 2 - 1) ** 2 + x[..., 1] ** 2


def _himmelblau(x: Array) -> Array:
    a, b = x[..., 0], x[..., 1]
    return (a**2 + b - 11) ** 2 + (a + b**2 - 7) ** 2


def _rosenbrock(x: Array) -> Array:
    terms = 100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2
    return jnp.sum(terms, axis=-1)


def _rastrigin(x: Array) -> Array:
    # 10 (1 - cos) rather than 10 d - 10 cos: exact 0 at the minimum, even in float32.
    return jnp.sum(x**2 + 10 * (1 - jnp.cos(2 * math.pi * x)), axis=-1)


def _ackley(x: Array) -> Array:
    mean_sq = jnp.mean(x**2, axis=-1)
    # The minimum is the tip of a cone (f ~ 4 |x| / sqrt(d)): sqrt has no derivative at
    # 0. The double `where` makes the gradient there 0 (a subgradient) instead of NaN,
    # so descent that lands on the origin stays finite.
    positive = mean_sq > 0
    radius = jnp.where(positive, jnp.sqrt(jnp.where(positive, mean_sq, 1.0)), 0.0)
    mean_cos = jnp.mean(jnp.cos(2 * math.pi * x), axis=-1)
    # expm1 form of -20 exp(-0.2 r) - exp(mean cos) + 20 + e: exactly 0 at the origin.
    return -20 * jnp.expm1(-0.2 * radius) - math.e * jnp.expm1(mean_cos - 1)


def _beale(x: Array) -> Array:
    a, b = x[..., 0], x[..., 1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def _booth(x: Array) -> Array:
    a, b = x[..., 0], x[..., 1]
    return (a + 2 * b - 7) ** 2 + (2 * a + b - 5) ** 2


def _goldstein_price(x: Array) -> Array:
    a, b = x[..., 0], x[..., 1]
    t1 = 1 + (a + b + 1) ** 2 * (19 - 14 * a + 3 * a**2 - 14 * b + 6 * a * b + 3 * b**2)
    t2 = 30 + (2 * a - 3 * b) ** 2 * (18 - 32 * a + 12 * a**2 + 48 * b - 36 * a * b + 27 * b**2)
    return t1 * t2


def _six_hump_camel(x: Array) -> Array:
    a, b = x[..., 0], x[..., 1]
    return (4 - 2.1 * a**2 + a**4 / 3) * a**2 + a * b + (4 * b**2 - 4) * b**2


def _styblinski_tang(x: Array) -> Array:
    return 0.5 * jnp.sum(x**4 - 16 * x**2 + 5 * x, axis=-1)


def _mccormick(x: Array) -> Array:
    a, b = x[..., 0], x[..., 1]
    return jnp.sin(a + b) + (a - b) ** 2 - 1.5 * a + 2.5 * b + 1


def _x2sinx(x: Array) -> Array:
    return x[..., 0] ** 2 * jnp.sin(x[..., 0])


# Factories, one per registry name.


def bowl() -> Landscape:
    """The lecture's convex bowl J = theta1^2 + theta2^2."""
    return _landscape("bowl", _bowl, [[-2, 2], [-2, 2]], [[0, 0]], formula="theta1^2 + theta2^2")


def saddle() -> Landscape:
    """The lecture's saddle z = y^2 - x^2: one saddle, no minimum (f_min = -inf)."""
    return _landscape(
        "saddle", _saddle, [[-2, 2], [-2, 2]], [], [[0, 0]], formula="y^2 - x^2", f_min=-math.inf
    )


def monkey_saddle() -> Landscape:
    """x^3 - 3 x y^2: a degenerate saddle (zero Hessian) at the origin; f_min = -inf."""
    return _landscape(
        "monkey_saddle",
        _monkey_saddle,
        [[-2, 2], [-2, 2]],
        [],
        [[0, 0]],  # degenerate: calculus.critical_point_kind says "degenerate"
        formula="x^3 - 3 x y^2",
        f_min=-math.inf,
    )


def double_well() -> Landscape:
    """(x^2 - 1)^2 + y^2: two global minima (+-1, 0) and a saddle between them."""
    return _landscape(
        "double_well",
        _double_well,
        [[-2, 2], [-2, 2]],
        [[-1, 0], [1, 0]],
        [[0, 0]],
        formula="(x^2 - 1)^2 + y^2",
    )


def quadratic(kappa: float = 10.0) -> Landscape:
    """0.5 (x^2 + kappa y^2): a convex quadratic with condition number `kappa` >= 1."""
    if (
        isinstance(kappa, bool)
        or not isinstance(kappa, (int, float, np.integer, np.floating))
        or not math.isfinite(kappa)
        or kappa < 1
    ):
        raise ValueError(f"`kappa` must be a finite number >= 1, got {kappa!r}")
    kappa = float(kappa)

    def fn(x: Array) -> Array:
        return 0.5 * (x[..., 0] ** 2 + kappa * x[..., 1] ** 2)

    return _landscape(
        "quadratic",
        fn,
        [[-2, 2], [-2, 2]],
        [[0, 0]],
        formula=f"0.5 (x^2 + {kappa:g} y^2)",
    )


def himmelblau() -> Landscape:
    """Himmelblau's function: 4 global minima, 4 saddles and 1 maximum in [-6, 6]^2."""
    return _landscape(
        "himmelblau",
        _himmelblau,
        [[-6, 6], [-6, 6]],
        [
            [3.0, 2.0],
            [-2.805118086952745, 3.131312518250573],
            [-3.779310253377747, -3.2831859912861696],
            [3.5844283403304917, -1.8481265269644036],
        ],
        [
            [3.3851541836070207, 0.07385187983774928],  # f = 13.3119
            [0.08667750455539634, 2.884254701174776],  # f = 67.7192
            [-3.0730257507643897, -0.08135304428796751],  # f = 104.015
            [-0.12796134673068005, -1.9537149802445766],  # f = 178.337
        ],
        [[-0.2708445906673476, -0.9230385564799815]],  # f = 181.617
        formula="(x^2 + y - 11)^2 + (x + y^2 - 7)^2",
    )


def rosenbrock(dim: int = 2) -> Landscape:
    """Rosenbrock's banana valley in `dim` >= 2 dimensions; global minimum at ones.

    In 2-D the minimum (1, 1) is the only critical point. In more dimensions only the
    global minimum is stored: for 4 <= dim <= 7 there is also a local minimum near
    (-1, 1, ..., 1), and the saddles are not catalogued.
    """
    dim = _check_dim(dim, 2)
    if dim == 2:
        bounds, formula = [[-2, 2], [-1, 3]], "100 (y - x^2)^2 + (1 - x)^2"
    else:
        bounds = [[-2.048, 2.048]] * dim
        formula = "sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2"
    return _landscape("rosenbrock", _rosenbrock, bounds, [[1.0] * dim], formula=formula)


def rastrigin(dim: int = 2) -> Landscape:
    """Rastrigin's egg crate in [-5.12, 5.12]^dim; only the global minimum is stored.

    It has a local minimum near every integer point, 11^dim of them in bounds.
    """
    dim = _check_dim(dim, 1)
    return _landscape(
        "rastrigin",
        _rastrigin,
        [[-5.12, 5.12]] * dim,
        [[0.0] * dim],
        formula="10 d + sum_i x_i^2 - 10 cos(2 pi x_i)",
    )


def ackley(dim: int = 2) -> Landscape:
    """Ackley's function in [-5, 5]^dim; only the global minimum is stored.

    The bounds are the usual plotting window (the usual search domain is
    [-32.768, 32.768]^dim). Local minima sit near every integer point. The global
    minimum at the origin is a kink: `fn` reports gradient 0 there.
    """
    dim = _check_dim(dim, 1)
    return _landscape(
        "ackley",
        _ackley,
        [[-5, 5]] * dim,
        [[0.0] * dim],
        formula="-20 exp(-0.2 sqrt(mean_i x_i^2)) - exp(mean_i cos(2 pi x_i)) + 20 + e",
    )


def beale() -> Landscape:
    """Beale's function in [-4.5, 4.5]^2: 1 minimum and 2 saddles."""
    return _landscape(
        "beale",
        _beale,
        [[-4.5, 4.5], [-4.5, 4.5]],
        [[3.0, 0.5]],
        [
            [0.10053793732415828, -2.644513585023126],  # f = 9.86451
            [0.0, 1.0],  # f = 14.203125; f is constant along x = 0
        ],
        formula="(1.5 - x + xy)^2 + (2.25 - x + xy^2)^2 + (2.625 - x + xy^3)^2",
    )


def booth() -> Landscape:
    """Booth's function, a convex quadratic in [-10, 10]^2 with minimum (1, 3)."""
    return _landscape(
        "booth",
        _booth,
        [[-10, 10], [-10, 10]],
        [[1.0, 3.0]],
        formula="(x + 2y - 7)^2 + (2x + y - 5)^2",
    )


def goldstein_price() -> Landscape:
    """Goldstein-Price in [-2, 2]^2: 4 minima, 4 saddles and 1 maximum.

    Every critical point in bounds turned out to be a rational point with an integer
    value (to float64 rounding).
    """
    return _landscape(
        "goldstein_price",
        _goldstein_price,
        [[-2, 2], [-2, 2]],
        [[0.0, -1.0], [-0.6, -0.4], [1.8, 0.2], [1.2, 0.8]],  # f = 3, 30, 84, 840
        [[-0.4, -0.6], [1.2, -0.2], [1.4, 0.6], [0.6, 0.4]],  # f = 35, 99, 980, 990
        [[0.8, 0.2]],  # f = 1155
        formula=(
            "[1 + (x + y + 1)^2 (19 - 14x + 3x^2 - 14y + 6xy + 3y^2)]"
            " [30 + (2x - 3y)^2 (18 - 32x + 12x^2 + 48y - 36xy + 27y^2)]"
        ),
        f_min=3,
    )


# The six-hump camel is symmetric under x -> -x; each point below comes with its mirror.
_CAMEL_MINIMA = [
    [0.08984201310031806, -0.7126564030207396],  # f = -1.03163 (global)
    [1.7036067149699807, -0.7960835686726251],  # f = -0.215464
    [1.6071047529201974, 0.5686514548841314],  # f = 2.10425
]
_CAMEL_SADDLES = [
    [1.1092053368047865, -0.7682680925095399],  # f = 0.543719
    [1.6380679841897787, 0.2286740690443941],  # f = 2.22936
    [1.2960702671671092, 0.6050843880386585],  # f = 2.22947
]
_CAMEL_MAXIMA = [[1.2302298765166524, 0.16233458445899493]]  # f = 2.49630


def _with_mirrors(rows: list[list[float]]) -> list[list[float]]:
    return [r for row in rows for r in (row, [-row[0], -row[1]])]


def six_hump_camel() -> Landscape:
    """Six-hump camel in [-3, 3] x [-2, 2]: 6 minima, 7 saddles and 2 maxima."""
    return _landscape(
        "six_hump_camel",
        _six_hump_camel,
        [[-3, 3], [-2, 2]],
        _with_mirrors(_CAMEL_MINIMA),
        [[0.0, 0.0], *_with_mirrors(_CAMEL_SADDLES)],
        _with_mirrors(_CAMEL_MAXIMA),
        formula="(4 - 2.1 x^2 + x^4/3) x^2 + xy + (4 y^2 - 4) y^2",
        f_min=-1.0316284534898774,
    )


# Roots of the 1-D derivative 2 x^3 - 16 x + 2.5 of Styblinski-Tang: minimum, maximum,
# minimum. The n-D critical points are all their products, since the function separates.
_ST_ROOTS = (-2.903534027771177, 0.1567312567803401, 2.746802770990837)


def _st_1d(t: float) -> float:
    return 0.5 * (t**4 - 16 * t**2 + 5 * t)


def styblinski_tang(dim: int = 2) -> Landscape:
    """Styblinski-Tang in [-5, 5]^dim.

    All 3^dim critical points are stored for dim <= 2 (in 2-D: 4 minima, 4 saddles and
    1 maximum); for dim >= 3 only the global minimum.
    """
    dim = _check_dim(dim, 1)
    points = list(itertools.product(_ST_ROOTS, repeat=dim)) if dim <= 2 else []
    points.sort(key=lambda p: sum(_st_1d(t) for t in p))
    # A coordinate at the middle root is a direction of negative curvature.
    n_up = [sum(t == _ST_ROOTS[1] for t in p) for p in points]
    return _landscape(
        "styblinski_tang",
        _styblinski_tang,
        [[-5, 5]] * dim,
        [p for p, n in zip(points, n_up, strict=True) if n == 0] or [[_ST_ROOTS[0]] * dim],
        [p for p, n in zip(points, n_up, strict=True) if 0 < n < dim],
        [p for p, n in zip(points, n_up, strict=True) if n == dim],
        formula="0.5 sum_i x_i^4 - 16 x_i^2 + 5 x_i",
        f_min=dim * _st_1d(_ST_ROOTS[0]),
    )


def mccormick() -> Landscape:
    """McCormick in [-1.5, 4] x [-3, 4]: 2 minima and 1 saddle.

    Critical points solve x - y = 1 and cos(x + y) = -1/2; they are written in that
    closed form.
    """

    def point(s: float) -> list[float]:  # x + y = s, x - y = 1
        return [(s + 1) / 2, (s - 1) / 2]

    def value(s: float) -> float:
        x, y = point(s)
        return math.sin(s) + 1 - 1.5 * x + 2.5 * y + 1

    third = 2 * math.pi / 3
    return _landscape(
        "mccormick",
        _mccormick,
        [[-1.5, 4], [-3, 4]],
        [point(-third), point(2 * third)],  # f = -1.91322, 1.22837
        [point(third)],  # f = 1.91322
        formula="sin(x + y) + (x - y)^2 - 1.5 x + 2.5 y + 1",
        f_min=value(-third),
    )


def x2sinx() -> Landscape:
    """The lecture's 1-D x^2 sin(x) in [-6, 7]: 2 minima, 2 maxima and x = 0.

    Away from 0, f'(x) = 0 means tan x = -x/2. The interior minimum at x = 5.08699
    (f = -24.083) is the lowest point in bounds (f(-6) = 10.06, f(7) = 32.19).
    """
    return _landscape(
        "x2sinx",
        _x2sinx,
        [[-6, 7]],
        [[5.08698509410227], [-2.2889297281034042]],  # f = -24.0830, -3.94530
        # x = 0 is degenerate (f ~ x^3, an inflection): neither minimum nor maximum.
        [[0.0]],
        [[2.2889297281034042], [-5.08698509410227]],  # f = 3.94530, 24.0830
        formula="x^2 sin(x)",
        f_min=-24.08296022306833,
    )


_FACTORIES: dict[str, Callable[..., Landscape]] = {
    f.__name__: f
    for f in (
        ackley,
        beale,
        booth,
        bowl,
        double_well,
        goldstein_price,
        himmelblau,
        mccormick,
        monkey_saddle,
        quadratic,
        rastrigin,
        rosenbrock,
        saddle,
        six_hump_camel,
        styblinski_tang,
        x2sinx,
    )
}


def local_minima(lscape: Landscape) -> np.ndarray:
    """Every local minimum inside the bounds, [k, 2] float64.

    The stored minima, except for rastrigin, which stores only its global minimum: its
    local minima (one near each integer point) are found by Newton's method from the
    integer points inside the bounds and checked to be minima. Rows are in row-major order
    of the integer grid (y outer, x inner).
    """
    if lscape.name != "rastrigin":
        return np.asarray(lscape.minima, np.float64)
    b = lscape.bounds
    xs, ys = (np.arange(math.ceil(lo), math.floor(hi) + 1.0) for lo, hi in b)
    xx, yy = np.meshgrid(xs, ys)
    x_Kx2 = calculus.newton_refine(lscape.fn, np.stack([xx.ravel(), yy.ravel()], axis=1))
    inside = np.all((x_Kx2 >= b[:, 0]) & (x_Kx2 <= b[:, 1]), axis=1)
    kinds = [calculus.critical_point_kind(lscape.fn, x) for x in x_Kx2]
    return x_Kx2[inside & np.array([k == "minimum" for k in kinds])]


def names() -> list[str]:
    """The registry names, sorted."""
    return sorted(_FACTORIES)


def names_2d_with_minimum() -> list[str]:
    """The 2-D landscapes with a global minimum, sorted: the choices of a study that descends
    to a minimum or labels basins (saddle and monkey_saddle have none)."""
    return [n for n in names() if get(n).dim == 2 and len(get(n).global_minima) > 0]


def get(name: str, **params) -> Landscape:
    """The landscape `name`, built with `params` (e.g. `get("quadratic", kappa=100.0)`).

    Each call builds a new Landscape; parameterised ones get a new `fn`, so keep the
    result rather than calling `get` inside a loop that jits `fn`.
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown landscape {name!r}; known: {', '.join(names())}")
    factory = _FACTORIES[name]
    allowed = inspect.signature(factory).parameters
    for key in params:
        if key not in allowed:
            takes = ", ".join(allowed) or "no parameters"
            raise ValueError(f"landscape {name!r} has no parameter {key!r}; it takes: {takes}")
    return factory(**params)


def as_fn(f_or_name: str | ScalarFn) -> ScalarFn:
    """A landscape name -> its `fn`; a callable -> itself."""
    if isinstance(f_or_name, str):
        return get(f_or_name).fn
    if callable(f_or_name):
        return f_or_name
    raise ValueError(f"`f_or_name` must be a landscape name or a callable, got {f_or_name!r}")
