"""A tiny tanh MLP as two pure functions, `init` and `apply`, in the mean-field parameterization.

The network of the fractal-trainability experiments (Sohl-Dickstein 2024): weights only, no
biases, every weight standard normal at init, and the layer scales written into `apply`
rather than into the weights, so a per-layer learning rate acts on O(1) weights. For widths
(n_0, n_1, ..., n_L):

    h_0 = x,   h_l = tanh(sqrt(2 / n_{l-1}) h_{l-1} W_l)  (l < L),   f(x) = h_{L-1} W_L / n_{L-1}

which for one hidden layer is f(x) = (1/n) W2 tanh(sqrt(2/n) W1 x), the paper's alpha_0 =
sqrt(2/n) and alpha_1 = 1/n. Unbatched and unjitted like the rest of `sandbox/`: `apply`
takes one input [n_0] or a batch [B, n_0]; callers vmap over parameter sets.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sandbox.types import Array, Key

Params = tuple[Array, ...]  # W_l of shape [n_{l-1}, n_l], l = 1..L


def _check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(widths)
    except TypeError:
        raise ValueError(f"`widths` must be a sequence of integers, got {widths!r}") from None
    if len(out) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in out):
        raise ValueError(
            f"`widths` must be >= 2 positive integers (n_in, ..., n_out), got {widths!r}"
        )
    return out


def init(key: Key, widths: Sequence[int], *, dtype=None) -> Params:
    """Standard-normal weights for an MLP of the given widths.

    Args:
      key: a PRNG key.
      widths: (n_in, hidden..., n_out), each >= 1.
      dtype: weight dtype; default JAX's default float (float64 under `jax.enable_x64`).

    Returns:
      A tuple of L weight matrices, W_l of shape [widths[l-1], widths[l]].
    """
    widths = _check_widths(widths)
    keys = jax.random.split(key, len(widths) - 1)
    return tuple(
        jax.random.normal(k, (n_in, n_out), dtype=dtype)
        for k, n_in, n_out in zip(keys, widths[:-1], widths[1:], strict=True)
    )


def apply(params: Params, x: Array) -> Array:
    """The network's output, [n_out] for x [n_in] or [B, n_out] for x [B, n_in]."""
    h = x
    for w in params[:-1]:
        h = jnp.tanh(h @ w * math.sqrt(2.0 / w.shape[0]))
    w = params[-1]
    return h @ w * (1.0 / w.shape[0])


def num_params(params: Params) -> int:
    """Number of scalar weights."""
    return sum(int(w.size) for w in params)
