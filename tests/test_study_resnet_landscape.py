"""studies/resnet_landscape in --quick mode (ResNet-8 pair, 5 x 5 plane): files, the centre of
every surface against the training code's evaluation, and the command line's errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sandbox import results, surface
from studies import resnet_landscape as study

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def networks(resnet_pair):
    """train_resnet's quick pair: the networks the landscape study reuses."""
    return resnet_pair


@pytest.fixture(scope="module")
def run(tmp_path_factory, networks):
    out = tmp_path_factory.mktemp("resnet_landscape")
    # One config field set from the command line (the preset's density takes 12 Lanczos
    # steps per probe); the networks do not depend on it, so train_resnet's are reused.
    study.main(
        ["--quick", "--out", str(out), "--no-progress", "--networks", str(networks)]
        + ["--slq-iters", "8"]
    )
    cfg, arrays, summary = results.load(out, study.Config)
    return out, cfg, arrays, summary


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_the_networks_train_resnet_trained_are_reused(run, networks):
    out, _, arrays, summary = run
    assert not (out / "train").exists()  # nothing trained here
    for s in study.SHORTCUTS:
        assert summary[s]["trained_in"] == str(networks / s)
        saved = results.load(networks)[1]
        np.testing.assert_array_equal(arrays[f"{s}/test_acc_E"], saved[f"{s}/test_acc_E"])


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_the_run_folder_holds_every_figure(run):
    out, cfg, arrays, _ = run
    assert json.loads((out / "config.json").read_text())["slq_iters"] == 8
    assert cfg.slq_iters == 8 and arrays["A/slq_nodes_Pxm"].shape == (cfg.slq_probes, 8)
    for name in ("contours", "surface3d", "slices", "pca_path", "spectrum", "zoom_none"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    stores = sorted((out / "cells").iterdir())  # every surface's store, for a resumed run
    assert len(stores) == 2 * 3 + 1  # main, interpolation, PCA planes; the zoom (none)
    for store in stores:
        meta = json.loads((store / "engine.json").read_text())
        assert len(list((store / "done").iterdir())) == -(-meta["n"] // meta["chunk"])


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_surface_centres_equal_the_trained_networks_loss(run):
    _, cfg, arrays, summary = run
    c = cfg.grid // 2
    for s in study.SHORTCUTS:
        centre = summary[s]["centre_loss"]
        # Same network, same images, batch sums in another order: float32, relative 1e-5.
        assert centre["measured"] == pytest.approx(centre["reference"], rel=1e-5)
        assert arrays[f"{s}/loss_YxX"][c, c] == centre["measured"]
        # Slices are the plane's centre row and column; the interpolation ends there too.
        np.testing.assert_array_equal(arrays[f"{s}/slice_d1_X"], arrays[f"{s}/loss_YxX"][c])
        alphas = arrays[f"{s}/alphas_A"]
        at_one = arrays[f"{s}/interp_loss_A"][np.argmin(np.abs(alphas - 1))]
        assert at_one == pytest.approx(centre["reference"], rel=1e-5)
        # The PCA plane is centred on the trained weights as well.
        p = arrays[f"{s}/pca_loss_YxX"]
        assert p[len(p) // 2, len(p) // 2] == pytest.approx(centre["reference"], rel=1e-5)
        assert np.allclose(arrays[f"{s}/pca_path_Tx2"][-1], 0, atol=1e-6)


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_summary_compares_the_two_networks(run):
    _, _, arrays, summary = run
    claims = summary["smoother_with_shortcuts"]
    assert set(claims) == {
        "lower_sharpness",
        "more_convex_at_minimum",
        "wider_basin",
        "fewer_local_minima",
        "less_nonconvex",
    }
    # Each claim's numbers against the summary's own measurements and, for the surface ones,
    # against plain counts over the saved loss grid; `holds` against the comparison it names.
    rows = {
        "lower_sharpness": (lambda t: t["hessian"]["lambda_max"], np.less),
        "more_convex_at_minimum": (lambda t: t["hessian"]["abs_min_over_max"], np.less),
        "wider_basin": (lambda t: t["surface"]["below_level"], np.greater),
        "fewer_local_minima": (lambda t: t["surface"]["local_minima"], np.less_equal),
        "less_nonconvex": (lambda t: t["surface"]["nonconvex_fraction"], np.less),
    }
    for name, (measured, smoother) in rows.items():
        c = claims[name]
        for s in study.SHORTCUTS:
            assert c[s] == measured(summary[s]), (name, s)
        assert c["holds"] is bool(smoother(c["A"], c["none"])), name
    for s in study.SHORTCUTS:
        z = arrays[f"{s}/loss_YxX"]
        level = summary[s]["surface"]["level"]
        assert level == pytest.approx(np.log(10), rel=1e-12)  # a uniform guess over 10 digits
        assert claims["wider_basin"][s] == np.mean(z < level)
        zf = np.where(np.isfinite(z), z, np.max(z[np.isfinite(z)]))
        minima = sum(
            all(zf[i, j] < zf[i + di, j + dj] for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj)
            for i in range(1, len(zf) - 1)
            for j in range(1, len(zf) - 1)
        )
        assert claims["fewer_local_minima"][s] == minima, s
    for s in study.SHORTCUTS:
        h = summary[s]["hessian"]
        it = h["lanczos_iters"] // 2
        # Ritz values interlace: doubling the steps can only widen the extreme ones.
        assert h["lambda_max"] >= h[f"lambda_max_after_{it}"] - 1e-6 * abs(h["lambda_max"])
        assert h["lambda_min"] <= h[f"lambda_min_after_{it}"] + 1e-6 * abs(h["lambda_max"])
        assert abs(summary[s]["directions_cosine"]) < 0.05  # random directions in 75k dims


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_checkpoint_path_reads_the_training_checkpoints(run, networks):
    out, cfg, arrays, _ = run
    folder = networks / "A" / "checkpoints"
    epochs, path = surface.checkpoint_path(folder)
    assert epochs == list(range(0, cfg.epochs + 1, cfg.checkpoint_every))
    assert len(path) == len(epochs) and set(path[0]) == set(path[-1])
    np.testing.assert_array_equal(arrays["A/pca_epochs_T"], epochs)
    with pytest.raises(ValueError, match=r"`epochs`: no checkpoint for epoch\(s\) \[99\]"):
        surface.checkpoint_path(folder, [0, 99])
    with pytest.raises(ValueError, match="holds no training checkpoints"):
        surface.checkpoint_path(out / "nowhere")


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_plot_only_redraws(run):
    out, _, _, _ = run
    (out / "contours.png").unlink()
    study.main(["--quick", "--out", str(out), "--plot-only"])
    assert (out / "contours.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "4"], "`--grid` must be an integer in [3, 1025], odd"),
        (["--depth", "9"], "`--depth` must be an integer in [8, 1202], 6n + 2"),
        (["--epochs", "1"], "at least 3 checkpoints"),
        (["--data", "mnist"], "`--data` must be one of"),
        (["--lanczos_iters", "0"], "`--lanczos_iters` must be an integer in [1, 1000]"),
        # A folder given must exist: it never silently means "train both networks here".
        (["--quick", "--networks", "/no/such/dir"], "`--networks` '/no/such/dir' is not a folder"),
        (["--data-dir", "/tmp"], "`--data-dir` is the CIFAR-10 folder, for `--data cifar10` only"),
        (["--data", "digits", "--data-dir", "/tmp"], "only, not `--data digits`"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        study.main(["--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow  # make test keeps test_config's and test_studies' shell checks
def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "studies.resnet_landscape", "--out", str(tmp_path), "--grid", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert "`--grid` must be an integer in [3, 1025], odd" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_stage_blocks_interlace_with_the_whole_hessian(run):
    # Cauchy interlacing: a principal sub-matrix's largest eigenvalue is at most the whole
    # matrix's (the top of the 2C run over the same images); Lanczos values approach both
    # from below, so 1% slack allows for a block's run converging further than the whole's.
    _, _, _, summary = run
    for s in study.SHORTCUTS:
        spec = summary[s]["spectrum"]
        top = spec["outliers"]["top"][0]
        assert set(spec["blocks"]) == set(study.STAGE_BLOCKS)
        for name, b in spec["blocks"].items():
            assert b["lambda_max"] <= 1.01 * top, (s, name)
            assert b["size"] > 0
        assert sum(b["size"] for b in spec["blocks"].values()) == summary[s]["params"]
        out = spec["outliers"]
        assert out["num_classes"] == 10 and len(out["top"]) == 20
        assert 0 <= out["count"] <= 20
        # The count and the gap are the saved top 2C read against the saved bulk edge.
        top_2C = np.asarray(out["top"])
        assert out["count"] == np.sum(top_2C > out["bulk_edge"])
        assert out["gap_ratio_C"] == pytest.approx(top_2C[9] / top_2C[10], rel=1e-12)
        verdict = summary["outlier_spectrum"][s]
        assert verdict["count_capped"] == (out["count"] == 20)
        assert verdict["holds"] == (not verdict["count_capped"] and 9 <= out["count"] <= 11)


@pytest.mark.slow  # the run: about 40 s, nearly all XLA compiles (make quick runs the study)
def test_the_zoom_is_the_main_plane_near_its_centre(run):
    # The zoomed plane shares the main plane's directions: its centre is the same point,
    # the trained network (equal to float32 rounding of two compiled programs, rtol 1e-5).
    _, _, arrays, _ = run
    z = arrays["none/zoom_loss_YxX"]
    main = arrays["none/loss_YxX"]
    assert z.shape == (study.QUICK.zoom_grid,) * 2
    c, cz = main.shape[0] // 2, z.shape[0] // 2
    np.testing.assert_allclose(z[cz, cz], main[c, c], rtol=1e-5)


def test_the_default_networks_folder_and_none_need_not_exist():
    args, _ = study.main.parse(["--quick", "--networks", "none"])
    assert args.networks == "none"
    args, _ = study.main.parse(["--quick"])  # results/train_resnet-quick, trained if absent
    assert args.networks is None


def test_a_networks_folder_without_the_run_says_so_before_training(tmp_path, monkeypatch, capsys):
    # An existing folder that holds no finished run of this network: one line on stderr,
    # then the network is trained in <out>/train/ (train.fit stubbed: nothing is trained).
    trained = []
    monkeypatch.setattr(
        study.train, "fit", lambda *a, workdir, **kw: trained.append(workdir) or ("s", "h")
    )
    out = tmp_path / "out"
    got = study._trained(study.QUICK, None, None, "A", out, tmp_path, False)
    assert got == ("s", "h", out / "train" / "A") and trained == [out / "train" / "A"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'A'} holds no finished run" in err[0], err
    assert f"training it in {out / 'train' / 'A'}" in err[0]
    # No folder given (`--networks none`): trained without a word.
    study._trained(study.QUICK, None, None, "A", out, None, False)
    assert capsys.readouterr().err == ""
