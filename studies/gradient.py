"""What is a gradient? The lecture's z = y^2 - x^2, checked on a million points.

jax.grad of the saddle z = y^2 - x^2 is compared with the analytic gradient (-2x, 2y) on a
grid of at least 10^6 points (max abs error in summary.json). Two geometric facts are then
measured, not assumed: a small step along the gradient raises z everywhere (the gradient
points uphill), and the gradient is perpendicular to the contour lines (|cos| of the angle
between the gradient and matplotlib's contour segments).

Run: make gradient   (smoke: python -m studies.gradient --quick; a few seconds either way)
"""

import dataclasses
from typing import Literal

import contourpy
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from sandbox import cli, config, landscapes, plotting

NAME = "gradient"
# |grad| at or below this is the origin's neighbourhood: no direction, left out of the uphill
# check. A step s along the unit gradient raises z by s (|grad| - s (u_x^2 - u_y^2)), which
# is > 0 for every point with |grad| > MOVING when s <= MOVING.
MOVING = 1e-3


@dataclasses.dataclass(frozen=True)
class Config(config.Checked):
    seed: int = config.seed()  # unused: the study has no randomness
    landscape: Literal["saddle"] = "saddle"  # the analytic gradient is known for this one
    grid_n: int = config.count(1024, 8192, lo=2)  # grid_n^2 points for the jax.grad check
    # At least 1e-2, so that the grid has points with |grad| > MOVING; at most 4e3, where
    # float32 still resolves the rise of a step of MOVING against z's rounding (RELATIONS).
    half_width: float = config.field(2.0, 1e-2, 4e3)  # the grid is [-half_width, half_width]^2
    step: float = config.field(1e-3, gt=0, le=MOVING)  # step along the gradient, uphill check
    # 3 is the smallest grid with contour lines: on 2 x 2, z is 0 at all four corners.
    contour_n: int = config.count(401, 8192, lo=3)  # grid of the contour lines checked
    num_levels: int = config.count(15, 1000, lo=2)  # contour levels
    quiver_n: int = config.count(21, 1000, lo=2)  # arrows per side of the quiver plot

    RELATIONS = (
        # A smaller step is lost in float32's rounding of z ~ half_width^2 (the rise of a
        # step s is about 2 s |x|). Measured on grids of 1024 and 2047 for half_width in
        # [1e-2, 4e3]: every point rises at s = 2^-22 half_width, not all at 2^-23.
        config.relation(
            "step >= half_width * 2^-22 (twice float32's eps)",
            lambda c: c.step >= c.half_width * 2.0**-22,
        ),
    )


QUICK = Config(grid_n=128, contour_n=101)


def analytic_gradient(x):
    """(-2x, 2y): the hand-derived gradient of z = y^2 - x^2."""
    return jnp.stack([-2.0 * x[..., 0], 2.0 * x[..., 1]], axis=-1)


def _grid(n: int, h: float) -> np.ndarray:
    t = np.linspace(-h, h, n, dtype=np.float32)
    xx, yy = np.meshgrid(t, t)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _grid_check(fn, cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """jax.grad on the grid: (err_N against the analytic gradient, |grad|_N, rise_N uphill)."""
    x_Nx2 = jnp.asarray(_grid(cfg.grid_n, cfg.half_width))

    @jax.jit
    def check(x_Nx2):
        g_Nx2 = jax.vmap(jax.grad(fn))(x_Nx2)
        err_N = jnp.max(jnp.abs(g_Nx2 - analytic_gradient(x_Nx2)), axis=1)
        gnorm_N = jnp.linalg.norm(g_Nx2, axis=1)
        unit_Nx2 = g_Nx2 / jnp.maximum(gnorm_N, 1e-30)[:, None]
        rise_N = jax.vmap(fn)(x_Nx2 + cfg.step * unit_Nx2) - jax.vmap(fn)(x_Nx2)
        return err_N, gnorm_N, rise_N

    return jax.device_get(check(x_Nx2))


def _contour_cosines(fn, cfg: Config) -> np.ndarray:
    """|cos| [M] of the angle between jax.grad and each contour segment (0: perpendicular)."""
    # Contour segments from marching squares (contourpy, independent of JAX) against
    # jax.grad at each segment's midpoint.
    t = np.linspace(-cfg.half_width, cfg.half_width, cfg.contour_n)
    xx, yy = np.meshgrid(t, t)
    zz = np.asarray(jax.vmap(fn)(jnp.asarray(np.stack([xx.ravel(), yy.ravel()], 1))))
    zz = zz.reshape(xx.shape)
    levels = np.linspace(zz.min(), zz.max(), cfg.num_levels + 2)[1:-1]
    gen = contourpy.contour_generator(xx, yy, zz)
    mids, dirs = [], []
    for level in levels:
        for line in gen.lines(level):
            mids.append(0.5 * (line[1:] + line[:-1]))
            dirs.append(np.diff(line, axis=0))
    mid_Mx2, dir_Mx2 = np.concatenate(mids), np.concatenate(dirs)
    g_Mx2 = np.asarray(jax.vmap(jax.grad(fn))(jnp.asarray(mid_Mx2, jnp.float32)))
    return np.abs(np.sum(g_Mx2 * dir_Mx2, axis=1)) / (
        np.linalg.norm(g_Mx2, axis=1) * np.linalg.norm(dir_Mx2, axis=1) + 1e-30
    )


def compute(cfg: Config) -> tuple[dict, dict]:
    """The grid check, the contour angles and the quiver field: (arrays, summary)."""
    fn = landscapes.get(cfg.landscape).fn
    err_N, gnorm_N, rise_N = _grid_check(fn, cfg)
    # The origin is the critical point: no direction there, so it is left out.
    moving = gnorm_N > MOVING
    uphill = float(np.mean(rise_N[moving] > 0))
    cos_M = _contour_cosines(fn, cfg)

    qt = np.linspace(-cfg.half_width, cfg.half_width, cfg.quiver_n, dtype=np.float32)
    qx, qy = np.meshgrid(qt, qt)
    q_Qx2 = np.stack([qx.ravel(), qy.ravel()], 1)
    arrays = {
        "err_max_per_row_H": err_N.reshape(cfg.grid_n, cfg.grid_n).max(axis=1),
        "quiver_x_Q": q_Qx2,
        "quiver_grad_Qx2": np.asarray(jax.vmap(jax.grad(fn))(jnp.asarray(q_Qx2))),
        "contour_cos_M": cos_M.astype(np.float32),
    }
    eps32 = float(np.finfo(np.float32).eps)
    summary = {
        "points": int(len(err_N)),
        "grad_max_abs_error": {
            "measured": float(err_N.max()),
            "theory": 0.0,
            "note": f"float32; |grad| <= {4 * cfg.half_width}, so one rounding is "
            f"{4 * cfg.half_width * eps32:.2e}",
        },
        "uphill_fraction": {"measured": uphill, "theory": 1.0},
        "contour_cos_median": {"measured": float(np.median(cos_M)), "theory": 0.0},
        "contour_cos_p99": {"measured": float(np.quantile(cos_M, 0.99)), "theory": 0.0},
        "contour_segments": int(len(cos_M)),
    }
    return arrays, summary


def plot(arrays: dict, cfg: Config, summary: dict) -> dict:
    """Surface and gradient field side by side; histogram of the contour angles."""
    lscape = landscapes.get(cfg.landscape)
    h = cfg.half_width
    bounds = np.array([[-h, h], [-h, h]])
    with plt.style.context(plotting.STYLE):
        fig = plt.figure(figsize=(plotting.FULL, 3.2), layout="constrained")
        ax3 = fig.add_subplot(1, 2, 1, projection="3d")
        plotting.surface3d(ax3, lscape.fn, bounds)
        ax3.set(xlabel="x", ylabel="y", zlabel="z", title="z = y² − x²")
        ax = fig.add_subplot(1, 2, 2)
        plotting.quiver(ax, lscape.fn, bounds, n=cfg.quiver_n)
        err = summary["grad_max_abs_error"]["measured"]
        ax.set(
            xlabel="x",
            ylabel="y",
            title=f"∇z = (−2x, 2y): arrows point uphill,\n⊥ contours; max |error| {err:.1e}",
        )
        ax.title.set_fontsize(8)
    figures = {"surface_quiver": fig}
    with plt.style.context(plotting.STYLE):
        fig, ax = plt.subplots(figsize=(plotting.ONE_COL, 2.4), layout="constrained")
        cos = arrays["contour_cos_M"]
        ax.hist(np.degrees(np.arccos(np.clip(cos, 0, 1))), bins=60, color="C0")
        ax.axvline(90, color="k", lw=0.8, ls="--")
        ax.set(
            xlabel="angle between ∇z and contour segment (degrees)",
            ylabel="segments",
            title=f"{len(cos)} segments, median |cos| {np.median(cos):.1e}",
        )
        ax.title.set_fontsize(8)
    figures["contour_angles"] = fig
    return figures


main = cli.study_main(__name__, compute, plot)


if __name__ == "__main__":
    main()
