"""Argument checks shared by the library: each failure is one ValueError naming the argument."""

import sys
from typing import Any

import numpy as np

# The largest step or count the compiled loops index with int32.
INT32_MAX = int(np.iinfo(np.int32).max)


def integer(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum]; bools and floats are refused."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
    if not ok or value < minimum or (maximum is not None and value > maximum):
        want = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"`{name}` must be an integer {want}, got {value!r}")
    return int(value)


def positive(name: str, value: Any) -> float:
    """`value` as a positive, finite float."""
    if isinstance(value, bool) or not (np.isscalar(value) and np.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def step_size(name: str, value: Any) -> Any:
    """A learning rate: a concrete one (a number or a 0-d array) as a positive, finite float;
    a traced one (under jit or vmap) unchanged, for the caller to check."""
    jax = sys.modules.get("jax")  # without JAX loaded nothing is traced
    if jax is not None and isinstance(value, jax.core.Tracer):
        return value
    if isinstance(value, np.ndarray) or (jax is not None and isinstance(value, jax.Array)):
        value = value.item() if np.ndim(value) == 0 else value
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return positive(name, value)
