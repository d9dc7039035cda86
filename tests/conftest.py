"""Shared test settings: strict rank promotion, a PRNG key fixture, runs on N devices."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from sandbox import devices

devices.use_all_cores()  # as the study commands do: one CPU device per core
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


def run_on_devices(script: str, count: int, out: Path) -> dict:
    """Runs `script` (which saves an .npz to sys.argv[1]) in a fresh Python with `count`
    simulated CPU devices (XLA reads the flag at start-up) and returns what it saved."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
    subprocess.run(
        [sys.executable, "-c", script, str(out)],
        env=env,
        check=True,
        cwd=Path(__file__).parents[1],
    )
    return dict(np.load(out))
