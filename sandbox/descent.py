"""One descent run: a `lax.scan` of an Optax update on a scalar function, divergence-safe.

Pure and unbatched: `run` follows one start `x0` of shape [d]; `sweep.descend` vmaps it over
many starts and hyperparameters, chunks and shards it.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sandbox import optim
from sandbox.types import Array, ScalarFn


class Run(NamedTuple):
    """The outcome of one run (shapes for one run; `sweep.descend` adds a leading N).

    Attributes:
      x: [d] final point; a diverged run is frozen at its last finite, in-bound point.
      loss: [] f(x).
      grad_norm: [] |grad f(x)|.
      diverged: [] bool, True once an update left the finite, in-bound region.
      diverged_step: [] int32 index of the update that diverged (-1 if none).
      steps_to_tol: [] int32 updates taken before |grad f| first fell to `tol` or below
        (0: the start already was; -1: never within `steps`).
      path: [T', d] points after 0, k, 2k, ... updates (k = record_every), or None.
      losses: [T'] f along `path`, or None.
    """

    x: Array
    loss: Array
    grad_norm: Array
    diverged: Array
    diverged_step: Array
    steps_to_tol: Array
    path: Array | None = None
    losses: Array | None = None


class _State(NamedTuple):
    x: Array
    opt_state: optax.OptState
    diverged: Array
    diverged_step: Array
    steps_to_tol: Array


def num_records(steps: int, record_every: int) -> int:
    """Length T' of a recorded path: the start, then one point every `record_every` updates."""
    return steps // record_every + 1 if record_every > 0 else 0


def run(
    fn: ScalarFn,
    x0: Array,
    hyper: dict[str, Array],
    *,
    optimizer: str = "sgd",
    steps: int,
    record_every: int = 0,
    tol: Array | float = 1e-4,
    bound: Array | float = 1e6,
) -> Run:
    """Runs `steps` updates of `optimizer` on `fn` from `x0`.

    Args:
      fn: x of shape [d] -> scalar, pure jnp.
      x0: [d] start.
      hyper: hyperparameters of `optimizer` (see `optim.hyperparameters`), scalars that
        may be traced.
      optimizer: a name of `optim.names()`.
      steps: number of updates (static).
      record_every: record the point and loss every this many updates (0: no recording).
      tol: gradient-norm tolerance that defines `steps_to_tol`.
      bound: a run diverges when a coordinate becomes non-finite or exceeds `bound` in
        absolute value; it is then frozen at its last good point and its optimizer state
        is frozen with it.

    Returns:
      A `Run`.
    """
    opt = optim.make(optimizer, **hyper)
    value_and_grad = jax.value_and_grad(fn)

    def step(state: _State, t: Array) -> tuple[_State, None]:
        loss, g = value_and_grad(state.x)
        gnorm = jnp.sqrt(jnp.sum(g * g))
        reached = (gnorm <= tol) & (state.steps_to_tol < 0) & ~state.diverged
        steps_to_tol = jnp.where(reached, t, state.steps_to_tol)
        updates, opt_state = opt.update(g, state.opt_state, state.x)
        x = optax.apply_updates(state.x, updates)
        ok = jnp.all(jnp.isfinite(x) & (jnp.abs(x) <= bound)) & ~state.diverged
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        newly = ~ok & ~state.diverged
        return (
            _State(
                x=keep(x, state.x),
                opt_state=jax.tree.map(keep, opt_state, state.opt_state),
                diverged=state.diverged | ~ok,
                diverged_step=jnp.where(newly, t, state.diverged_step),
                steps_to_tol=steps_to_tol,
            ),
            None,
        )

    def advance(state: _State, t0: Array, n: int) -> _State:
        state, _ = jax.lax.scan(step, state, t0 + jnp.arange(n, dtype=jnp.int32))
        return state

    minus_one = jnp.array(-1, jnp.int32)
    state = _State(x0, opt.init(x0), jnp.array(False), minus_one, minus_one)
    path = losses = None
    if record_every > 0:
        blocks = steps // record_every

        def block(state: _State, b: Array) -> tuple[_State, tuple[Array, Array]]:
            state = advance(state, b * record_every, record_every)
            return state, (state.x, fn(state.x))

        state, (path, losses) = jax.lax.scan(block, state, jnp.arange(blocks, dtype=jnp.int32))
        path = jnp.concatenate([x0[None], path])
        losses = jnp.concatenate([fn(x0)[None], losses])
        tail = steps - blocks * record_every
        if tail:
            state = advance(state, jnp.int32(blocks * record_every), tail)
    else:
        state = advance(state, jnp.int32(0), steps)

    loss, g = value_and_grad(state.x)
    gnorm = jnp.sqrt(jnp.sum(g * g))
    steps_to_tol = jnp.where(
        (state.steps_to_tol < 0) & (gnorm <= tol) & ~state.diverged,
        steps,
        state.steps_to_tol,
    )
    return Run(
        x=state.x,
        loss=loss,
        grad_norm=gnorm,
        diverged=state.diverged,
        diverged_step=state.diverged_step,
        steps_to_tol=steps_to_tol,
        path=path,
        losses=losses,
    )
