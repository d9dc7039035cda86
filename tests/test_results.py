"""Run folders: round trip, atomic replacement, unwritable folders."""

import dataclasses
import json
import os

import numpy as np
import pytest

from sandbox import results


@dataclasses.dataclass(frozen=True)
class Cfg:
    seed: int = 0
    sizes: tuple[int, ...] = (1, 2)
    name: str = "x"


def test_save_and_load_round_trip(tmp_path):
    arrays = {"a_N": np.arange(5.0), "b_HxW": np.ones((2, 3), np.int32)}
    results.save(tmp_path, Cfg(seed=3), arrays, {"err": {"measured": 1e-7, "theory": 0.0}}, 1.5)
    cfg, got, summary = results.load(tmp_path, Cfg)
    assert cfg == Cfg(seed=3)
    for k, v in arrays.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype
    assert summary["err"]["measured"] == 1e-7
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert {"git_commit", "versions", "backend", "devices", "x64", "wall_s"} <= set(meta)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = results.write_json(tmp_path / "s.json", {"v": 1})

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        results.write_arrays(tmp_path / "arrays.npz", {"x": Boom()})
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["s.json"]


def test_create_new_makes_a_file_once_and_keeps_the_first(tmp_path):
    """Two processes (here, two calls) racing for one lease or sweep.json: the first makes it
    whole with its data, the second finds it there and changes nothing; no temp file stays."""
    path = tmp_path / "3.0"
    assert results.create_new(path, b"first")
    assert not results.create_new(path, b"second")
    assert path.read_bytes() == b"first"
    assert os.stat(path).st_mode & 0o777 == results.FILE_MODE
    assert [p.name for p in tmp_path.iterdir()] == ["3.0"]


def test_unwritable_folder_is_a_one_line_value_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="`--out` must be a writable folder"):
        results.check_writable(blocker / "sub")


def test_load_without_results_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="without --plot-only"):
        results.load(tmp_path, Cfg)
