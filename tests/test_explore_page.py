"""The explorer's page in headless Chromium: axes, cursor, legends, measures, maps, bookmarks.

One server, one browser and one page for the module (Debian's /usr/bin/chromium driven by
Playwright; both missing: every test here skips). Expected values come from the tile
geometry written out here and from `fractal` called directly, not from the page's code.
Screenshots of each step are kept in the module's tmp folder.
"""

import contextlib
import math
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from sandbox import explore, fractal, landscapes, sweep

CHROMIUM = "/usr/bin/chromium"
H = landscapes.get("himmelblau")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
T = 120_000  # ms: the longest wait for tiles on a busy 2-core machine

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None, reason="Debian's /usr/bin/chromium is not installed"
)


# A stored sweep finer than a zoom-0 tile (260 starts a side over the bounds): stored at
# zoom 0, live from zoom 1; its runs reach a minimum within 0.05 (the explorer's own: 0.01).
SWEEP_SPEC = """
landscape = "himmelblau"
optimizer = "sgd"
steps = 30
basin_tol = 0.05

[starts]
grid = 260

[axes]
lr = { values = [0.004, 0.02] }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    (folder / "spec.toml").write_text(SWEEP_SPEC)
    sweep.run(folder / "spec.toml", folder / "store", progress=False)
    ex = explore.Explorer(cache_dir=tmp_path_factory.mktemp("tiles"), sweep_dir=folder / "store")
    srv = explore.Server(ex)
    url = srv.start()
    yield url, ex
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


@contextlib.contextmanager
def opened(browser, server, path: str):
    """A page of its own (800 x 600) at `path` of the server, once the page is ready."""
    url, _ = server
    pg = browser.new_page(viewport={"width": 800, "height": 600})
    try:
        pg.goto(url + path)
        pg.wait_for_selector("body[data-ready='1']", timeout=T)
        yield pg
    finally:
        pg.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def page(browser, server):
    url, _ = server
    context = browser.new_context(viewport={"width": 1000, "height": 700})
    pg = context.new_page()
    pg.goto(f"{url}/?landscape=himmelblau&lr=0.01&steps=20")
    pg.wait_for_selector("body[data-ready='1']", timeout=T)
    pg.wait_for_function("window.explorer.tilesLoaded >= 4", timeout=T)
    yield pg
    context.close()


def settle(page, measured: bool = True) -> None:
    """Waits until every tile asked for is shown and (if `measured`) the view is measured."""
    page.wait_for_function(
        "document.getElementById('progress').textContent.startsWith('all tiles shown')", timeout=T
    )
    if measured:
        page.wait_for_function(
            "window.explorer.measure && !document.getElementById('measures')"
            ".textContent.includes('measuring')",
            timeout=T,
        )


def view(page) -> dict:
    return page.evaluate(
        """() => { const m = window.explorer.state.map, b = m.getBounds(), s = m.getSize(),
        o = m.getPixelBounds().min;
        return {w: b.getWest(), e: b.getEast(), s: b.getSouth(), n: b.getNorth(),
                width: s.x, height: s.y, z: m.getZoom(), ox: o.x, oy: o.y}; }"""
    )


def check_ticks(page) -> int:
    """Each tick label sits where its value is in the view (within a pixel), inside the view,
    and shows its value to the digits the spacing needs; returns the number of ticks."""
    v = view(page)
    n = 0
    for cls, lo, hi, size, pos in (
        ("tick-x", v["w"], v["e"], v["width"], "left"),
        ("tick-y", v["s"], v["n"], v["height"], "top"),
    ):
        ticks = page.eval_on_selector_all(
            f".{cls}",
            f"els => els.map(e => [parseFloat(e.dataset.value), e.textContent, "
            f"parseFloat(e.style.{pos})])",
        )
        assert len(ticks) >= 2, cls
        values = [t[0] for t in ticks]
        step = values[1] - values[0]
        for value, text, px in ticks:
            assert lo <= value <= hi
            want = (value - lo) / (hi - lo) * size
            if cls == "tick-y":
                want = (hi - value) / (hi - lo) * size
            assert px == pytest.approx(want, abs=1.0)
            assert float(text) == pytest.approx(value, abs=step * 1e-6)
        assert len({t[1] for t in ticks}) == len(ticks)  # enough digits to tell them apart
        n += len(ticks)
    return n


def test_axes_ticks_match_the_view_at_zoom_0_and_12(page, shots):
    page.evaluate("window.explorer.state.map.setZoom(0, {animate: false})")
    settle(page)
    assert view(page)["z"] == 0
    check_ticks(page)
    page.screenshot(path=shots / "axes-zoom0.png")
    page.evaluate("window.explorer.state.map.setView([2.8843, 0.0867], 12, {animate: false})")
    settle(page)
    v = view(page)
    assert v["z"] == 12
    check_ticks(page)
    # At zoom 12 the view is 2^-12 of the bounds' width (and said so).
    scale = page.inner_text("#scale")
    width = (H.bounds[0][1] - H.bounds[0][0]) / 2**12 * v["width"] / 256
    assert f"zoom 12: 10^{math.log10(width / (H.bounds[0][1] - H.bounds[0][0])):.1f}" in scale
    page.screenshot(path=shots / "axes-zoom12.png")


def test_cursor_readout_at_a_pixel_matches_the_tile_geometry(page, shots):
    v = view(page)
    px, py = 317, 209  # container pixels; the map's container starts at the page's (x0, 0)
    box = page.eval_on_selector("#map", "e => e.getBoundingClientRect().toJSON()")
    page.mouse.move(box["x"] + px + 0.5, box["y"] + py + 0.5)
    page.wait_for_function("document.getElementById('cursor').dataset.x !== undefined")
    text = page.inner_text("#cursor")
    m = re.fullmatch(r"x = (\S+), y = (\S+)", text)
    assert m, text
    # Global pixel (zoom z: 256 2^z pixels over the bounds, y down from the top) to (x, y).
    (xl, xh), (yl, yh) = H.bounds
    side = 256 * 2 ** v["z"]
    gx, gy = v["ox"] + px + 0.5, v["oy"] + py + 0.5
    x, y = xl + gx / side * (xh - xl), yh - gy / side * (yh - yl)
    pixel = (xh - xl) / side
    assert float(m.group(1)) == pytest.approx(x, abs=pixel)
    assert float(m.group(2)) == pytest.approx(y, abs=pixel)
    # The point lies in the tile the slippy-map geometry names for that pixel.
    tb = explore.tile_box(H.bounds, v["z"], int(gx // 256), int(gy // 256))
    assert tb[0, 0] <= float(m.group(1)) <= tb[0, 1] and tb[1, 0] <= float(m.group(2)) <= tb[1, 1]
    page.screenshot(path=shots / "cursor.png")


@pytest.mark.slow  # the legend's minima and scales are checked server-side in test_explore.py
def test_legend_lists_the_minima_and_the_colour_bars(page, shots):
    items = page.eval_on_selector_all("#legend .minimum", "els => els.map(e => e.textContent)")
    minima = landscapes.local_minima(H)
    assert len(items) == len(minima)
    for text, m in zip(items, minima, strict=True):
        assert f"({m[0]:.3f}, {m[1]:.3f})" in text
    page.select_option("#colour", "steps")  # fires change
    assert "never reached tol" in page.inner_text("#legend")
    assert page.locator("#legend .bar").count() == 1
    settle(page, measured=False)
    page.screenshot(path=shots / "legend-steps.png")
    page.select_option("#colour", "basin")
    settle(page)


def test_dimension_readout_equals_box_counting_of_the_same_pixels(page, shots):
    page.evaluate("window.explorer.state.map.setView([0.5, 0.2], 2, {animate: false})")
    page.wait_for_function("window.explorer.measure.query.n === '64'", timeout=T)
    settle(page)
    got = page.evaluate("window.explorer.measure")
    v = view(page)
    q = {k: float(got["query"][k]) for k in ("x0", "x1", "y0", "y1")}
    (xl, xh), (yl, yh) = H.bounds
    want = {"x0": max(v["w"], xl), "x1": min(v["e"], xh), "y0": max(v["s"], yl)}
    want["y1"] = min(v["n"], yh)
    assert q == pytest.approx(want, abs=0)  # the view's box (within the bounds)
    labels = np.array(got["answer"]["labels"])
    assert labels.shape == (64, 64)
    dim, fit = fractal.box_counting_dimension(fractal.boundary(labels), [1, 2, 4, 8])
    shown = re.search(
        r"boundary dimension (\S+) \(box sizes 1 to 8 px, rms residual (\S+)\)",
        page.inner_text("#dimension"),
    )
    assert shown, page.inner_text("#dimension")
    assert float(shown.group(1)) == pytest.approx(dim, abs=5e-4)  # shown to 3 decimals
    assert float(shown.group(2)) == pytest.approx(fit.residual, abs=5e-4)
    page.screenshot(path=shots / "dimension.png")


@pytest.mark.slow  # a page of its own; the failed tile's reply is checked in test_explore.py
def test_a_failed_tile_says_why(browser, server, shots):
    with opened(browser, server, "/?optimizer=momentum&momentum=1.5&lr=0.01&steps=20") as pg:
        pg.wait_for_function("window.explorer.errors.length > 0", timeout=T)
        errors = pg.evaluate("window.explorer.errors")
        assert any("`momentum`" in e for e in errors), errors
        assert "failed" in pg.inner_text("#progress")
        pg.screenshot(path=shots / "failed-tile.png")


# Slow (6 s each): both maps' tiles are checked against fractal.train server-side in
# test_explore.py; here the page's progress count, legend and share.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["trainability", "init_vs_lr"])
def test_trainability_maps_show_progress_legend_and_share(page, shots, mode):
    # 20 steps, tiles of 16 and 32 runs a side (seconds, not minutes), set while hidden.
    page.evaluate("document.getElementById('tsteps').value = '20'")
    page.evaluate("document.getElementById('tpx').value = '32'")
    page.select_option("#mode", mode)  # fires change: a new map
    page.wait_for_function(
        "document.getElementById('progress').textContent.includes('coarse')", timeout=T
    )
    settle(page)
    got = page.evaluate("window.explorer.measure")
    assert got["query"]["steps"] == "20" and "score" in got["answer"]
    score = np.array(got["answer"]["score"])
    share = float(re.search(r"trainable share (\S+)%", page.inner_text("#share")).group(1))
    assert share == pytest.approx(100 * np.mean(score > 0), abs=0.05)
    d = got["answer"]["dimension"]
    if d["dim"] is not None:
        dim, _ = fractal.box_counting_dimension(fractal.boundary(score > 0), d["sizes"])
        assert d["dim"] == pytest.approx(dim, abs=1e-12)
    legend = page.inner_text("#legend")
    assert "trains" in legend and "diverges" in legend
    assert page.locator(".tick-x").count() >= 2
    assert "decades" in page.inner_text("#scale")
    page.screenshot(path=shots / f"{mode}.png")


@pytest.mark.slow  # make test keeps the page's zoom, pan, path and saved view
def test_bookmarks_and_the_view_as_text(page, shots):
    page.select_option("#mode", "basins")
    page.evaluate("window.explorer.state.map.setView([2.0, 3.0], 5, {animate: false})")
    settle(page)
    page.wait_for_function("document.getElementById('view-text').value.includes('zoom: 5')")
    v = view(page)
    text = page.input_value("#view-text")
    assert f"x: {v['w']} to {v['e']}" in text and f"y: {v['s']} to {v['n']}" in text
    assert "lr: 0.0100000" in text and "zoom: 5" in text
    page.fill("#bookmark-name", "near minimum 0")
    page.click("#bookmark")
    saved = page.evaluate("JSON.parse(localStorage.getItem('gradient-sandbox.explorer.bookmarks'))")
    assert saved[-1]["name"] == "near minimum 0"
    # The bookmark, opened in a new page of the same origin, shows the same view.
    again = page.context.new_page()  # the same local storage
    try:
        again.goto(page.url.split("?")[0])
        again.wait_for_selector("body[data-ready='1']", timeout=T)
        assert again.inner_text("#bookmarks").startswith("near minimum 0")
        again.click("#bookmarks a")
        again.wait_for_selector("body[data-ready='1']", timeout=T)
        assert view(again)["z"] == 5
        c = again.evaluate("window.explorer.state.map.getCenter()")
        assert (c["lat"], c["lng"]) == pytest.approx((2.0, 3.0), abs=1e-9)
        again.screenshot(path=shots / "bookmark.png")
    finally:
        again.close()


def test_page_zooms_moves_the_lr_draws_a_path_and_saves(page, browser, shots, tmp_path):
    page.evaluate("window.explorer.state.map.setView([0, 0], 1, {animate: false})")
    settle(page)
    zoom = 1
    for i in range(2):  # zoom twice: tiles of the next zoom level load
        page.evaluate("window.explorer.state.map.zoomIn(1, {animate: false})")
        settle(page, measured=False)
        page.screenshot(path=shots / f"zoom-{i + 1}.png")
    assert view(page)["z"] == zoom + 2
    page.fill("#lr", "-1.7")  # a range input: fill sets it and fires input + change
    page.dispatch_event("#lr", "change")
    settle(page, measured=False)
    srcs = page.eval_on_selector_all(".leaflet-tile", "els => els.map(e => e.src)")
    assert any("lr=0.0199526" in s for s in srcs), srcs[:3]
    box = page.eval_on_selector("#map", "e => e.getBoundingClientRect().toJSON()")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("window.explorer.pathsShown >= 1", timeout=T)
    assert page.locator("path.leaflet-interactive").count() >= 2  # the path's lines
    assert "lr=0.0199" in page.url and f"z={zoom + 2}" in page.url  # the link holds the view
    page.screenshot(path=shots / "path.png")
    with page.expect_download(timeout=T) as download:
        page.click("#save")
    saved = tmp_path / "view.png"
    download.value.save_as(saved)
    with Image.open(saved) as img:
        w, h = img.size
    assert 100 <= w <= 2048 and 100 <= h <= 2048
    assert page.evaluate("window.explorer.errors") == []
    assert len(list(shots.glob("*.png"))) >= 3


def test_a_path_answered_after_a_settings_change_is_not_drawn(page, shots):
    page.select_option("#mode", "basins")
    settle(page, measured=False)
    shown = page.evaluate("window.explorer.pathsShown")
    box = page.eval_on_selector("#map", "e => e.getBoundingClientRect().toJSON()")
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function(f"window.explorer.pathsShown > {shown}", timeout=T)
    assert page.inner_text("#path-info").startswith("from (")
    # A click, then new settings in the same task: the click's answer comes after them.
    dropped = page.evaluate("window.explorer.pathsDropped")
    page.evaluate(
        """() => { window.explorer.state.map.fire("click", {latlng: L.latLng(0.5, 0.5)});
        const lr = document.getElementById("lr"); lr.value = "-1.9";
        lr.dispatchEvent(new Event("change")); }"""
    )
    page.wait_for_function(f"window.explorer.pathsDropped > {dropped}", timeout=T)
    assert page.evaluate("window.explorer.pathsShown") == shown + 1
    assert page.inner_text("#path-info") == "click a start on the map"  # cleared by the change
    assert page.evaluate("window.explorer.state.path.getLayers().length") == 0
    page.screenshot(path=shots / "path-dropped.png")


def test_a_link_to_what_this_server_lacks_shows_the_defaults(browser, server, shots):
    with opened(browser, server, "/?mode=nomap&landscape=nosuch:fn&lr=0.01&steps=20") as pg:
        pg.wait_for_function("window.explorer.tilesLoaded >= 1", timeout=T)
        text = pg.inner_text("#status")
        assert text.startswith("not on this server:")
        assert 'map "nomap" (showing basins)' in text
        assert 'landscape "nosuch:fn" (showing himmelblau)' in text
        assert pg.input_value("#mode") == "basins" and pg.input_value("#landscape") == "himmelblau"
        assert pg.evaluate("window.explorer.errors") == []
        pg.screenshot(path=shots / "fallback.png")


@pytest.mark.slow  # 7 s; the stored map's pixels are checked server-side in test_explore.py
def test_a_stored_sweep_zooms_into_live_tiles_and_draws_paths(browser, server, shots):
    url, _ = server
    context = browser.new_context(viewport={"width": 900, "height": 650})
    pg = context.new_page()
    try:
        pg.goto(f"{url}/?mode=sweep&sweep_lr=1")
        pg.wait_for_selector("body[data-ready='1']", timeout=T)
        pg.wait_for_function("window.explorer.sweepShown >= 1", timeout=T)
        pg.evaluate("window.explorer.state.map.setZoom(0, {animate: false})")
        settle(pg)
        assert pg.evaluate("window.explorer.state.liveZoom") == 1
        assert pg.locator(".leaflet-tile").count() == 0  # zoom 0: the stored map only
        assert "lr" in pg.inner_text("#sweep-controls")
        pg.screenshot(path=shots / "sweep-stored.png")
        pg.evaluate("window.explorer.state.map.setView([2.0, 3.0], 3, {animate: false})")
        settle(pg)
        srcs = pg.eval_on_selector_all(".leaflet-tile", "els => els.map(e => e.src)")
        # The sweep's own surface: its minima, within its basin_tol.
        assert srcs and all("landscape=%40sweep&" in s for s in srcs), srcs[:2]
        assert all("lr=0.02&steps=30" in s for s in srcs), srcs[:2]
        assert "not converged (no minimum within 0.05)" in pg.inner_text("#legend")
        assert "within 0.05 of its 4 minima" in pg.inner_text("#sweep-about")
        box = pg.eval_on_selector("#map", "e => e.getBoundingClientRect().toJSON()")
        pg.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        pg.wait_for_function("window.explorer.pathsShown >= 1", timeout=T)
        assert "from (" in pg.inner_text("#path-info")
        assert pg.evaluate("window.explorer.errors") == []
        pg.screenshot(path=shots / "sweep-live.png")
        # A sweep the live tiles cannot continue (as the server says of one whose steps are
        # over the limit): one status line, no live tiles, measures or paths.
        pg.evaluate("window.explorer.state.config.sweep.live_off = 'the stored map only: x'")
        pg.select_option("#sweep-axes select", "0")  # fires change: a refresh
        pg.wait_for_function("document.getElementById('status').textContent.includes('x')")
        assert pg.inner_text("#status") == "the stored map only: x"
        assert pg.locator(".leaflet-tile").count() == 0
        pg.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        assert pg.inner_text("#path-info") == "click a start on the map"
        assert pg.evaluate("window.explorer.errors") == []
    finally:
        context.close()
