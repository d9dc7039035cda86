"""Type aliases and the legend of shape suffixes used across the sandbox.

Arrays that carry sweep axes have their shape in their name (`loss_NxT`, `lr_L`):

    N  runs (one start x one hyperparameter setting)
    d  dimension of a landscape's input
    T  recorded steps
    S  seeds
    L  learning rates
    B  momentum / beta values
    H, W  rows and columns of a grid of starts
    k  stored points (minima, saddles, maxima)
"""

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
PyTree = Any
Key = jax.Array
ScalarFn = Callable[[Array], Array]  # x of shape [d] -> scalar
