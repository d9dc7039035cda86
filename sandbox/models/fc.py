"""A fully connected network as two pure functions, `init` and `apply`: the fc-tanh of Cohen et al.

Standard parameterization with biases, initialized as PyTorch's `nn.Linear` does (weights and
biases uniform in +-1/sqrt(fan_in)), which is the network of the edge-of-stability
experiments (Cohen et al. 2021: fc-tanh, two hidden layers of 200). For widths
(n_0, n_1, ..., n_L):

    h_0 = x,   h_l = tanh(h_{l-1} W_l + b_l)  (l < L),   f(x) = h_{L-1} W_L + b_L

`scaled_init` is the other initialization the studies use: LeCun-normal weights times a scale,
zero biases (the initialization study's sweep over scales). Unbatched and unjitted like the
rest of `sandbox/`: `apply` takes one input [n_0] or a batch [B, n_0].
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sandbox.models import mlp
from sandbox.types import Array, Key

Params = tuple[tuple[Array, Array], ...]  # (W_l [n_{l-1}, n_l], b_l [n_l]), l = 1..L


def init(key: Key, widths: Sequence[int], *, dtype=None) -> Params:
    """PyTorch-default weights and biases for an fc network of the given widths.

    Args:
      key: a PRNG key.
      widths: (n_in, hidden..., n_out), each >= 1.
      dtype: parameter dtype; default JAX's default float.

    Returns:
      A tuple of L (W_l [widths[l-1], widths[l]], b_l [widths[l]]) pairs.
    """
    widths = mlp._check_widths(widths)
    layers = []
    for k, n_in, n_out in zip(
        jax.random.split(key, len(widths) - 1), widths[:-1], widths[1:], strict=True
    ):
        kw, kb = jax.random.split(k)
        s = 1.0 / n_in**0.5
        w = jax.random.uniform(kw, (n_in, n_out), dtype, minval=-s, maxval=s)
        b = jax.random.uniform(kb, (n_out,), dtype, minval=-s, maxval=s)
        layers.append((w, b))
    return tuple(layers)


def scaled_init(normals: Sequence[Array], scale) -> Params:
    """LeCun-normal weights times `scale`, zero biases: W_l = z_l scale / sqrt(n_{l-1}).

    Args:
      normals: standard-normal draws z_l [n_{l-1}, n_l], one per layer (drawn by the caller,
        e.g. for many networks at once).
      scale: the weights' scale (a number or a traced scalar: a sweep over scales vmaps it);
        1 keeps the pre-activations' variance at that of the inputs for linear layers.
    """
    return tuple((z * (scale / math.sqrt(z.shape[0])), jnp.zeros(z.shape[1])) for z in normals)


def apply(params: Params, x: Array) -> Array:
    """The network's output, [n_out] for x [n_in] or [B, n_out] for x [B, n_in]."""
    h = x
    for w, b in params[:-1]:
        h = jnp.tanh(_affine(h, w, b))
    return _affine(h, *params[-1])


def _affine(h: Array, w: Array, b: Array) -> Array:
    z = h @ w
    return z + jnp.broadcast_to(b, z.shape)  # explicit: the tests refuse rank promotion


def num_params(params: Params) -> int:
    """Number of scalar weights and biases."""
    return sum(int(w.size + b.size) for w, b in params)
