"""studies.fractal in --quick mode: scores, boundary and dimension, its grid, its config."""

import json
import math

import jax
import numpy as np
import pytest

from sandbox import fractal
from studies import fractal as study

FIGURES = ("trainability", "dimension")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fractal")
    # One config field set from the command line (the preset fits boxes of 2, 4 and 8).
    argv = ["--quick", "--out", str(folder), "--box-sizes", "2", "4"]
    # Smaller than the preset: zooms of 16 x 16 (four boxes of 4 a side), not 40 x 40. The
    # full view keeps its 40 x 40 (its dimension is 1.07 there, 1.0 at 20 x 20), and the
    # three zooms and 150 steps stay: fewer zooms leave the deepest pixels > 1e-3 apart.
    study.main([*argv, "--zoom-grid-n", "16"])
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, summary, arrays, config


def test_run_folder_and_figures(run):
    folder, _, _, config = run
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json"):
        assert (folder / f).is_file(), f
    for name in FIGURES:
        assert (folder / f"{name}.png").stat().st_size > 10_000, name
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(FIGURES)
    assert config["grid_n"] == study.QUICK.grid_n and config["zoom_grid_n"] == 16
    assert config["box_sizes"] == [2, 4]


def test_scores_boundary_and_dimension(run):
    _, s, arrays, config = run
    assert s["trainability"]["dtype"] == "float64"
    levels = s["trainability"]["levels"]
    assert len(levels) == config["zoom_levels"] + 1
    for e in levels:
        score = arrays[f"score_{e['level']}_HxW"]
        assert score.shape == tuple(e["grid"])
        assert np.all(np.isfinite(score)) and np.all(np.abs(score) <= 1) and np.all(score != 0)
        # Both trainable and divergent runs in every view, full and zoomed.
        assert 0.02 < e["trainable_fraction"] < 0.98, e["level"]
        # A boundary between a curve (1) and an area (2).
        assert 1.0 < e["dimension"] < 2.0, e["level"]
        assert e["fit_range_px"] == [2, 4] and len(e["box_counts"]) == 2
    # Each zoom window is centred on a boundary pixel of the view before, inside it.
    win = arrays["window_Vx2x2"]
    for outer, inner in zip(win[:-1], win[1:], strict=True):
        assert np.all(inner[:, 0] > outer[:, 0]) and np.all(inner[:, 1] < outer[:, 1])
    bd = s["boundary_dimension"]
    assert 1.0 < bd["measured"] < 2.0
    assert bd["theory"] == [1.17, 1.98]
    # Two neighbouring pixels of the deepest zoom, 4.8e-4 apart here (1.8e-4 in --quick's
    # 40 x 40 zooms): one trains, the other not.
    nb = s["neighbours"]
    assert nb["relative_distance"] < 1e-3
    assert nb["scores"][0] > 0 > nb["scores"][1]


def test_vmapped_grid_equals_a_loop_of_single_runs(key):
    steps = 150
    lr1_W = np.array([0.3, 3.0, 30.0])
    lr2_H = np.array([1.0, 10.0, 300.0])
    with jax.enable_x64(True):
        params, data = fractal.problem(key, 6)
        got = fractal.score_grid(params, data, lr1_W, lr2_H, steps=steps, batch_size=4)
        one = jax.jit(lambda a, b: fractal.train(params, data, a, b, steps))
        want = np.array([[float(one(a, b)) for a in lr1_W] for b in lr2_H])
    assert (got > 0).any() and (got < 0).any()
    # Batched and unbatched products round differently (vector FMA, reduction order):
    # float64 differences of ~1e-16 per step. Runs at the edge of stability (the loss going
    # up and down, as at lr2 = 10 here) amplify them to ~1e-5 of the score; 1e-4 still
    # tells a mix-up of the trainable pixels, whose scores differ by more than 1e-2.
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-9)


def test_local_mean_and_zoom_centre():
    rng = np.random.default_rng(0)
    a = rng.random((7, 9))
    got = fractal.local_mean(a, 2)
    padded = np.pad(a, 2, mode="edge")
    want = np.array([[padded[i : i + 5, j : j + 5].mean() for j in range(9)] for i in range(7)])
    # Summed-area table against the direct mean: float64 cancellation of sums of ~40.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    assert fractal.pixel_decades((1.0, 2.0), 11) == pytest.approx(0.1, rel=1e-12)
    # A vertical edge between columns 4 and 5 of 11 pixels over (0, 10) x (0, 10), both
    # boundary columns 40% to 60% trainable in 5 x 5 windows: the centre is the boundary
    # pixel nearest the target (7, 3), column 5 of row 3, exactly.
    trainable = np.zeros((11, 11), bool)
    trainable[:, :5] = True
    got = fractal.zoom_centre(trainable, (0.0, 10.0), (0.0, 10.0), (7.0, 3.0), 3.0, 2.0)
    assert got == (5.0, 3.0)
    with pytest.raises(ValueError, match="no boundary"):
        fractal.zoom_centre(np.ones((5, 5), bool), (0, 1), (0, 1), (0.5, 0.5), 1.0, 1.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("width", 0),
        ("steps", 1),
        ("grid_n", 4),
        ("log10_lr1", (2.0, 1.0)),
        ("zoom_factor", 1.0),
        ("zoom_half_width", 0.0),
        ("box_sizes", (2,)),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        study.Config(**{field: value})


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--scale", "huge"], "`--scale` must be one of default, paper, got 'huge'"),
        (["--scale", "paper", "--quick"], "`--scale paper`"),
    ],
)
def test_bad_scale_is_one_line_and_exit_status_2(argv, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        study.main([*argv, "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_help_gives_the_meaning_of_steps(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one help line per flag
    with pytest.raises(SystemExit) as e:
        study.main(["--help"])
    assert e.value.code == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "--steps INT" in ln)
    assert "GD steps per run (at least the score's window)" in line, line


def test_plot_only_redraws(run):
    folder, _, _, _ = run
    (folder / "trainability.png").unlink()
    study.main(["--quick", "--out", str(folder), "--plot-only"])
    assert (folder / "trainability.png").is_file()


def test_paper_scale_is_the_papers_setting_and_the_default_fits_the_budget():
    p = study.PAPER
    assert p.width == 16 and p.steps >= 1000 and p.grid_n >= 1024 and p.zoom_grid_n >= 1024
    d = study.Config()
    assert d.width == 8 and d.steps == 500 and d.grid_n == 256 and d.zoom_grid_n == 128
    # `make studies` has 30 minutes on 2 cores: the default stays near 115k runs.
    assert d.grid_n**2 + d.zoom_levels * d.zoom_grid_n**2 <= 120_000
    assert math.isclose(p.zoom_factor, d.zoom_factor)
