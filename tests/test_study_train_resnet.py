"""studies/train_resnet in --quick mode: run folder, both networks, checkpoints, resume, and
one-line errors for bad input."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from sandbox import checkpoints, data, results
from sandbox.models import resnet
from studies import train_resnet as study


@pytest.fixture(scope="module")
def quick_run(resnet_pair, tmp_path_factory):
    """A copy of the shared quick run: these tests run the study into it again."""
    out = tmp_path_factory.mktemp("train_resnet") / "run"
    shutil.copytree(resnet_pair, out)
    return out


@pytest.mark.slow  # the quick pair: about 20 s (make quick trains it; train.fit is in test_train)
def test_quick_run_writes_the_run_folder_for_both_networks(quick_run):
    for f in ("config.json", "arrays.npz", "meta.json", "summary.json", "curves.png"):
        assert (quick_run / f).is_file(), f
    s = json.loads((quick_run / "summary.json").read_text())
    for shortcut in ("A", "none"):
        acc, loss = _reference_test_metrics(quick_run, shortcut)
        # The summary's last epoch against one plain forward pass of the final checkpoint
        # over the whole test set: the same count of correct images (at most one image may
        # flip on a near tie, float32 sums in another order) and the loss to float32 rounding.
        assert s[shortcut]["test_accuracy"] == pytest.approx(acc, abs=1.01 / 359)
        assert s[shortcut]["test_loss"] == pytest.approx(loss, rel=1e-5)
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


def _reference_test_metrics(run: Path, shortcut: str) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the run's last checkpoint on the digits' test set."""
    state, _ = checkpoints.load_checkpoint(run / shortcut / "checkpoints")
    ds = data.load(study.QUICK.data, seed=study.QUICK.seed)
    model = resnet.ResNet(depth=study.QUICK.depth, shortcut=shortcut, num_classes=10)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    logits = np.asarray(
        jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, ds.x_test), np.float64
    )
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    y = ds.y_test
    return float(np.mean(logits.argmax(1) == y)), float(-np.mean(logp[np.arange(len(y)), y]))


@pytest.mark.slow  # the quick pair: about 20 s (make quick trains it; train.fit is in test_train)
def test_running_again_resumes_and_gives_the_same_numbers(quick_run):
    _, before, _ = results.load(quick_run, study.Config)
    # One config field set from the command line: --no-pair resumes only the network with
    # shortcuts (finished: nothing to train), and the run holds only it.
    study.main(["--quick", "--out", str(quick_run), "--no-progress", "--no-pair"])
    cfg, after, summary = results.load(quick_run, study.Config)
    assert json.loads((quick_run / "config.json").read_text())["pair"] is False
    assert cfg.shortcuts() == ("A",) and "A" in summary and "none" not in summary
    assert set(after) == {k for k in before if k.startswith("A/")}
    for k in after:
        if not k.endswith("epoch_s_E"):
            np.testing.assert_array_equal(before[k], after[k], err_msg=k)


@pytest.mark.slow  # the quick pair: about 20 s (make quick trains it; train.fit is in test_train)
def test_plot_only_redraws(quick_run):
    (quick_run / "curves.png").unlink()
    study.main(["--quick", "--out", str(quick_run), "--plot-only"])
    assert (quick_run / "curves.png").is_file()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--depth", "57"], "`--depth` must be an integer in [8, 1202], 6n + 2, got 57"),
        (["--shortcut", "C"], "`--shortcut` must be one of A, B, none, got 'C'"),
        (["--data", "mnist"], "`--data` must be one of digits, cifar10, synthetic"),
        (["--batch-size", "5000"], "`batch_size` 5000 is larger than the training set"),
        (["--optimizer", "sgdd"], "`--optimizer` must be one of adagrad, adam"),
        (["--epochs", "0"], "`--epochs` must be an integer in [1, 10000], got 0"),
        # Every count has a bound a run can reach (this one once built a set of every epoch).
        (["--epochs", "99999999999999999999"], "`--epochs` must be an integer in [1, 10000]"),
        (["--keep_last", "-1"], "`--keep_last` must be an integer in [1, 10000], got -1"),
        (["--data", "cifar10", "--data-dir", "/no/such/folder"], "CIFAR-10 not found"),
        # The digits are built in: a folder given with them is refused, not ignored.
        (["--data-dir", "/tmp"], "`--data-dir` is the CIFAR-10 folder, for `--data cifar10` only"),
        (["--data", "digits", "--data-dir", "/no/such"], "only, not `--data digits`"),
        (["--data=synthetic", "--data-dir", "/tmp"], "only, not `--data synthetic`"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        study.main(["--quick", "--out", str(tmp_path), "--no-progress", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "arrays.npz").exists()


@pytest.mark.slow  # the quick pair: about 20 s (make quick trains it; train.fit is in test_train)
def test_checkpoint_of_another_network_is_one_line_and_kept(quick_run, tmp_path, capsys):
    before = (quick_run / "A" / "checkpoints" / "2" / "sandbox_sha256.json").read_bytes()
    with pytest.raises(SystemExit) as e:
        study.main(["--quick", "--out", str(quick_run), "--no-progress", "--depth", "14"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "from a different run (model.depth=8 there, 14 here)" in err
    assert len(err.splitlines()) == 1
    assert (quick_run / "A" / "checkpoints" / "2" / "sandbox_sha256.json").read_bytes() == before
