"""Argument checks shared by the library: each failure is one ValueError naming the argument."""

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
