"""A network as pure functions of its parameters: points of parameter space, eval-mode losses
and metrics, batch-norm statistics recomputed at a point, and full-batch Optax training.

The one home of what training (`sandbox.train`), the landscape tools (`surface`, `connect`,
`sharpness`) and the network studies evaluate:

- `point(params, coords, directions)`: params + coords[0] directions[0] + coords[1]
  directions[1] + ..., leaf by leaf, summed in that order (a grid point of a plane:
  `connect.plane`, `sharpness.on_plane`, the sharpness map's losses; `surface.evaluate`,
  which carries its K directions stacked, adds their tensordot instead, the same point to
  float32 rounding);
- `masked_sums(logits, y, mask)`: the summed cross-entropy and the count of correct
  predictions over the rows of a padded batch that are real (the last batch of a data set);
- `eval_loss(model, variables, x, y)`: params -> the mean cross-entropy in eval mode, the
  batch-norm statistics of `variables` held fixed (the loss whose Hessian the landscape
  studies take);
- `batch_stats(model, params, x)`: the batch-norm statistics of the network at `params`,
  recomputed from the images `x` in one training-mode pass (Garipov et al. recompute them at
  every point of a path between two networks); `metrics` evaluates a network with them;
- `fit_full_batch(loss, params, tx, steps)`: `steps` Optax updates on a full-batch loss, one
  compiled `lax.scan`.

Everything is unjitted and unbatched except `fit_full_batch`, which compiles its loop.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sandbox import checks
from sandbox.types import Array, PyTree

Model = Any  # a flax.linen Module called as model.apply(variables, x, train=...)


def point(params: PyTree, coords: Array, directions: Sequence[PyTree]) -> PyTree:
    """params + sum_k coords[k] directions[k], leaf by leaf, in each leaf's dtype.

    Args:
      params: the origin, a pytree.
      coords: [K] the point's coordinates (cast to each direction's dtype).
      directions: K pytrees like `params`.

    The sum runs in the order of the directions, ((params + c_0 d_0) + c_1 d_1) + ...: the
    same arithmetic wherever it is used, so the tools built on it agree to the bit.
    """

    def leaf(w, *ds):
        out = w
        for k, d in enumerate(ds):
            out = out + (coords[k].astype(d.dtype) * d).astype(w.dtype)
        return out

    return jax.tree.map(leaf, params, *directions)


def masked_sums(logits: Array, y: Array, mask: Array) -> tuple[Array, Array]:
    """(sum of the cross-entropy, count of correct predictions) over the rows where `mask`.

    Args:
      logits: [B, C]; y: [B] integer labels; mask: [B] bool, False on the padding rows.

    Returns:
      The summed loss (dtype of the logits' loss) and the int32 count.
    """
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct_B = (jnp.argmax(logits, -1) == y) & mask
    return jnp.sum(jnp.where(mask, loss_B, 0.0)), jnp.sum(correct_B, dtype=jnp.int32)


def eval_loss(model: Model, variables: dict, x: Array, y: Array) -> Callable[[PyTree], Array]:
    """params -> the mean cross-entropy on (x, y) in eval mode, with the batch statistics of
    `variables` held fixed: the loss whose Hessian the landscape studies take."""
    stats = variables["batch_stats"]

    def loss(params):
        logits = model.apply({"params": params, "batch_stats": stats}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def zero_stats(model: Model, x: Array) -> PyTree:
    """The model's batch-norm statistics for images like `x`, all zero."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])["batch_stats"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def batch_stats(model: Model, params: PyTree, x: Array, *, momentum: float, zeros=None) -> PyTree:
    """The batch-norm statistics of the network at `params`, recomputed from the images `x`.

    One training-mode pass from zero running averages: Flax keeps momentum * 0 +
    (1 - momentum) * (the batch's mean and variance), so dividing by (1 - momentum) gives the
    mean and variance of `x` itself at every batch-norm layer.

    Args:
      model: the network; params: its parameters; x: [N, ...] images.
      momentum: the model's batch-norm momentum (e.g. `resnet.BN_MOMENTUM`).
      zeros: `zero_stats(model, x)`, when the caller has it (saves a trace per call).
    """
    zeros = zero_stats(model, x) if zeros is None else zeros
    _, upd = model.apply(
        {"params": params, "batch_stats": zeros}, x, train=True, mutable=["batch_stats"]
    )
    return jax.tree.map(lambda s: s / (1 - momentum), upd["batch_stats"])


def metrics(
    model: Model, splits: dict[str, tuple[Array, Array]], stats_x: Array, *, momentum: float
) -> Callable[[PyTree], dict]:
    """params -> {"<split>_loss", "<split>_acc"} for each split name -> (x, y), in eval mode,
    with batch-norm statistics recomputed at the point from the images `stats_x`
    (`batch_stats`): a network's metrics anywhere in parameter space, e.g. along a path
    between two trained networks (`connect.along`, `connect.plane`)."""
    zeros = zero_stats(model, stats_x)

    def fn(params):
        stats = batch_stats(model, params, stats_x, momentum=momentum, zeros=zeros)
        v = {"params": params, "batch_stats": stats}
        out = {}
        for split, (x, y) in splits.items():
            logits = model.apply(v, x, train=False)
            out[f"{split}_loss"] = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            out[f"{split}_acc"] = jnp.mean(jnp.argmax(logits, -1) == y)
        return out

    return fn


def fit_full_batch(
    loss: Callable[[PyTree], Array], params: PyTree, tx: optax.GradientTransformation, steps: int
) -> PyTree:
    """The parameters after `steps` updates of `tx` on the full-batch `loss`, as one compiled
    `lax.scan` (nothing unrolled)."""
    checks.integer("steps", steps, minimum=1, maximum=checks.INT32_MAX)

    @jax.jit
    def run(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (params, tx.init(params)), None, length=steps)[0][0]

    return run(params)
