"""Tests for sandbox.plotting: every figure renders, files are valid, shapes are checked."""

import matplotlib

matplotlib.use("agg")

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from sandbox import plotting  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BOUNDS = ((-2.0, 2.0), (-1.0, 3.0))
N_GRID = 9  # tiny grids keep each test to a fraction of a second


def bowl(x):
    return x[0] ** 2 + 2.0 * x[1] ** 2


def tilted(x):
    return x[0] + 10.0 * x[1]


def small_fig(figsize=(2.0, 1.6), **kwargs):
    with plt.style.context(plotting.STYLE):
        return plt.subplots(figsize=figsize, dpi=50, **kwargs)


def assert_png(path):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC


def tiny_paths(n=3, t=6):
    x0_Nx2 = np.linspace([-1.5, 2.5], [1.5, -0.5], n)
    decay_T = 0.7 ** np.arange(t)
    return x0_Nx2[:, None, :] * decay_T[None, :, None]  # [N, T, 2]


# ------------------------------------------------------------------- style, grid, save


def test_style_file_sets_house_rc():
    assert plotting.STYLE.is_file()
    with plt.style.context(plotting.STYLE):
        assert matplotlib.rcParams["savefig.dpi"] == 150
        assert matplotlib.rcParams["image.cmap"] == "viridis"
        assert not matplotlib.rcParams["axes.spines.top"]
        assert not matplotlib.rcParams["axes.spines.right"]


def test_grid_is_row_y_column_x():
    X, Y, Z = plotting.evaluate_grid(tilted, BOUNDS, n=5)
    assert X.shape == Y.shape == Z.shape == (5, 5)
    np.testing.assert_allclose(X[0], np.linspace(-2.0, 2.0, 5), rtol=0, atol=1e-12)
    np.testing.assert_allclose(Y[:, 0], np.linspace(-1.0, 3.0, 5), rtol=0, atol=1e-12)
    np.testing.assert_allclose(Z, X + 10.0 * Y, rtol=1e-6, atol=1e-5)


def test_grid_accepts_fn_returning_shape_1():
    _, _, Z = plotting.evaluate_grid(lambda x: jnp.sum(x**2, keepdims=True), BOUNDS, n=3)
    assert Z.shape == (3, 3)


def test_save_writes_png_atomically_and_closes(tmp_path):
    fig, ax = small_fig()
    ax.plot([0, 1], [0, 1])
    out = plotting.save(fig, tmp_path / "sub" / "line", dpi=50)
    assert out == tmp_path / "sub" / "line.png"
    assert_png(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["line.png"]
    assert not plt.fignum_exists(fig.number)


def test_save_pdf_by_suffix(tmp_path):
    fig, _ = small_fig()
    out = plotting.save(fig, tmp_path / "fig.pdf")
    assert out.read_bytes()[:5] == b"%PDF-"


def test_save_failure_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    fig, _ = small_fig()

    def broken_savefig(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plotting.save(fig, target)
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
    assert target.read_bytes() == b"old"
    assert not plt.fignum_exists(fig.number)


# ----------------------------------------------------------------------------- smoke


@pytest.mark.parametrize("n, max_cols, shape", [(5, 3, (2, 3)), (1, 2, (1, 1)), (4, 2, (2, 2))])
def test_panel_grid_rows_height_and_spare_cells(n, max_cols, shape):
    fig, axes = plotting.panel_grid(n, max_cols, 2.0, 0.5)
    try:
        assert axes.shape == shape
        # height = row height x rows + the extra, to the float
        assert fig.get_size_inches() == pytest.approx((plotting.FULL, 2.0 * shape[0] + 0.5))
        assert [ax.axison for ax in axes.flat] == [True] * n + [False] * (axes.size - n)
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match="`n`"):
        plotting.panel_grid(0, 3, 2.0)


def test_contour_paths_smoke(tmp_path):
    fig, ax = small_fig()
    points = {"minimum": [[0.0, 0.0]], "saddle": np.zeros((0, 2)), "other": [[1, 1]]}
    cs = plotting.contour_paths(
        ax, bowl, BOUNDS, paths=tiny_paths(), points=points, levels=5, n=N_GRID
    )
    assert len(cs.levels) > 1
    assert ax.get_xlim() == BOUNDS[0] and ax.get_ylim() == BOUNDS[1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["minimum", "other"]
    assert_png(plotting.save(fig, tmp_path / "contour.png", dpi=50))


def test_contour_paths_many_paths_log_levels_colorbar(tmp_path):
    fig, ax = small_fig()
    plotting.contour_paths(
        ax,
        bowl,
        BOUNDS,
        paths=tiny_paths(n=30),
        levels=5,
        log_levels=True,
        n=N_GRID,
        filled=False,
        colorbar=True,
    )
    assert len(fig.axes) == 2  # the colorbar
    assert_png(plotting.save(fig, tmp_path / "contour_log.png", dpi=50))


def test_surface3d_smoke(tmp_path):
    fig, ax = small_fig(subplot_kw={"projection": "3d"})
    paths = tiny_paths()
    paths[0, -1] = [10.0, 10.0]  # outside the bounds: dropped, not drawn
    plotting.surface3d(ax, bowl, BOUNDS, n=N_GRID, paths=paths)
    assert_png(plotting.save(fig, tmp_path / "surface.png", dpi=50))


@pytest.mark.parametrize(("normalize", "log_levels"), [(False, False), (True, True)])
def test_quiver_points_uphill(tmp_path, normalize, log_levels):
    fig, ax = small_fig()
    q = plotting.quiver(ax, bowl, BOUNDS, n=3, levels=4, log_levels=log_levels, normalize=normalize)
    # bowl's gradient is (2x, 4y): at the corner (2, 3) both components are positive.
    assert q.U[-1] > 0 and q.V[-1] > 0  # flattened, last = top right
    assert_png(plotting.save(fig, tmp_path / "quiver.png", dpi=50))


def test_loss_curves_log_and_masking(tmp_path):
    fig, ax = small_fig()
    losses = np.array([[1.0, 0.5, np.nan, 0.1], [2.0, np.inf, 1.0, 0.5]])
    lines = plotting.loss_curves(ax, np.arange(4), losses, labels=["a", "b"])
    assert len(lines) == 2
    assert ax.get_yscale() == "log"
    assert np.ma.getmaskarray(lines[0].get_ydata()).tolist() == [0, 0, 1, 0]
    assert np.ma.getmaskarray(lines[1].get_ydata()).tolist() == [0, 1, 0, 0]
    assert_png(plotting.save(fig, tmp_path / "loss.png", dpi=50))


def test_loss_curves_linear_when_not_positive():
    fig, ax = small_fig()
    plotting.loss_curves(ax, np.arange(3), np.array([1.0, 0.0, -1.0]))
    assert ax.get_yscale() == "linear"
    plt.close(fig)


def test_heatmap_smoke_log_edges(tmp_path):
    fig, ax = small_fig()
    lr_L = np.logspace(-3, 0, 4)
    beta_B = np.array([0.0, 0.5, 0.9])
    values = np.linspace(0, 1, 12).reshape(3, 4)
    values[0, 0] = np.nan
    mesh = plotting.heatmap(
        ax,
        values,
        lr_L,
        beta_B,
        xlabel="lr (log scale)",
        ylabel="momentum",
        log_x=True,
        cbar_label="success",
        vmin=0,
        vmax=1,
    )
    assert ax.get_xscale() == "log"
    x_edges = mesh.get_coordinates()[0, :, 0]
    # Geometric midpoints between log-spaced centres.
    np.testing.assert_allclose(x_edges, np.logspace(-3.5, 0.5, 5), rtol=1e-12, atol=0)
    assert_png(plotting.save(fig, tmp_path / "heatmap.png", dpi=50))


def test_curve_1d_smoke(tmp_path):
    fig, ax = small_fig()
    path_T = 1.5 * (-0.5) ** np.arange(6)
    curve = plotting.curve_1d(ax, lambda x: jnp.sum(x**2), (-2, 2), path_T=path_T, n=21)
    np.testing.assert_allclose(curve.get_ydata(), np.linspace(-2, 2, 21) ** 2, rtol=1e-6)
    assert_png(plotting.save(fig, tmp_path / "curve.png", dpi=50))


# ------------------------------------------------------------------------- basin map


def test_basin_map_colours_each_label():
    fig, ax = small_fig()
    labels = np.array([[0, 1], [-1, -2]])
    image = plotting.basin_image(
        ax, labels, BOUNDS, points=[[0.0, 0.0], [1.0, 1.0]], saddles=[[0.5, 0.5]]
    )
    np.testing.assert_array_equal(image.get_array(), labels)
    rgba = image.to_rgba(image.get_array())  # [2, 2, 4] floats in [0, 1]
    np.testing.assert_array_equal(rgba[1, 1], [0.0, 0.0, 0.0, 1.0])  # -2: black
    gray = rgba[1, 0, :3]
    assert gray.min() > 0.7 and np.ptp(gray) == 0  # -1 not converged: light gray
    assert not np.array_equal(rgba[0, 0], rgba[0, 1])  # basins 0 and 1 differ
    assert all(not np.array_equal(rgba[0, j], rgba[1, k]) for j in (0, 1) for k in (0, 1))
    # Row 0 is the lowest y: origin="lower", extent from the bounds.
    assert image.origin == "lower"
    assert tuple(image.get_extent()) == (-2.0, 2.0, -1.0, 3.0)
    plt.close(fig)


def test_basin_map_legend_lists_only_present_special_classes(tmp_path):
    fig, ax = small_fig(figsize=(plotting.FULL, 2.0))  # room for the legend
    labels = np.array([[0, 0], [2, -1]])
    plotting.basin_image(ax, labels, BOUNDS, names=["a", "b", "c"], fractions=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["0 a: 50.0%", "1 b: 0.0%", "2 c: 25.0%", "not converged: 25.0%"]
    assert_png(plotting.save(fig, tmp_path / "basins.png", dpi=50))


def test_basin_palette_skips_gray_and_black():
    palette = plotting.basin_palette(12)
    assert palette.shape == (12, 4)
    assert len({tuple(c) for c in palette}) == 12
    assert not np.any(np.ptp(palette[:, :3], axis=1) < 1e-6)  # no grays


# ------------------------------------------------------------------------- animation


@pytest.mark.parametrize(("t", "max_frames", "expected"), [(7, 4, 4), (3, 5, 3)])
def test_animate_paths_gif_frames(tmp_path, t, max_frames, expected):
    out = plotting.animate_paths(
        bowl,
        BOUNDS,
        tiny_paths(n=3, t=t),
        tmp_path / "anim",
        fps=10,
        points={"minimum": [[0.0, 0.0]]},
        max_frames=max_frames,
        tail=2,
        title="balls",
        levels=4,
        n=N_GRID,
        figsize=(1.5, 1.5),
        dpi=40,
    )
    assert out == tmp_path / "anim.gif"
    assert out.read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    with Image.open(out) as im:
        assert im.n_frames == expected
    assert [p.name for p in tmp_path.iterdir()] == ["anim.gif"]
    assert plt.get_fignums() == []


def test_frame_indices_keep_first_and_last():
    idx = plotting.frame_indices(1000, 120)
    assert len(idx) == 120 and idx[0] == 0 and idx[-1] == 999
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(plotting.frame_indices(5, 120), np.arange(5))


def test_animate_paths_rejects_other_suffix(tmp_path):
    with pytest.raises(ValueError, match="`path`"):
        plotting.animate_paths(bowl, BOUNDS, tiny_paths(), tmp_path / "a.mp4")


# ----------------------------------------------------------------------------- errors


def _contour_bad_paths(ax):
    plotting.contour_paths(ax, bowl, BOUNDS, paths=np.zeros((3, 4)))


def _contour_bad_bounds(ax):
    plotting.contour_paths(ax, bowl, [0.0, 1.0])


def _contour_bad_points(ax):
    plotting.contour_paths(ax, bowl, BOUNDS, points={"minimum": np.zeros((2, 3))})


def _surface_on_2d_axes(ax):
    plotting.surface3d(ax, bowl, BOUNDS)


def _basin_bad_labels(ax):
    plotting.basin_image(ax, np.zeros(4, dtype=int), BOUNDS)


def _basin_bad_points(ax):
    plotting.basin_image(ax, np.zeros((2, 2), dtype=int), BOUNDS, points=np.zeros(3))


def _loss_bad_losses(ax):
    plotting.loss_curves(ax, np.arange(3), np.zeros((2, 4)))


def _heatmap_bad_values(ax):
    plotting.heatmap(ax, np.zeros((2, 2)), [1, 2, 3], [1, 2], xlabel="x", ylabel="y")


def _heatmap_log_nonpositive(ax):
    kw = {"xlabel": "x", "ylabel": "y", "log_x": True}
    plotting.heatmap(ax, np.zeros((1, 2)), [0.0, 1.0], [1.0], **kw)


def _curve_bad_path(ax):
    plotting.curve_1d(ax, bowl, (-1, 1), path_T=np.zeros((3, 2)))


def _curve_bad_bounds(ax):
    plotting.curve_1d(ax, bowl, [[-1, 1]])


def _animate_bad_paths(ax):
    plotting.animate_paths(bowl, BOUNDS, np.zeros((3, 4)), "/nonexistent/a.gif")


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (_contour_bad_paths, "`paths` must have shape [N, T, 2], got (3, 4)"),
        (_contour_bad_bounds, "`bounds`"),
        (_contour_bad_points, "`points['minimum']`"),
        (_surface_on_2d_axes, "`ax3d`"),
        (_basin_bad_labels, "`labels_HxW`"),
        (_basin_bad_points, "`points`"),
        (_loss_bad_losses, "`losses_NxT`"),
        (_heatmap_bad_values, "`values_HxW`"),
        (_heatmap_log_nonpositive, "`x_values`"),
        (_curve_bad_path, "`path_T`"),
        (_curve_bad_bounds, "`bounds_1d`"),
        (_animate_bad_paths, "`paths_NxTx2`"),
    ],
)
def test_bad_shapes_name_the_argument(call, name):
    fig, ax = small_fig()
    try:
        with pytest.raises(ValueError) as info:
            call(ax)
        assert name in str(info.value)
    finally:
        plt.close(fig)
