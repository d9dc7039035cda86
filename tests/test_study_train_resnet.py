"""studies/train_resnet in --quick mode: run folder, both networks, checkpoints, resume, and
one-line errors for bad input."""

import json
import shutil

import numpy as np
import pytest

from sandbox import results
from studies import train_resnet as study


@pytest.fixture(scope="module")
def quick_run(resnet_pair, tmp_path_factory):
    """A copy of the shared quick run: these tests run the study into it again."""
    out = tmp_path_factory.mktemp("train_resnet") / "run"
    shutil.copytree(resnet_pair, out)
    return out


def test_quick_run_writes_the_run_folder_for_both_networks(quick_run):
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json", "curves.png"):
        assert (quick_run / f).is_file(), f
    s = json.loads((quick_run / "summary.json").read_text())
    for shortcut in ("A", "none"):
        assert 0.0 <= s[shortcut]["test_accuracy"] <= 1.0
        # ResNet-8 on 1-channel images: 75,290 on CIFAR less 3 x 3 x 2 x 16 in the stem.
        assert s[shortcut]["params"] == 75_290 - 288
        epochs = sorted(int(p.name) for p in (quick_run / shortcut / "checkpoints").iterdir())
        assert epochs == [0, 1, 2]  # keep_every=1 in QUICK
        lines = (quick_run / shortcut / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert s["data"]["name"] == "digits" and s["data"]["train"] + s["data"]["test"] == 1797
    cfg, arrays, _ = results.load(quick_run, study.Config)
    assert cfg == study.QUICK
    assert arrays["A/test_acc_E"].shape == (2,)


def test_running_again_resumes_and_gives_the_same_numbers(quick_run):
    _, before, _ = results.load(quick_run, study.Config)
    study.main(["--quick", "--out", str(quick_run), "--no-progress"])
    _, after, _ = results.load(quick_run, study.Config)
    for k in before:
        if not k.endswith("epoch_s_E"):
            np.testing.assert_array_equal(before[k], after[k], err_msg=k)


def test_plot_only_redraws(quick_run):
    (quick_run / "curves.png").unlink()
    study.main(["--quick", "--out", str(quick_run), "--plot-only"])
    assert (quick_run / "curves.png").is_file()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--depth", "57"], "`depth` must be 6n + 2"),
        (["--shortcut", "C"], "`shortcut` must be one of A, B, none, got 'C'"),
        (["--data", "mnist"], "`data` must be one of digits, cifar10, synthetic"),
        (["--batch-size", "5000"], "`batch_size` 5000 is larger than the training set"),
        (["--optimizer", "sgdd"], "unknown optimizer 'sgdd'"),
        (["--epochs", "0"], "`epochs` must be an integer >= 1"),
        (["--data", "cifar10", "--data-dir", "/no/such/folder"], "CIFAR-10 not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        study.main(["--quick", "--out", str(tmp_path), "--no-progress", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "arrays.npz").exists()


def test_checkpoint_of_another_network_is_one_line_and_kept(quick_run, tmp_path, capsys):
    before = (quick_run / "A" / "checkpoints" / "2" / "sandbox_sha256.json").read_bytes()
    with pytest.raises(SystemExit) as e:
        study.main(["--quick", "--out", str(quick_run), "--no-progress", "--depth", "14"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "from a different run (model.depth=8 there, 14 here)" in err
    assert len(err.splitlines()) == 1
    assert (quick_run / "A" / "checkpoints" / "2" / "sandbox_sha256.json").read_bytes() == before
