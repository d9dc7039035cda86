"""The gallery: built from saved run folders only, and every image it names loads in Chromium."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox import report
from studies import gradient

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    gradient.main(["--quick", "--out", str(root / "gradient-quick")])
    return root, report.build(root)


def test_gallery_lists_every_study_and_marks_missing_ones(gallery):
    root, page = gallery
    text = page.read_text()
    for name, _ in report.STUDIES:
        assert f'id="{name}"' in text
    assert "quick run" in text and "not run yet: <code>make descent</code>" in text
    # Numbers come from summary.json: measured beside theory.
    assert "grad_max_abs_error" in text and "uphill_fraction" in text


def test_every_image_named_exists(gallery):
    root, page = gallery
    srcs = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert len(srcs) >= 2
    for src in srcs:
        assert (page.parent / src).is_file(), src


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")
def test_gallery_loads_in_headless_chromium(gallery, tmp_path):
    root, page = gallery
    dom = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    # Each <img> records its own load (data-ok=1) or failure (data-ok=0) before the load
    # event, after which Chromium dumps the DOM.
    num_images = len(re.findall(r"<img ", dom))
    assert num_images == len(re.findall(r'<img src="', page.read_text())) >= 2
    assert dom.count('data-ok="1"') == num_images, "some images did not load"


def test_missing_results_folder_is_a_clean_error(tmp_path):
    with pytest.raises(ValueError, match="`--results` must be a folder"):
        report.build(Path(tmp_path) / "nope")
