"""Computation precisions of a network's evaluation and training: names and casts.

- "float32": everything in float32 (the arrays are passed through untouched, so the
  computation is the same program as without a precision).
- "bfloat16": mixed precision. The parameters stay float32 where they are kept (in the
  training state, in the surface's origin and directions; the axpy of a surface point is
  float32); each forward pass casts them and the images to bfloat16, so the convolutions
  and matrix products run in bfloat16 (accumulating in float32 where the backend does:
  cuDNN, XLA:CPU); the logits come back as float32, and the loss, its gradient with
  respect to the float32 parameters, the optimizer update and every sum over batches are
  float32. Batch-norm running statistics stay float32 and are not cast (Flax computes
  batch statistics in float32 whatever the input dtype). bfloat16 has float32's exponent
  range, so no loss scaling is needed; it has 8 significant bits, a relative rounding of
  2^-8 = 3.9e-3 per value, which is what the tests bound (tests/test_precision.py).
"""

from typing import Any, Literal

import jax
import jax.numpy as jnp

NAMES = ("float32", "bfloat16")
Name = Literal[NAMES]  # a config field naming a precision
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

PyTree = Any


def check(precision: Any, name: str = "precision") -> str:
    """`precision` itself if it is one of `NAMES`; ValueError naming `name` otherwise."""
    if not isinstance(precision, str) or precision not in NAMES:
        raise ValueError(f"`{name}` must be one of {', '.join(NAMES)}, got {precision!r}")
    return precision


def compute_dtype(precision: str):
    """The dtype the convolutions and matrix products run in."""
    return _DTYPES[check(precision)]


def cast(tree: PyTree, precision: str) -> PyTree:
    """Floating leaves of `tree` in the compute dtype (float32: `tree` itself, untouched)."""
    if check(precision) == "float32":
        return tree
    dtype = _DTYPES[precision]
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
        tree,
    )


def variables(v: dict, precision: str) -> dict:
    """Model variables for a forward pass: `params` cast, other collections untouched."""
    if check(precision) == "float32":
        return v
    return {**v, "params": cast(v["params"], precision)}


def logits(out: jax.Array, precision: str) -> jax.Array:
    """A network's output back in float32 for the loss (float32: untouched)."""
    return out if check(precision) == "float32" else out.astype(jnp.float32)
