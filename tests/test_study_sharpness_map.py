"""studies/sharpness_map in --quick mode: the map's centre against a separate Lanczos run."""

import json

import numpy as np
import pytest

from studies import sharpness_map as sm


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sm")
    # One config field set from the command line (the preset's MLP plane is 5 x 5).
    sm.main(["--quick", "--out", str(folder), "--no-progress", "--mlp-grid", "3"])
    summary = json.loads((folder / "summary.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return folder, summary, arrays


@pytest.mark.slow
def test_quick_maps_and_figure(run):
    folder, summary, arrays = run
    assert json.loads((folder / "config.json").read_text())["mlp_grid"] == 3
    for name, grid in (("resnet", sm.QUICK.resnet_grid), ("mlp", 3)):
        assert arrays[f"{name}/lambda_max"].shape == (grid, grid)
        assert arrays[f"{name}/loss"].shape == (grid, grid)
    assert (folder / "maps.png").stat().st_size > 10_000


@pytest.mark.slow
def test_map_centre_is_the_top_eigenvalue_at_the_trained_point(run):
    _, summary, arrays = run
    # The map's middle point is the trained network itself: its lambda_max equals a
    # separate hessian.top_eigenvalues run there (same start, same steps: rtol 1e-3 allows
    # for the batched and stepped arithmetic of float32).
    for name in sm.NETWORKS:
        s = summary[name]
        np.testing.assert_allclose(
            s["lambda_max_centre_map"], s["lambda_max_centre_lanczos"], rtol=1e-3
        )
        claims = summary["claims"][name]
        assert claims["centre_matches_a_separate_lanczos"]
        # The verdicts are the summary's own numbers, read back.
        lam = arrays[f"{name}/lambda_max"].ravel()
        share = np.mean(lam < s["lambda_max_centre_lanczos"])
        assert s["centre_sharpness_percentile"] == pytest.approx(share, abs=1e-12)
        assert claims["trained_point_in_flattest_tenth"] == (share <= 0.1)
        assert claims["sharpness_rises_with_loss"] == (s["spearman_loss_sharpness"] > 0)
        # The trained point is the plane's minimum of the loss (an MLP trained to
        # convergence, and the ResNet near its end of training).
        loss = arrays[f"{name}/loss"]
        assert loss[loss.shape[0] // 2, loss.shape[1] // 2] == loss.min()


def test_bad_command_line_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sm.main(["--quick", "--out", str(tmp_path), "--seed", "-3"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`--seed` must be an integer in [0, 4294967295]" in err[0], err
