"""The explorer's server: its numbers against the library called directly on the same starts.

One server per module (uvicorn in a thread on a free 127.0.0.1 port); the reference starts
are built here from the documented pixel-centre formula, not by the server's code.
"""

import concurrent.futures
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from sandbox import basins, explore, fractal, landscapes, optim, plotting, sweep

H = landscapes.get("himmelblau")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ex = explore.Explorer(cache_dir=tmp_path_factory.mktemp("tiles"))
    srv = explore.Server(ex)
    url = srv.start()
    yield url, ex
    srv.stop()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:  # closed now, not by the garbage collector in some later test
            return e.code, e.read()


def starts(x0, x1, y0, y1, n, dtype=np.float32) -> np.ndarray:
    """Pixel centres as the README defines them: row i at y0 + (i + 0.5)(y1 - y0)/n."""
    xs = [x0 + (j + 0.5) * (x1 - x0) / n for j in range(n)]
    ys = [y0 + (i + 0.5) * (y1 - y0) / n for i in range(n)]
    return np.array([[x, y] for y in ys for x in xs], dtype)


def reference(x0_Nx2, n, **kw) -> np.ndarray:
    run = sweep.descend("himmelblau", x0_Nx2, **kw)
    return basins.classify(run.x, H.minima, 1e-2, run.diverged).reshape(n, n)


def decode(png: bytes, k: int) -> np.ndarray:
    """A basin tile back to labels (row 0 at the bottom), through plotting's colours."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    table = [plotting.DIVERGED_COLOR, plotting.NOT_CONVERGED_COLOR, *plotting.basin_palette(k)]
    table = np.round(np.array(table)[:, :3] * 255).astype(int)
    dist = np.abs(rgb[:, :, None, :] - table[None, None]).sum(-1)  # [H, W, k + 2]
    assert np.all(dist.min(-1) == 0), "a pixel has a colour outside the basin palette"
    return (np.argmin(dist, -1) - 2)[::-1]


def test_landscapes_lists_every_2d_landscape_with_its_minima(server):
    url, _ = server
    status, body = get(url + "/api/landscapes")
    assert status == 200
    got = {item["name"]: item for item in json.loads(body)}
    assert set(got) == {n for n in landscapes.names() if landscapes.get(n).dim == 2}
    h = got["himmelblau"]
    np.testing.assert_allclose(h["bounds"], H.bounds, rtol=0, atol=0)
    np.testing.assert_allclose(h["minima"], H.minima, rtol=0, atol=0)
    assert h["formula"] == H.formula and len(h["saddles"]) == len(H.saddles)
    assert len(got["rastrigin"]["minima"]) == len(
        landscapes.local_minima(landscapes.get("rastrigin"))
    )


def test_basins_equal_classify_of_descend_on_the_same_starts(server):
    url, _ = server
    q = "landscape=himmelblau&optimizer=momentum&lr=0.004&momentum=0.5&steps=30"
    box = (-5.0, 4.5, -4.0, 5.5)
    n = 24
    status, body = get(
        f"{url}/api/basins?{q}&x0={box[0]}&x1={box[1]}&y0={box[2]}&y1={box[3]}&n={n}"
    )
    assert status == 200
    r = json.loads(body)
    ref = reference(starts(*box, n), n, optimizer="momentum", steps=30, lr=0.004, momentum=0.5)
    np.testing.assert_array_equal(np.array(r["labels"]), ref)
    np.testing.assert_allclose(r["minima"], H.minima, rtol=0, atol=0)
    for i in range(len(H.minima)):
        assert r["fractions"][str(i)] == pytest.approx(np.mean(ref == i), abs=1e-12)
    assert r["fractions"]["diverged"] == pytest.approx(np.mean(ref == -2), abs=1e-12)
    # 30 steps at lr 0.004 leave some starts short of a minimum: all classes are checked.
    assert 0 < np.mean(ref == -1) < 1


@pytest.mark.parametrize("optimizer", optim.names())
def test_every_optimizer_answers_with_the_labels_of_sweep_descend(server, optimizer):
    url, _ = server
    hyper = {k: v for k, v in optim.hyperparameters(optimizer).items() if k != "lr"}
    q = "&".join(f"{k}={v}" for k, v in hyper.items())
    box = (-4.0, 4.0, -4.0, 4.0)
    status, body = get(
        f"{url}/api/basins?optimizer={optimizer}&lr=0.01&steps=20&{q}"
        f"&x0={box[0]}&x1={box[1]}&y0={box[2]}&y1={box[3]}&n=8"
    )
    assert status == 200, body
    ref = reference(starts(*box, 8), 8, optimizer=optimizer, steps=20, lr=0.01, **hyper)
    np.testing.assert_array_equal(np.array(json.loads(body)["labels"]), ref)


def test_tile_pixels_decode_to_the_labels_of_its_pixel_centres(server):
    url, _ = server
    status, png = get(f"{url}/tile/1/1/0.png?landscape=himmelblau&lr=0.01&steps=60")
    assert status == 200
    assert Image.open(io.BytesIO(png)).size == (256, 256)
    # Zoom 1, tile (1, 0): the right half in x, the top half in y of Himmelblau's bounds.
    (xl, xh), (yl, yh) = H.bounds
    box = ((xl + xh) / 2, xh, (yl + yh) / 2, yh)
    ref = reference(starts(*box, 256), 256, steps=60, lr=0.01)
    np.testing.assert_array_equal(decode(png, len(H.minima)), ref)
    assert len(np.unique(ref)) >= 2  # the tile crosses basins


def test_view_png_is_the_same_labels_over_any_box(server):
    url, _ = server
    box = (-1.0, 4.0, -2.0, 3.0)
    q = f"lr=0.01&steps=60&x0={box[0]}&x1={box[1]}&y0={box[2]}&y1={box[3]}"
    status, png = get(f"{url}/view.png?{q}&w=40&h=40")
    assert status == 200 and Image.open(io.BytesIO(png)).size == (40, 40)
    ref = reference(starts(*box, 40), 40, steps=60, lr=0.01)
    np.testing.assert_array_equal(decode(png, len(H.minima)), ref)


def test_steps_colouring_marks_the_runs_that_never_reached_tol(server):
    url, _ = server
    status, png = get(f"{url}/tile/0/0/0.png?lr=0.01&steps=40&colour=steps&tol=1e-3")
    assert status == 200
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)[::-1]
    run = sweep.descend("himmelblau", starts(*H.bounds.ravel(), 256), steps=40, lr=0.01, tol=1e-3)
    never = (run.steps_to_tol < 0).reshape(256, 256)
    assert 0 < never.mean() < 1
    np.testing.assert_array_equal(np.all(rgb == (40, 40, 40), axis=-1), never)


def test_a_new_server_on_the_same_disk_cache_computes_nothing(server, tmp_path_factory):
    url, ex = server
    tile = "/tile/1/0/1.png?landscape=himmelblau&lr=0.01&steps=62"
    status, png = get(url + tile)
    assert status == 200
    # The same code version (the library's files may change under a running test session).
    again = explore.Server(explore.Explorer(cache_dir=ex.disk.root, version=ex.version))
    url2 = again.start()
    try:
        assert get(url2 + tile) == (200, png)
        assert again.explorer.worker.computed == 0
    finally:
        again.stop()


def test_identical_concurrent_requests_are_computed_once_then_cached(server):
    url, ex = server
    tile = f"{url}/tile/2/1/2.png?landscape=himmelblau&lr=0.01&steps=61"
    before = ex.worker.computed
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(get, [tile] * 8))
    assert all(s == 200 for s, _ in answers) and len({b for _, b in answers}) == 1
    assert ex.worker.computed - before == 1
    assert get(tile) == answers[0] and ex.worker.computed - before == 1  # from the cache


def test_fifty_concurrent_tile_requests_all_answer(server):
    url, _ = server
    tiles = [
        f"{url}/tile/3/{i % 8}/{i // 8}.png?landscape=booth&lr=0.02&steps=20" for i in range(50)
    ]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(get, tiles))
    assert [s for s, _ in answers] == [200] * 50
    assert all(Image.open(io.BytesIO(b)).size == (256, 256) for _, b in answers)


BAD = [
    ("/api/basins?landscape=nope&lr=0.01&x0=0&x1=1&y0=0&y1=1", "landscape"),
    ("/api/basins?optimizer=nope&lr=0.01&x0=0&x1=1&y0=0&y1=1", "optimizer"),
    ("/api/basins?lr=0&x0=0&x1=1&y0=0&y1=1", "lr"),
    ("/api/basins?lr=-0.5&x0=0&x1=1&y0=0&y1=1", "lr"),
    ("/api/basins?lr=nan&x0=0&x1=1&y0=0&y1=1", "lr"),
    ("/api/basins?lr=inf&x0=0&x1=1&y0=0&y1=1", "lr"),
    ("/api/basins?lr=0.01&x0=1&x1=0&y0=0&y1=1", "x0"),
    ("/api/basins?lr=0.01&x0=0&x1=1&y0=2&y1=1", "y0"),
    ("/api/basins?lr=0.01&x0=0&x1=1&y0=0&y1=1&n=1025", "n"),
    ("/api/basins?lr=0.01&x0=zero&x1=1&y0=0&y1=1", "x0"),
    ("/api/basins?lr=0.01&x0=0&x1=1&y0=0&y1=1&steps=1.5", "steps"),
    ("/api/basins?lr=0.01&x0=3&x1=3.0000000000001&y0=2&y1=2.0000000000001&n=8", "x0"),
    ("/api/basins?optimizer=momentum&lr=0.01&momentum=1.5&x0=0&x1=1&y0=0&y1=1", "momentum"),
    ("/api/basins?lr=0.01&b1=0.9&x0=0&x1=1&y0=0&y1=1", "b1"),
    ("/tile/45/0/0.png?lr=0.01", "z"),
    ("/tile/2/4/0.png?lr=0.01", "x"),
    ("/tile/2/0/x.png?lr=0.01", "y"),
    ("/tile/1/0/0.png?lr=0.01&colour=pink", "colour"),
    ("/api/path?lr=0.01&x=1", "y"),
    ("/api/trainability?x0=0&x1=1&y0=0&y1=1&steps=5", "steps"),
    ("/tile/trainability/0/0/0.png?px=17", "px"),
    # Zooms past the deepest one float64 resolves (/api/config, /api/landscapes: max_zoom).
    ("/tile/trainability/37/0/0.png", "z"),
    ("/tile/init_vs_lr/39/0/0.png", "z"),
    ("/tile/40/0/0.png?lr=0.01", "z"),
    ("/tile/nope/0/0/0.png", "map"),
    # Learning rates 10^x0 that are not finite and positive in float64.
    ("/api/trainability?x0=1000000&x1=1000001&y0=0&y1=1&n=2", "x0"),
    ("/api/trainability?x0=-400&x1=-399&y0=0&y1=1&n=2", "x0"),
    ("/api/trainability?x0=0&x1=700&y0=0&y1=1&n=2", "x1"),
    ("/api/init_vs_lr?x0=0&x1=1&y0=-800&y1=1&n=2", "y0"),
    # Every unknown parameter is named, beside known ones too.
    ("/api/basins?lr=0.01&learning_rate=5&x0=0&x1=1&y0=0&y1=1", "learning_rate"),
    ("/tile/0/0/0.png?lr=0.01&zoom=3", "zoom"),
    ("/api/path?lr=0.01&x=1&y=1&n=3", "n"),
    ("/api/path?lr=0.01&x=1e30&y=1", "x"),  # outside the bounds: no start of the map
    ("/api/path?lr=0.01&x=1&y=-6.01", "y"),
    ("/api/path?lr=0.01&x=inf&y=1", "x"),
    ("/view.png?lr=0.01&x0=0&x1=1&y0=0&y1=1&n=4", "n"),
    ("/api/trainability?x0=0&x1=1&y0=0&y1=1&lr1=3", "lr1"),
    ("/tile/init_vs_lr/0/0/0.png?px=16&offset=1", "offset"),
    ("/api/landscapes?name=x", "name"),
    ("/api/config?x=1", "x"),
]


@pytest.mark.parametrize("path,param", BAD, ids=[p for p, _ in BAD])
def test_each_bad_request_is_a_400_naming_it_and_the_next_good_one_works(server, path, param):
    url, _ = server
    status, body = get(url + path)
    assert status == 400
    assert f"`{param}`" in json.loads(body)["error"]
    status, body = get(f"{url}/api/basins?lr=0.01&steps=60&x0=0&x1=1&y0=0&y1=1&n=4")
    assert status == 200 and len(json.loads(body)["labels"]) == 4


def test_deep_views_switch_to_float64(server):
    url, _ = server
    # 8 pixels over 1e-6 near (3, 2): 1.25e-7 apart, half a float32 ulp of 3 (2.4e-7).
    box = (2.99, 2.990001, 1.99, 1.990001)
    assert np.unique(starts(*box, 8).astype(np.float32), axis=0).shape[0] < 64
    status, body = get(
        f"{url}/api/basins?lr=0.01&steps=60&x0={box[0]}&x1={box[1]}&y0={box[2]}&y1={box[3]}&n=8"
    )
    assert status == 200
    with jax.enable_x64(True):
        ref = reference(starts(*box, 8, np.float64), 8, steps=60, lr=0.01)
    np.testing.assert_array_equal(np.array(json.loads(body)["labels"]), ref)
    assert explore.precision(np.array([box[:2], box[2:]]), 8, 8, "x0") is True
    assert explore.precision(np.array([[-6, 6], [-6, 6]]), 256, 256, "z") is False


def fn_diagonal_wells(x):
    u, v = x[0] + x[1], x[0] - x[1]  # minima at u = +-1, v = 1; u = 0 splits the basins
    return (u**2 - 1) ** 2 + (v - 1) ** 2


def test_views_near_the_origin_take_the_dtype_of_where_the_runs_go():
    # Starts 5e-10 apart around (0, 0) move out to x, y ~ 0.5 while u = x + y is still
    # about 1e-9, under float32's ulp there (6e-8): in float32 every run ends on u = 0,
    # not converged. The dtype follows the coordinates the runs reach (the bounds, 2).
    srv = explore.Server(
        explore.Explorer("tests.test_explore:fn_diagonal_wells", bounds=(-2, 2, -2, 2))
    )
    url = srv.start()
    try:
        q = "landscape=tests.test_explore:fn_diagonal_wells&lr=0.01&steps=600"
        box = "x0=-2e-9&x1=2e-9&y0=-2e-9&y1=2e-9&n=8"
        status, body = get(f"{url}/api/basins?{q}&{box}")
    finally:
        srv.stop()
    assert status == 200
    labels = np.array(json.loads(body)["labels"])
    # Row i at y = (i - 3.5) 5e-10, column j at x = (j - 3.5) 5e-10: u has the sign of
    # i + j - 7, so the runs go to the minimum with u = sign(u), and the diagonal stays.
    s = explore.load_fn("tests.test_explore:fn_diagonal_wells", (-2, 2, -2, 2))
    plus = int(np.argmax(s.minima[:, 0] + s.minima[:, 1]))
    i, j = np.indices((8, 8))
    expected = np.where(i + j > 7, plus, 1 - plus)
    expected[i + j == 7] = -1
    np.testing.assert_array_equal(labels, expected)
    assert explore.precision(np.array([[-2e-9, 2e-9]] * 2), 8, 8, "x0") is False
    assert explore.precision(np.array([[-2e-9, 2e-9]] * 2), 8, 8, "x0", reach=2.0) is True


def test_path_is_the_recorded_run_from_that_start(server):
    url, _ = server
    status, body = get(f"{url}/api/path?landscape=himmelblau&lr=0.01&steps=200&x=0.5&y=-0.5")
    assert status == 200
    r = json.loads(body)
    ref = sweep.descend("himmelblau", np.array([[0.5, -0.5]], np.float32), steps=200, lr=0.01)
    np.testing.assert_allclose(r["final"], ref.x[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(r["path"][0], [0.5, -0.5], rtol=0, atol=0)
    np.testing.assert_allclose(r["path"][-1], ref.x[0], rtol=0, atol=1e-6)
    assert r["steps"][-1] == 200 and len(r["path"]) == len(r["losses"]) == 201
    assert r["label"] == int(basins.classify(ref.x, H.minima, 1e-2)[0]) >= 0
    assert r["losses"][-1] < 1e-6 < r["losses"][0]  # from f(0.5, -0.5) ~ 180 to a minimum
    assert r["x64"] is False
    # In a tile that float32 no longer resolves, the path is float64 too.
    z = 12
    status, body = get(f"{url}/api/path?lr=0.01&steps=20&x=5.9&y=5.9&z={z}")
    (xl, xh), (yl, yh) = H.bounds
    w = (xh - xl) / 2**z
    tile = np.array([[xh - w, xh], [yh - w, yh]])
    assert status == 200 and json.loads(body)["x64"] is explore.precision(tile, 256, 256, "z")
    assert json.loads(body)["x64"] is True


def fn_pole(x):
    return 1.0 / x[0] ** 2 + x[1] ** 2  # infinite on x = 0


def test_a_path_from_a_pole_is_strict_json_with_a_null_loss():
    srv = explore.Server(explore.Explorer("tests.test_explore:fn_pole", bounds=(-1, 1, -1, 1)))
    url = srv.start()
    try:
        q = "landscape=tests.test_explore:fn_pole&lr=0.1&steps=10&x=0&y=0.5"
        status, body = get(f"{url}/api/path?{q}")
    finally:
        srv.stop()

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    r = json.loads(body, parse_constant=refuse)
    assert status == 200 and r["diverged"] and r["label"] == basins.DIVERGED
    assert r["final_loss"] is None and r["path"] == [] and r["losses"] == []


def test_trainability_equals_score_grid_and_its_tile_shows_the_sign(server):
    url, _ = server
    status, body = get(f"{url}/api/trainability?x0=-1&x1=7&y0=0&y1=3&n=6&steps=40")
    assert status == 200
    lr1 = 10.0 ** (-1 + (np.arange(6) + 0.5) * 8 / 6)
    lr2 = 10.0 ** (0 + (np.arange(6) + 0.5) * 3 / 6)
    with jax.enable_x64(True):
        params, data = fractal.problem(jax.random.key(0), 8)
        ref = fractal.score_grid(params, data, lr1, lr2, steps=40, batch_size=36)
    np.testing.assert_allclose(json.loads(body)["score"], ref, rtol=1e-12, atol=1e-12)
    assert (ref > 0).any() and (ref < 0).any()
    # A 16 x 16 tile over the whole window: blue where it trains, red where it diverges.
    status, png = get(f"{url}/tile/trainability/0/0/0.png?steps=40&px=16")
    assert status == 200
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)[::16, ::16][::-1]
    lr1 = 10.0 ** (-1 + (np.arange(16) + 0.5) * 8 / 16)
    lr2 = 10.0 ** (0 + (np.arange(16) + 0.5) * 3 / 16)
    with jax.enable_x64(True):
        ref = fractal.score_grid(params, data, lr1, lr2, steps=40, batch_size=64)
    blue = rgb[..., 2] > rgb[..., 0]
    np.testing.assert_array_equal(blue, ref > 0)


def test_init_vs_lr_map_equals_train_on_offset_weights(server):
    # The paper's second phase space: log10 offset of W1's initial weights (x) against
    # log10 lr of both layers (y); each pixel against `fractal.train` called on its own.
    url, _ = server
    status, body = get(f"{url}/api/init_vs_lr?x0=-1&x1=2&y0=0.5&y1=2&n=4&steps=40")
    assert status == 200
    r = json.loads(body)
    offsets = 10.0 ** (-1 + (np.arange(4) + 0.5) * 3 / 4)
    lrs = 10.0 ** (0.5 + (np.arange(4) + 0.5) * 1.5 / 4)
    with jax.enable_x64(True):
        params, data = fractal.problem(jax.random.key(0), 8)
        one = jax.jit(lambda p, lr: fractal.train(p, data, lr, lr, 40))
        ref = np.array(
            [[float(one(fractal.offset_init(params, o), b)) for o in offsets] for b in lrs]
        )
    assert (ref > 0).any() and (ref < 0).any()
    np.testing.assert_array_equal(np.array(r["score"]) > 0, ref > 0)
    # Vmapped against one by one: float64 rounding in another order, which the dynamics
    # near the boundary amplify (test_fractal measures 2e-9).
    np.testing.assert_allclose(r["score"], ref, rtol=1e-6, atol=1e-12)
    assert r["trainable_share"] == pytest.approx(np.mean(ref > 0), abs=1e-12)
    # Its tile over the whole window, 16 x 16 runs: blue exactly where `train` trains.
    status, png = get(f"{url}/tile/init_vs_lr/0/0/0.png?steps=40&px=16")
    assert status == 200
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)[::16, ::16][::-1]
    (a0, a1), (b0, b1) = explore.INIT_BOUNDS
    offsets = 10.0 ** (a0 + (np.arange(16) + 0.5) * (a1 - a0) / 16)
    lrs = 10.0 ** (b0 + (np.arange(16) + 0.5) * (b1 - b0) / 16)
    with jax.enable_x64(True):
        batched = jax.jit(jax.vmap(jax.vmap(one, in_axes=(None, 0)), in_axes=(0, None)))
        stacked = (params[0][None] + offsets[:, None, None], params[1][None].repeat(16, 0))
        ref = np.asarray(batched(stacked, lrs)).T  # [lr, offset]
    assert (ref > 0).any() and (ref < 0).any()
    blue = rgb[..., 2] > rgb[..., 0]
    disagree = blue != (ref > 0)
    # Pixels whose score is within rounding of 0 may take either side.
    assert np.all(np.abs(ref[disagree]) < 1e-6), ref[disagree]


def test_view_dimension_is_box_counting_of_the_labels_boundary(server):
    url, _ = server
    box = (-5.0, 5.0, -5.0, 5.0)
    status, body = get(
        f"{url}/api/basins?lr=0.01&steps=60&x0={box[0]}&x1={box[1]}&y0={box[2]}&y1={box[3]}&n=64"
    )
    assert status == 200
    r = json.loads(body)
    edge = fractal.boundary(np.array(r["labels"]))
    dim, fit = fractal.box_counting_dimension(edge, [1, 2, 4, 8])
    assert r["dimension"]["dim"] == pytest.approx(dim, abs=1e-12)
    assert r["dimension"]["sizes"] == [1, 2, 4, 8]
    assert r["dimension"]["residual"] == pytest.approx(fit.residual, abs=1e-12)
    # Basin boundaries of a smooth map are curves: between a line's 1 and an area's 2.
    assert 1.0 <= dim < 1.6


def test_tile_cache_keys_cover_every_library_file_and_jax(tmp_path, monkeypatch):
    # A copy of sandbox/: a comment added to models/mlp.py (the trainability network; the
    # former hand-written key list left it out) changes the code version.
    lib = tmp_path / "sandbox"
    shutil.copytree(
        explore.caches.SANDBOX, lib, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    v1 = explore.code_version(lib)
    assert explore.code_version(lib) == v1
    with open(lib / "models" / "mlp.py", "a") as f:
        f.write("# a comment\n")
    v2 = explore.code_version(lib)
    assert v2 != v1
    monkeypatch.setattr(jax, "__version__", jax.__version__ + ".post1")
    assert explore.code_version(lib) not in (v1, v2)
    monkeypatch.undo()
    # A server of the other version computes the tile again; one of the same version not.
    tile = "/tile/1/1/1.png?landscape=booth&lr=0.02&steps=9"
    cache = tmp_path / "tiles"
    computed = []
    for version in (v1, v1, v2):
        srv = explore.Server(explore.Explorer(cache_dir=cache, version=version))
        try:
            assert get(srv.start() + tile)[0] == 200
            computed.append(srv.explorer.worker.computed)
        finally:
            srv.stop()
    assert computed == [1, 0, 1]


def test_a_corrupted_disk_tile_is_computed_again(server):
    url, ex = server
    tile = "/tile/2/2/2.png?landscape=himmelblau&lr=0.01&steps=63"
    status, png = get(url + tile)
    assert status == 200
    for damage in ("garble", "truncate", "swap"):
        f = max(ex.disk.root.glob("*.bin"), key=lambda p: p.stat().st_mtime_ns)
        data = f.read_bytes()
        if damage == "garble":
            f.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
        elif damage == "truncate":
            f.write_bytes(data[: len(data) // 2])
        else:  # another valid PNG in its place
            f.write_bytes(data[:32] + Image.new("P", (256, 256)).tobytes())
        again = explore.Server(explore.Explorer(cache_dir=ex.disk.root, version=ex.version))
        try:
            assert get(again.start() + tile) == (200, png)
            assert again.explorer.disk.rejected == 1 and again.explorer.worker.computed == 1
        finally:
            again.stop()


def test_a_running_job_whose_client_left_frees_the_worker(server):
    # A 1024 x 1024 Adam map (a minute of work on 2 CPU cores) dropped by its client once
    # it runs: it stops at the next block, and the next request is computed.
    url, ex = server
    host, port = url.removeprefix("http://").split(":")
    cancelled = ex.worker.cancelled
    q = "optimizer=adam&lr=0.01&steps=1000&x0=-5&x1=5&y0=-5&y1=5.01&n=1024"
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET /api/basins?{q} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        deadline = time.monotonic() + 60
        while not ex.worker.running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ex.worker.running, "the job never started"
    deadline = time.monotonic() + 60
    while ex.worker.cancelled == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ex.worker.cancelled == cancelled + 1
    status, _ = get(f"{url}/api/basins?lr=0.01&steps=60&x0=0&x1=1&y0=0&y1=1&n=4")
    assert status == 200


def test_compiled_programs_are_bounded(server, monkeypatch):
    # Each new step count is a new compiled program: past PROGRAMS_MAX of them JAX's caches
    # are cleared, so memory does not grow with the settings asked for (benchmarks/
    # explore.py --memory measures the server's resident memory).
    url, ex = server
    monkeypatch.setattr(explore.explorer, "PROGRAMS_MAX", 2)
    clears = ex.clears
    for steps in (11, 12, 13, 14, 15):
        status, _ = get(f"{url}/api/basins?lr=0.01&steps={steps}&x0=0&x1=1&y0=0&y1=1&n=2")
        assert status == 200
        assert len(ex.programs) <= 2
    assert ex.clears >= clears + 2


def test_caches_stay_within_their_bounds(tmp_path):
    mem = explore.MemoryCache(1000)
    for i in range(20):
        mem.put(str(i), bytes(300))
    assert mem.size <= 1000 and mem.get("19") is not None and mem.get("0") is None
    disk = explore.DiskCache(tmp_path, 1000)
    for i in range(20):
        disk.put(str(i), bytes(300))
    assert sum(p.stat().st_size for p in tmp_path.glob("*.bin")) <= 1000
    assert disk.get("19") == bytes(300) and disk.get("0") is None


def test_a_full_queue_answers_busy():
    w = explore.Worker(max_jobs=1)
    gate = threading.Event()
    w.submit(explore.Job("a", 0, None, lambda jobs: gate.wait(10) and None, None))
    with pytest.raises(explore.Busy):
        w.submit(explore.Job("b", 0, None, lambda jobs: None, None))
    gate.set()
    w.stop()


def test_a_queued_tile_whose_client_went_away_is_not_computed(server):
    url, ex = server
    gate = threading.Event()
    ex.worker.submit(explore.Job("hold", -1, None, lambda jobs: gate.wait(30) and None, None))
    host, port = url.removeprefix("http://").split(":")
    try:
        dropped = ex.worker.dropped
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"GET /tile/3/5/5.png?lr=0.01&steps=77 HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.5)  # queued behind the held job; then the client goes away
        deadline = time.monotonic() + 10
        while ex.worker.dropped == dropped and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ex.worker.dropped == dropped + 1
    finally:
        gate.set()
    status, _ = get(f"{url}/tile/3/5/5.png?lr=0.01&steps=77")  # asked again: computed
    assert status == 200


def test_command_line_serves_on_127_0_0_1_and_prints_its_url():
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.explore", "--port", "0", "--cache", "none"]
        + ["--fn", "tests.test_explore:fn_two_wells", "--bounds", "-2", "2", "-2", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("explorer: http://127.0.0.1:"), line
        base = line.split()[1].rstrip("/")
        status, body = get(base + "/api/landscapes")
        assert status == 200
        mine = [s for s in json.loads(body) if s["name"] == "tests.test_explore:fn_two_wells"]
        assert len(mine) == 1 and sorted(m[0] for m in mine[0]["minima"]) == pytest.approx(
            [-1, 1], abs=1e-9
        )
        status, page = get(base + "/")
        assert status == 200 and b"leaflet.js" in page
        assert get(base + "/static/leaflet/LICENSE")[0] == 200
    finally:
        proc.terminate()  # SIGTERM: a clean stop, status 0, nothing on stderr
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


def fn_two_wells(x):
    return (x[0] ** 2 - 1) ** 2 + 2 * x[1] ** 2


def test_fn_finds_the_minima_of_a_user_function():
    s = explore.load_fn("tests.test_explore:fn_two_wells", (-2, 2, -2, 2))
    np.testing.assert_allclose(s.minima[np.argsort(s.minima[:, 0])], [[-1, 0], [1, 0]], atol=1e-9)
    assert s.f_min == pytest.approx(0, abs=1e-12)


def test_an_fn_surfaces_cache_version_covers_its_module_and_bounds(tmp_path, monkeypatch):
    # Disk tiles outlive the server: they must not be served for other bounds, or for the
    # same function over another value of a module constant.
    monkeypatch.syspath_prepend(tmp_path)
    body = "def f(x):\n    return (x[0] ** 2 - A) ** 2 + x[1] ** 2\n"
    for name, a in (("fn_version_a", 1.0), ("fn_version_b", 4.0)):
        (tmp_path / f"{name}.py").write_text(f"A = {a}\n\n\n{body}")
    a = explore.load_fn("fn_version_a:f", (-3, 3, -3, 3))
    assert explore.load_fn("fn_version_a:f", (-3, 3, -3, 3)).version == a.version
    assert explore.load_fn("fn_version_a:f", (-2, 2, -2, 2)).version != a.version
    assert explore.load_fn("fn_version_b:f", (-3, 3, -3, 3)).version != a.version


def test_the_browser_keeps_a_tile_only_under_the_servers_version(server):
    url, ex = server
    tile = f"{url}/tile/0/0/0.png?lr=0.01&steps=40"

    def cache_control(u: str) -> str:
        with urllib.request.urlopen(u, timeout=120) as r:
            return r.headers["Cache-Control"]

    assert cache_control(f"{tile}&v={ex.tiles_version}") == "public, max-age=86400"
    assert cache_control(f"{tile}&v=0123456789abcdef") == "no-store"
    assert cache_control(tile) == "no-store"


@pytest.mark.parametrize(
    "argv,word",
    [(["--port", "http"], "--port"), (["--port", "70000"], "--port"), (["--fn", "nope"], "--fn")],
)
def test_bad_command_line_is_one_line_and_status_2(argv, word, capsys):
    with pytest.raises(SystemExit) as e:
        explore.main(["--cache", "none", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert len(err.strip().splitlines()) == 1 and word in err


@pytest.mark.slow  # make test keeps the command line served on 127.0.0.1 and the in-process errors
def test_bad_command_line_from_the_shell_has_no_traceback():
    r = subprocess.run(
        [sys.executable, "-m", "sandbox.explore", "--cache", "none", "--fn", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--fn" in r.stderr
    assert "Traceback" not in r.stderr


def test_classify_in_2d_equals_the_norm_over_all_minima():
    # basins.classify's 2-D path (one minimum at a time, for the explorer's speed) against
    # argmin of np.linalg.norm over [N, k, 2], on endpoints near minima, ties, NaN and inf.
    rng = np.random.default_rng(0)
    m = landscapes.local_minima(landscapes.get("rastrigin"))
    x = rng.uniform(-5, 5, (20_000, 2))
    x[::3] = m[rng.integers(0, len(m), len(x[::3]))] + rng.normal(0, 3e-3, (len(x[::3]), 2))
    x[::7] = (m[0] + m[1]) / 2  # equidistant from two minima: the first wins
    x[5], x[6] = np.nan, np.inf
    for tol in (1e-2, 0.6):
        dist = np.linalg.norm(x[:, None, :] - m[None], axis=-1)
        ref = np.where(dist.min(1) <= tol, np.argmin(dist, 1), -1)
        ref[5:7] = -2
        np.testing.assert_array_equal(basins.classify(x, m, tol), ref)


def test_gallery_links_to_the_explorer_and_each_basin_map(tmp_path):
    from sandbox import report

    folder = tmp_path / "local_minima"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"maps": [["himmelblau", "adam", 0.02, 2000]]}))
    text = report.build(tmp_path).read_text()
    assert f'<a id="explorer" href="{report.EXPLORER}">' in text
    link = "?landscape=himmelblau&amp;optimizer=adam&amp;lr=0.02&amp;steps=2000"
    assert f'href="{report.EXPLORER}{link}"' in text


def test_trainability_defaults_are_the_fractal_studys():
    from studies import fractal as study

    cfg = study.Config()
    assert (explore.TRAIN_WIDTH, explore.TRAIN_SEED, explore.TRAIN_STEPS) == (
        cfg.width,
        cfg.seed,
        cfg.steps,
    )
    np.testing.assert_array_equal(explore.TRAIN_BOUNDS, [cfg.log10_lr1, cfg.log10_lr2])
    assert explore.TRAIN_GAP == study._GAP


# ----------------------------------------------------------------------------- stored sweeps

# Labelled by its own rules, not the explorer's (all 4 minima, within 1e-2, diverged past
# 1e6): two of the four minima, within 0.3, diverged past 3.5 (the runs to the other two
# minima, which lie past it, end diverged), in float64.
SWEEP_MINIMA = [[3.0, 2.0], [-2.805118086952745, 3.131312518250573]]
SWEEP_SPEC = f"""
landscape = "himmelblau"
optimizer = "sgd"
steps = 30
minima = {SWEEP_MINIMA}
basin_tol = 0.3
bound = 3.5
dtype = "float64"

[starts]
grid = 32

[axes]
lr = {{ values = [0.004, 0.02] }}
"""


def sweep_reference(x0_Nx2: np.ndarray, lr: float) -> np.ndarray:
    """The spec's labels of its runs, by sweep.descend and basins.classify called here."""
    with jax.enable_x64(True):
        run = sweep.descend("himmelblau", x0_Nx2.astype(np.float64), steps=30, lr=lr, bound=3.5)
    return basins.classify(run.x, SWEEP_MINIMA, 0.3, run.diverged)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "spec.toml").write_text(SWEEP_SPEC)
    sweep.run(folder / "spec.toml", folder / "store", progress=False)
    srv = explore.Server(explore.Explorer(cache_dir=None, sweep_dir=folder / "store"))
    yield srv.start(), folder / "store"
    srv.stop()


def test_a_stored_sweep_is_its_basin_map_per_combination(stored):
    url, _ = stored
    status, body = get(url + "/api/config")
    info = json.loads(body)["sweep"]
    assert info["grid"] == [32, 32] and info["axes"] == {"lr": [0.004, 0.02]}
    (xl, xh), (yl, yh) = H.bounds
    dx = (xh - xl) / 31  # the starts are a linspace over the bounds, both ends included
    np.testing.assert_allclose(
        info["extent"], [[xl - dx / 2, xh + dx / 2], [yl - dx / 2, yh + dx / 2]]
    )
    # The starts as the spec defines them, run here by sweep.descend: pixel (row from the
    # top r, column c) is the start at x = xl + c dx, y = yh - r dx.
    xs, ys = np.linspace(xl, xh, 32), np.linspace(yl, yh, 32)
    x0 = np.array([[x, y] for y in ys for x in xs])
    for index, lr in enumerate((0.004, 0.02)):
        status, png = get(f"{url}/sweep.png?lr={index}")
        assert status == 200
        ref = sweep_reference(x0, lr).reshape(32, 32)
        np.testing.assert_array_equal(decode(png, len(SWEEP_MINIMA)), ref)
        assert len(np.unique(ref)) >= 3
        status, body = get(f"{url}/api/sweep?lr={index}")
        r = json.loads(body)
        assert r["combination"] == {"lr": lr}
        assert r["fractions"]["diverged"] == pytest.approx(np.mean(ref == -2), abs=1e-12)


def test_live_tiles_paths_and_views_of_a_stored_sweep_label_as_the_sweep(stored):
    url, _ = stored
    _, body = get(url + "/api/config")
    info = json.loads(body)["sweep"]
    surface = info["surface"]
    assert surface["name"] == "@sweep" and info["live_off"] is None
    assert surface["minima"] == SWEEP_MINIMA == info["minima"] and surface["basin_tol"] == 0.3
    assert surface["colours"] == info["colours"]
    # /api/basins over the stored image's extent, 32 x 32: its pixel centres are the stored
    # starts (the linspace over the bounds), row 0 at the bottom as decode gives the image.
    (ex0, ex1), (ey0, ey1) = info["extent"]
    (xl, xh), (yl, yh) = H.bounds
    xs, ys = np.linspace(xl, xh, 32), np.linspace(yl, yh, 32)
    x0 = np.array([[x, y] for y in ys for x in xs])
    np.testing.assert_allclose(starts(ex0, ex1, ey0, ey1, 32, np.float64), x0, rtol=0, atol=1e-14)
    box = f"x0={ex0!r}&x1={ex1!r}&y0={ey0!r}&y1={ey1!r}&n=32"
    for index, lr in enumerate((0.004, 0.02)):
        _, png = get(f"{url}/sweep.png?lr={index}")
        stored_labels = decode(png, len(SWEEP_MINIMA))
        q = f"optimizer=sgd&lr={lr}&steps=30&{box}"
        status, body = get(f"{url}/api/basins?landscape=@sweep&{q}")
        assert status == 200
        live = np.array(json.loads(body)["labels"])
        np.testing.assert_array_equal(live, stored_labels)
        # The explorer's own rules over the same starts label otherwise (the test can fail).
        _, body = get(f"{url}/api/basins?landscape=himmelblau&{q}")
        own = np.array(json.loads(body)["labels"])
        assert np.mean(own != stored_labels) > 0.05
        # A path from a start the two rules label differently: the sweep's label, in the
        # sweep's float64 (its tile at zoom 0 is float32 on the landscape's own surface).
        i, j = np.argwhere(own != stored_labels)[0]
        x, y = (float(v) for v in x0[i * 32 + j])
        status, body = get(f"{url}/api/path?landscape=@sweep&lr={lr}&steps=30&x={x!r}&y={y!r}")
        r = json.loads(body)
        assert status == 200 and r["label"] == stored_labels[i, j] and r["x64"] is True
        _, body = get(f"{url}/api/path?landscape=himmelblau&lr={lr}&steps=30&x={x!r}&y={y!r}")
        assert json.loads(body)["label"] == own[i, j] and json.loads(body)["x64"] is False


def test_a_stored_sweep_over_the_live_step_limit_is_the_stored_map_only(tmp_path):
    limit = explore.params.STEPS_MAX
    steps = limit + 1
    spec = SWEEP_SPEC.replace("steps = 30", f"steps = {steps}").replace("grid = 32", "grid = 2")
    (tmp_path / "spec.toml").write_text(spec)
    sweep.run(tmp_path / "spec.toml", tmp_path / "store", progress=False)
    info = explore.stored.StoredSweep(tmp_path / "store").info()
    assert f"{steps} steps" in info["live_off"] and f"limit of {limit}" in info["live_off"]
    assert info["steps"] == steps and info["grid"] == [2, 2]


@pytest.mark.parametrize(
    "path,param", [("/sweep.png?lr=2", "lr"), ("/sweep.png?momentum=1", "momentum")]
)
def test_a_bad_stored_sweep_request_is_a_400(stored, server, path, param):
    url, _ = stored
    status, body = get(url + path)
    assert status == 400 and f"`{param}`" in json.loads(body)["error"]
    status, body = get(server[0] + "/sweep.png")  # a server without --sweep
    assert status == 400 and "--sweep" in json.loads(body)["error"]


def test_sweep_command_line_refuses_a_folder_that_is_no_sweep(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        explore.main(["--cache", "none", "--sweep", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--sweep" in err


def test_gallery_lists_the_sweeps_under_results(stored, tmp_path):
    from sandbox import report

    _, store = stored
    text = report.build(store.parent, tmp_path / "index.html").read_text()
    assert '<section id="sweeps">' in text and "1 / 1 done (finished)" in text
    assert f"python -m sandbox.explore --sweep {store}" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "No sweep store" in report.build(empty).read_text()
