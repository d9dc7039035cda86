"""studies/local_minima in --quick mode: basin fractions and 2/lambda_max thresholds."""

import json

import numpy as np
import pytest

from sandbox import landscapes, results, sweep
from studies import local_minima

MINIMA = landscapes.get("himmelblau").minima
# 2 / lambda_max of each Himmelblau minimum, as the issue states them (float64 Hessians).
ISSUE_THRESHOLDS = {
    (3.0, 2.0): 0.02431,
    (-2.805, 3.131): 0.02483,
    (-3.779, -3.283): 0.01495,
    (3.584, -1.848): 0.01897,
}
# The preset's basin maps but Adam's.
MAPS = [m for m in local_minima.QUICK.maps if m[1] != "adam"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local_minima")
    # One config field set from the command line (the preset records every 50 steps).
    argv = ["--quick", "--out", str(folder), "--exercise-record-every", "100"]
    # Smaller than the preset: the lr sweep spans only the four thresholds (0.01495 to
    # 0.02483) on the preset's own lrs (0.0145 to 0.0255, spacing 5e-4), from 32 x 32
    # starts per lr (each basin still holds 200+ of them just below its threshold); the
    # maps keep the preset's size (the fractions' tolerance is for 128 x 128) but drop
    # Adam's, which no test checks.
    argv += ["--lr-min", "0.0145", "--lr-max", "0.0255", "--num-lrs", "23", "--sweep-n", "32"]
    argv += ["--maps", *(str(v) for m in MAPS for v in m)]
    local_minima.main(argv)
    cfg, _, summary = results.load(folder, local_minima.Config)
    return folder, summary, cfg


def _entry(table: dict, point) -> dict:
    """The summary entry of the Himmelblau minimum nearest to `point` (by coordinates)."""
    i = int(np.argmin(np.linalg.norm(MINIMA - np.asarray(point), axis=1)))
    return table[local_minima._key(MINIMA[i])]


def _hand_lambda_max(x, y):
    """Largest eigenvalue of Himmelblau's Hessian, derived by hand, in float64."""
    h = np.array([[12 * x**2 + 4 * y - 42, 4 * x + 4 * y], [4 * x + 4 * y, 12 * y**2 + 4 * x - 26]])
    return np.linalg.eigvalsh(h)[-1]


def test_writes_the_run_folder_and_figures(run):
    folder, _, _ = run
    for f in (
        "config.json",
        "arrays.npz",
        "meta.json",
        "summary.json",
        "basin_maps.png",
        "basin_fraction_vs_lr.png",
        "basins_vs_lr.png",
        "himmelblau_exercise.png",
    ):
        assert (folder / f).is_file(), f
    assert json.loads((folder / "config.json").read_text())["exercise_record_every"] == 100
    cfg, arrays, _ = results.load(folder, local_minima.Config)
    assert arrays["exercise/path_NxTx2"].shape == (4, cfg.exercise_steps // 100 + 1, 2)


def test_each_basin_map_is_also_a_full_resolution_png_of_its_labels(run):
    from PIL import Image

    from sandbox import plotting

    folder, _, cfg = run
    arrays = dict(np.load(folder / "arrays.npz"))
    for name, optimizer, lr, _ in cfg.maps:
        key = f"{name}/{optimizer}/lr={lr:g}"
        labels = arrays[f"map/{key}/labels_HxW"]
        k = len(arrays[f"map/{key}/minima_Kx2"])
        img = Image.open(folder / local_minima.map_file(name, optimizer, lr))
        assert img.size == (cfg.map_n, cfg.map_n)
        rgb = np.asarray(img.convert("RGB")).astype(int)[::-1]  # row 0 of the labels: bottom
        table = [plotting.DIVERGED_COLOR, plotting.NOT_CONVERGED_COLOR, *plotting.basin_palette(k)]
        table = np.round(np.array(table)[:, :3] * 255).astype(int)
        np.testing.assert_array_equal(rgb, table[labels + 2])


def _hand_grad(p):
    """Himmelblau's gradient [N, 2] at p [N, 2], derived by hand."""
    x, y = p[:, 0], p[:, 1]
    a, b = x**2 + y - 11, x + y**2 - 7
    return np.stack([4 * x * a + 2 * b, 2 * a + 4 * y * b], axis=1)


@pytest.mark.parametrize("lr", [0.01, 0.02])
def test_himmelblau_gd_map_matches_a_float64_numpy_loop(run, lr):
    arrays, cfg = results.load(run[0])[1], run[2]
    key = local_minima._map_key("himmelblau", "sgd", lr)
    labels_HxW, minima = arrays[f"map/{key}/labels_HxW"], arrays[f"map/{key}/minima_Kx2"]
    steps = {tuple(m[:3]): m[3] for m in cfg.maps}[("himmelblau", "sgd", lr)]
    starts = np.asarray(sweep.grid(landscapes.get("himmelblau").bounds, cfg.map_n), np.float64)
    # 400 starts whose four grid neighbours share their label: float64 against float32 may
    # move a start that sits on the edge between two outcomes.
    c = labels_HxW[1:-1, 1:-1]
    inner = np.zeros(labels_HxW.shape, bool)
    inner[1:-1, 1:-1] = (
        (c == labels_HxW[:-2, 1:-1])
        & (c == labels_HxW[2:, 1:-1])
        & (c == labels_HxW[1:-1, :-2])
        & (c == labels_HxW[1:-1, 2:])
    )
    pick = np.random.default_rng(0).choice(np.flatnonzero(inner), 400, replace=False)
    x = starts[pick]
    with np.errstate(all="ignore"):  # lr 0.02: some runs overflow, and count as diverged
        for _ in range(steps):
            x = x - lr * _hand_grad(x)
    dist = np.linalg.norm(x[:, None] - minima[None], axis=-1)
    finite = np.all(np.isfinite(x) & (np.abs(x) <= 1e6), axis=1)
    reached = np.where(dist.min(axis=1) <= cfg.reach_tol, dist.argmin(axis=1), -1)
    expected = np.where(finite, reached, -2)
    # Identical in the quick run; allow 2 of 400 for rounding on a chaotic path.
    assert np.sum(expected != labels_HxW.ravel()[pick]) <= 2


def test_himmelblau_gd_basins_match_the_reference(run):
    m = run[1]["maps"]["himmelblau/sgd/lr=0.01"]
    # Reference (tests/test_basins.py): GD at lr 0.01, 1000 steps, 401 x 401 starts; the
    # quick map has 128 x 128, so allow 0.01 per basin.
    for point, ref in zip(MINIMA, [0.263, 0.261, 0.238, 0.237], strict=True):
        assert abs(m["fractions"][local_minima._key(point)] - ref) < 0.01
    assert m["fractions"]["not_converged"] + m["fractions"]["diverged"] < 0.01


def test_lr_beyond_a_threshold_empties_that_basin(run):
    # lr 0.02 > 2/lambda_max of (-3.779, -3.283) and of (3.584, -1.848): no start ends there.
    f = run[1]["maps"]["himmelblau/sgd/lr=0.02"]["fractions"]
    assert _entry(f, (-3.779, -3.283)) == 0.0
    assert _entry(f, (3.584, -1.848)) == 0.0
    assert f["not_converged"] > 0 and f["diverged"] > 0


def test_six_hump_camel_basins_are_point_symmetric(run):
    m = run[1]["maps"]["six_hump_camel/sgd/lr=0.003"]
    assert m["local_minima"] == 6
    lscape = landscapes.get("six_hump_camel")
    f = m["fractions"]
    # f(-x, -y) = f(x, y) and the grid of starts is symmetric: mirrored basins are equal
    # up to starts on the basin boundaries (allow 1e-3).
    for p in lscape.minima:
        assert abs(f[local_minima._key(p)] - f[local_minima._key(-p)]) < 1e-3


def test_rastrigin_has_121_basins(run):
    m = run[1]["maps"]["rastrigin/sgd/lr=0.002"]
    assert m["local_minima"] == 121
    assert len(m["fractions"]) == 121 + 2
    assert 0 < m["global_minimum_fraction"] < 0.05


@pytest.mark.parametrize("point, issue", ISSUE_THRESHOLDS.items())
def test_theory_threshold_is_two_over_lambda_max(run, point, issue):
    v = _entry(run[1]["vanishing_lr"], point)
    theory = v["theory_2_over_lambda_max"]
    np.testing.assert_allclose(theory, 2 / _hand_lambda_max(*v["minimum"]), rtol=1e-12)
    assert abs(theory - issue) <= 5e-6  # the issue rounds to 4 significant digits


@pytest.mark.parametrize("point", ISSUE_THRESHOLDS)
def test_basin_vanishes_at_the_first_lr_past_its_threshold(run, point):
    cfg = run[2]
    v = _entry(run[1]["vanishing_lr"], point)["from_basin_fraction"]
    spacing = (cfg.lr_max - cfg.lr_min) / (cfg.num_lrs - 1)
    # Resolution one lr spacing (5e-4 here). No basin survives past 2/lambda_max; just below
    # it the basin shrinks to a sliver that may not hold a kicked run, so the measured lr
    # (where the fraction first drops to 0) is within one spacing of the threshold.
    assert v["last_lr_with_basin"] < v["theory"]
    assert abs(v["measured"] - v["theory"]) <= spacing


@pytest.mark.parametrize("point", ISSUE_THRESHOLDS)
def test_offset_start_brackets_the_threshold_sharply(run, point):
    v = _entry(run[1]["vanishing_lr"], point)["from_offset_start"]
    lo, hi = v["bracket"]
    # float64 GD, offset 1e-6: the linear regime, where the crossing is 2/lambda_max to
    # ~1e-12; four rounds narrow the bracket to (0.0255 - 0.0145) / 63^4 = 7e-10.
    assert lo - 1e-12 <= v["theory"] <= hi + 1e-12
    assert hi - lo < 2e-9
    assert abs(v["measured"] - v["theory"]) / v["theory"] < 1e-7


def test_course_exercise_reaches_a_minimum_from_each_start(run):
    ex = run[1]["exercise"]
    assert (ex["optimizer"], ex["lr"], ex["steps"]) == ("adam", 1e-3, 20000)
    reached = {tuple(r["start"]): r for r in ex["runs"]}
    # Adam moves about lr per step along sign(grad) at first: from (0, 0) and (1, 0) up and
    # right into (3, 2)'s basin, from (-4, 0) and (4, 0) down into the nearest basin below.
    expected = {
        (0.0, 0.0): (3.0, 2.0),
        (1.0, 0.0): (3.0, 2.0),
        (-4.0, 0.0): (-3.779, -3.283),
        (4.0, 0.0): (3.584, -1.848),
    }
    for start, point in expected.items():
        r = reached[start]
        assert r["reached"] == local_minima._key(point)
        assert r["distance_to_it"] < 1e-3 and r["final_loss"] < 1e-6


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"map_n": 0}, "`map_n`"),
        ({"num_lrs": -3}, "`num_lrs`"),
        ({"maps": ()}, "`maps`"),
        ({"maps": (("nope", "sgd", 0.01, 10),)}, "'nope'"),
        # No minimum, no basin: the landscapes without one are not choices.
        ({"maps": (("saddle", "sgd", 0.01, 10),)}, "'saddle'"),
        ({"maps": (("himmelblau", "sgd", -0.01, 10),)}, "a finite number > 0"),
        ({"lr_min": 0.03, "lr_max": 0.001}, "`lr_max`"),
        ({"exercise_optimizer": "newton"}, "`exercise_optimizer`"),
    ],
)
def test_bad_config_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        local_minima.Config(**kwargs)


@pytest.mark.parametrize(
    "maps", [["saddle,sgd,0.01,100"], ["himmelblau,sgd,0.01,100,monkey_saddle,adam,0.01,100"]]
)
def test_a_map_of_a_landscape_without_minima_exits_2_in_one_line(maps, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        local_minima.main(["--quick", "--out", str(tmp_path / "run"), "--maps", *maps])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "error: `--maps`" in err, err
    assert not (tmp_path / "run").exists()


def test_the_map_choices_are_the_two_d_landscapes_with_a_minimum():
    choices = set(local_minima.Landscape2D.__args__)
    for name in landscapes.names():
        land = landscapes.get(name)
        assert (name in choices) == (land.dim == 2 and len(land.minima) > 0), name
    assert {"saddle", "monkey_saddle"}.isdisjoint(choices)


@pytest.mark.parametrize("argv", [[], ["--quick"], ["--num-lrs", "233"]])
def test_the_presets_and_the_readme_override_parse(argv):
    local_minima.main.parse(argv)
