"""benchmarks/device.sh --tiny: the accelerator run's script, end to end at tiny sizes on CPU."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_device_script_runs_every_section_at_tiny_sizes(tmp_path):
    out = tmp_path / "device"
    subprocess.run(
        ["bash", "benchmarks/device.sh", "--tiny", "--out", str(out)], cwd=ROOT, check=True
    )
    report = json.loads((out / "device.json").read_text())
    s = report["sections"]
    assert report["card"]["jax"] and report["card"]["device_kind"]
    assert not any("error" in v or "skipped" in v for v in s.values()), s
    for opt in ("sgd", "adam"):
        r = s["sweep"][opt]
        assert r["default_pair_steps_per_s"] > 0 and r["plain_pair_steps_per_s"] > 0
        # XLA's count of one update against the hand count of docs/performance.md.
        assert 0.5 < r["flops_per_pair_step_xla"] / r["flops_per_pair_step_hand"] < 2
        assert 0 < r["fp32_fma_peak_share"] < 1
        assert r["max_abs_diff_vs_plain_finite_runs"] < 1e-3  # settled runs, float32
    modes = s["surface"]["modes"]
    assert modes["float32"]["max_rel_diff_vs_float32"] == 0
    assert 0 < modes["bfloat16"]["max_rel_diff_vs_float32"] < 2.0**-8
    assert s["surface"]["whole_grid"] and s["surface"]["chosen"] in modes
    assert s["train"]["float32"]["epoch_s"] > 0 and s["train"]["bfloat16"]["epoch_s"] > 0
    assert len(s["fractal"]["boundary_dimension"]["per_level"]) == 4
    assert (out / "fractal_summary.json").exists() and (out / "device.log").exists()
