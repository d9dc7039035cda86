"""Training a Flax classifier with Optax: jitted step, evaluation, metrics log, resume.

    state, history = train.fit(model, dataset, train.TrainConfig(epochs=30), workdir=folder)

`fit` trains `model` (a flax.linen Module taking images and `train=`) on a `data.Dataset`:

- the optimizer is any name of `sandbox.optim` (default SGD with Nesterov momentum 0.9),
  with L2 weight decay (5e-4) added to the gradient as in He et al. 2016, and a cosine,
  step (x0.1 at 50% and 75% of training) or constant learning-rate schedule, optionally
  after a linear warmup;
- the whole data set lives on the device; each epoch draws a permutation from
  `fold_in(key, epoch)` and drops the last incomplete batch, and the random crop and flip
  (when `augment`) take their key from `fold_in(key, step)`: the run is a function of the
  config and the seed, not of when it was interrupted;
- a tqdm bar shows the running loss and accuracy; after each epoch the test set is
  evaluated and one JSON line is appended to `workdir/metrics.jsonl`;
- after each epoch, the state (step, params, batch_stats, opt_state) is saved with
  orbax-checkpoint under `workdir/checkpoints/<epoch>` (epoch 0 is the initialization);
  the last `keep_last` and every epoch of `keep_epochs` are kept;
- started again with the same arguments, `fit` resumes from the last checkpoint and ends
  with the same parameters, bit for bit, as a run that was never interrupted. A run that
  has already finished only reloads its state.

The checkpoints are `sandbox.checkpoints`: each records the run it belongs to (model,
training config, data) and digests of its arrays and files, so a checkpoint from a different
run or a damaged one stops `fit` with a one-line ValueError that names it, before anything is
read through orbax or written; nothing is overwritten. A run killed while saving leaves no
checkpoint that looks complete.
"""

import dataclasses
import functools
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sandbox import checkpoints, checks, network, optim, results
from sandbox import precision as precisions
from sandbox.data import Dataset, augment

SCHEDULES = ("cosine", "step", "constant")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train. Every field takes part in the run's identity (see `fit`)."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "nesterov"  # any of sandbox.optim.names()
    lr: float = 0.1
    momentum: float = 0.9  # for optimizers that have one
    weight_decay: float = 5e-4  # L2 coefficient added to the gradient
    schedule: str = "cosine"  # cosine | step | constant
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training, for "step"
    step_factor: float = 0.1
    warmup_epochs: int = 0
    augment: bool = False  # random crop (4-pixel padding) and horizontal flip
    seed: int = 0
    eval_batch_size: int = 500
    # "float32", or "bfloat16": forward and backward passes in bfloat16, parameters, loss,
    # gradients and optimizer state in float32 (sandbox.precision).
    precision: str = "float32"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size"):
            checks.integer(name, getattr(self, name), minimum=1)
        if (
            isinstance(self.warmup_epochs, bool)
            or not isinstance(self.warmup_epochs, int)
            or (not 0 <= self.warmup_epochs < self.epochs)
        ):
            raise ValueError(
                f"`warmup_epochs` must be an integer in [0, epochs), got {self.warmup_epochs!r}"
            )
        if self.optimizer not in optim.names():
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; known: {', '.join(optim.names())}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"`schedule` must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        optim.check_scalar("lr", self.lr)
        optim.check_scalar("momentum", self.momentum)
        optim.check_scalar("weight_decay", self.weight_decay)
        if not all(0 < m < 1 for m in self.step_milestones):
            raise ValueError(
                f"`step_milestones` must be fractions in (0, 1), got {self.step_milestones}"
            )
        if not 0 < self.step_factor <= 1:
            raise ValueError(f"`step_factor` must be in (0, 1], got {self.step_factor}")
        precisions.check(self.precision)


class History(NamedTuple):
    """Per-epoch metrics of a run, [E] arrays (epoch 1..E)."""

    epoch_E: np.ndarray
    lr_E: np.ndarray
    train_loss_E: np.ndarray
    train_acc_E: np.ndarray
    test_loss_E: np.ndarray
    test_acc_E: np.ndarray
    epoch_s_E: np.ndarray  # wall seconds of each epoch (training and evaluation)


# ----------------------------------------------------------------------------- pieces


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Full batches per epoch; ValueError when the batch is larger than the data set."""
    if batch_size > n_train:
        raise ValueError(
            f"`batch_size` {batch_size} is larger than the training set ({n_train} images)"
        )
    return n_train // batch_size


def make_schedule(cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the step."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    rest = total - warm
    if cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.lr, rest)
    elif cfg.schedule == "step":
        bounds = {int(round(m * total)) - warm: cfg.step_factor for m in cfg.step_milestones}
        main = optax.piecewise_constant_schedule(cfg.lr, {b: f for b, f in bounds.items() if b > 0})
    else:
        main = optax.constant_schedule(cfg.lr)
    if warm == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), main], [warm])


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """L2 weight decay, then the named optimizer of sandbox.optim on the schedule."""
    hyper = {"lr": make_schedule(cfg, steps_per_epoch)}
    if "momentum" in optim.hyperparameters(cfg.optimizer):
        hyper["momentum"] = cfg.momentum
    tx = optim.make(cfg.optimizer, **hyper)
    if cfg.weight_decay:
        tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    return tx


@functools.lru_cache(maxsize=8)
def _compiled_init(model: nn.Module) -> Callable:
    return jax.jit(model.init)


def init_state(model: nn.Module, tx: optax.GradientTransformation, key, image_shape) -> dict:
    """{"step", "params", "batch_stats", "opt_state"} for a fresh model."""
    v0 = _compiled_init(model)(key, jnp.zeros((1, *image_shape), jnp.float32))
    params = v0["params"]
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "batch_stats": v0.get("batch_stats", {}),
        "opt_state": tx.init(params),
    }


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, key, image_shape):
    """`init_state`'s shapes and dtypes (jax.ShapeDtypeStruct leaves on the default device),
    for restoring a checkpoint without compiling the model's init."""
    shapes = jax.eval_shape(lambda k: init_state(model, tx, k, image_shape), key)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)


def variables(state: dict) -> dict:
    """A training state's model variables: params, and batch_stats where the model has them."""
    v = {"params": state["params"]}
    if state["batch_stats"]:
        v["batch_stats"] = state["batch_stats"]
    return v


@functools.lru_cache(maxsize=8)
def compiled_step(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int) -> Callable:
    """`make_train_step` for a config, cached: runs of the same network and config in one
    process (a resumed run, tests) share one compilation."""
    tx = make_optimizer(cfg, steps_per_epoch)
    return make_train_step(
        model, tx, batch_size=cfg.batch_size, do_augment=cfg.augment, precision=cfg.precision
    )


@functools.lru_cache(maxsize=8)
def compiled_evaluate(model: nn.Module, batch_size: int, precision: str = "float32") -> Callable:
    """`make_evaluate`, cached like `compiled_step`."""
    return make_evaluate(model, batch_size, precision)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    batch_size: int,
    do_augment: bool,
    precision: str = "float32",
) -> Callable:
    """A jitted step(state, x_all, y_all, perm, i, key) -> (state, (loss, correct)).

    The batch is x_all[perm[i * B:(i + 1) * B]], gathered on the device; `key` is the
    run's augmentation key, folded with the step count. `precision` (sandbox.precision):
    the passes through the network in bfloat16 or float32; the loss, the gradients and
    the update are float32 either way.
    """
    precisions.check(precision)

    def step(state, x_all, y_all, perm, i, key):
        idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
        x, y = x_all[idx], y_all[idx]
        if do_augment:
            x = augment(jax.random.fold_in(key, state["step"]), x)

        def loss_fn(params):
            v = precisions.variables(variables({**state, "params": params}), precision)
            xc = precisions.cast(x, precision)
            if state["batch_stats"]:
                out, upd = model.apply(v, xc, train=True, mutable=["batch_stats"])
                stats = upd["batch_stats"]
            else:
                out, stats = model.apply(v, xc, train=True), {}
            logits = precisions.logits(out, precision)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, stats)

        (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(state["params"], updates),
            "batch_stats": stats,
            "opt_state": opt_state,
        }
        correct = jnp.sum(jnp.argmax(logits, -1) == y)
        return new, (loss, correct)

    return jax.jit(step, donate_argnums=0)


def make_evaluate(model: nn.Module, batch_size: int, precision: str = "float32") -> Callable:
    """evaluate(state, x, y) -> (mean loss, accuracy), in eval mode, in fixed-size batches,
    the forward passes in `precision` (sandbox.precision)."""
    precisions.check(precision)

    @jax.jit
    def batch_sums(variables, x, y, mask):
        v = precisions.variables(variables, precision)
        out = model.apply(v, precisions.cast(x, precision), train=False)
        return network.masked_sums(precisions.logits(out, precision), y, mask)

    def evaluate(state, x, y):
        n = len(x)
        b = min(batch_size, n)
        v = variables(state)
        loss = correct = 0.0
        for lo in range(0, n, b):
            xb, yb = x[lo : lo + b], y[lo : lo + b]
            m = len(xb)
            if m < b:  # pad the last batch: one compiled shape
                xb = jnp.concatenate([xb, jnp.zeros((b - m, *xb.shape[1:]), xb.dtype)])
                yb = jnp.concatenate([yb, jnp.zeros((b - m,), yb.dtype)])
            s_loss, s_correct = batch_sums(v, xb, yb, jnp.arange(b) < m)
            loss += float(s_loss)
            correct += float(s_correct)
        return loss / n, correct / n

    return evaluate


# ----------------------------------------------------------------------------- metrics log


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: the epoch is redone
            break
    return rows


def _history(rows: list[dict]) -> History:
    def col(k, dtype=np.float64):
        return np.asarray([r[k] for r in rows], dtype)

    return History(
        col("epoch", np.int32),
        col("lr"),
        col("train_loss"),
        col("train_acc"),
        col("test_loss"),
        col("test_acc"),
        col("epoch_s"),
    )


# ----------------------------------------------------------------------------- the loop


def fit(
    model: nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    workdir: Path | str,
    keep_last: int = 3,
    keep_epochs=(),
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    label: str = "",
) -> tuple[dict, History]:
    """Trains (or resumes, or reloads a finished run) and returns (state, history).

    Args:
      model: a flax Module called as model(x, train=...).
      dataset: train and test images and labels.
      cfg: the training config.
      workdir: the run's folder: metrics.jsonl and checkpoints/.
      keep_last: how many of the latest checkpoints to keep.
      keep_epochs: epochs whose checkpoints are kept for good (0 is the initialization).
      progress: show a tqdm bar.
      callback: called as callback(epoch, step_in_epoch) after every step (tests use it to
        interrupt a run at a chosen point).
      label: shown in front of the progress bar.

    Returns:
      The final state (step, params, batch_stats, opt_state) and the per-epoch History.
    """
    workdir = results.check_writable(workdir, "workdir")
    tx = make_optimizer(cfg, steps_per_epoch(len(dataset.x_train), cfg.batch_size))
    identity = checkpoints.run_identity(model, cfg, dataset)
    key = jax.random.key(cfg.seed)
    init_key, perm_key, aug_key = jax.random.split(key, 3)
    del key

    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", keep_last, keep_epochs)
    try:
        done = ckpt.epochs()
        if done:
            ckpt.meta(done[-1], identity)  # a different run fails here, before any work
            like = abstract_state(model, tx, init_key, dataset.image_shape)
            state = ckpt.restore(done[-1], like, identity)
            start = done[-1]
        else:
            state = init_state(model, tx, init_key, dataset.image_shape)
            ckpt.save(0, state, identity)
            start = 0

        metrics_path = workdir / "metrics.jsonl"
        # Lines of epochs after the checkpoint (the run died before saving) are dropped.
        rows = [r for r in _read_metrics(metrics_path) if r.get("epoch", 0) <= start]
        results.atomic_write_bytes(
            metrics_path, "".join(json.dumps(r) + "\n" for r in rows).encode()
        )
        if start < cfg.epochs:
            state = _train(
                model,
                dataset,
                cfg,
                state,
                start,
                keys=(perm_key, aug_key),
                ckpt=ckpt,
                identity=identity,
                rows=rows,
                metrics_path=metrics_path,
                progress=progress,
                callback=callback,
                label=label,
            )
    finally:
        ckpt.close()
    return state, _history(rows)


def reload(
    model: nn.Module, dataset: Dataset, cfg: TrainConfig, workdir: Path | str, *, keep_epochs=()
) -> tuple[dict, History] | None:
    """The finished run of `fit(model, dataset, cfg, workdir=workdir)`, read without writing.

    For a study that reuses networks another study trained (the landscape study reads
    train_resnet's run folder). None, and nothing read but metadata, unless `workdir` holds
    this very run (same model, config and data), trained to its last epoch, with the
    checkpoints of every epoch of `keep_epochs`; ValueError if a checkpoint is corrupt.
    """
    workdir = Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        return None
    rows = [r for r in _read_metrics(workdir / "metrics.jsonl") if r.get("epoch", 0) <= cfg.epochs]
    if [r.get("epoch") for r in rows] != list(range(1, cfg.epochs + 1)):
        return None
    identity = checkpoints.run_identity(model, cfg, dataset)
    ckpt = checkpoints.Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        done = ckpt.epochs()
        if not done or done[-1] != cfg.epochs or not {int(e) for e in keep_epochs} <= set(done):
            return None
        if ckpt.meta(done[-1]).get("run") != identity:
            return None
        tx = make_optimizer(cfg, steps_per_epoch(len(dataset.x_train), cfg.batch_size))
        like = abstract_state(model, tx, jax.random.key(cfg.seed), dataset.image_shape)
        state = ckpt.restore(done[-1], like, identity)
    finally:
        ckpt.close()
    return state, _history(rows)


def _train(
    model,
    dataset,
    cfg,
    state,
    start,
    *,
    keys,
    ckpt,
    identity,
    rows,
    metrics_path,
    progress,
    callback,
    label,
):
    """Epochs start + 1 .. cfg.epochs of `fit`: log, checkpoint, report; the final state."""
    spe = steps_per_epoch(len(dataset.x_train), cfg.batch_size)
    schedule = make_schedule(cfg, spe)
    # The seed reaches the step only through its keys: runs that differ in nothing else
    # (a pair of networks from two seeds) share one compilation.
    step_fn = compiled_step(model, dataclasses.replace(cfg, seed=0), spe)
    evaluate = compiled_evaluate(model, cfg.eval_batch_size, cfg.precision)
    x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    x_test, y_test = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    perm_key, aug_key = keys
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        perm = jax.random.permutation(jax.random.fold_in(perm_key, epoch), len(x_train))
        loss_sum, correct_sum = jnp.zeros(()), jnp.zeros((), jnp.int32)
        bar = _bar(spe, f"{label}epoch {epoch}/{cfg.epochs}", progress)
        for i in bar:
            state, (loss, correct) = step_fn(state, x_train, y_train, perm, i, aug_key)
            loss_sum, correct_sum = loss_sum + loss, correct_sum + correct
            if progress and (i % 5 == 4 or i == spe - 1):  # reading the sums waits for them
                bar.set_postfix(
                    loss=f"{float(loss_sum) / (i + 1):.3f}",
                    acc=f"{int(correct_sum) / ((i + 1) * cfg.batch_size):.3f}",
                    refresh=False,
                )
            if callback is not None:
                callback(epoch, i)
        bar.close()
        test_loss, test_acc = evaluate(state, x_test, y_test)
        row = {
            "epoch": epoch,
            "step": int(state["step"]),
            "lr": float(schedule(epoch * spe - 1)),
            "train_loss": float(loss_sum) / spe,
            "train_acc": int(correct_sum) / (spe * cfg.batch_size),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_s": round(time.perf_counter() - t0, 3),
        }
        if not all(math.isfinite(row[k]) for k in ("train_loss", "test_loss")):
            row["diverged"] = True
        rows.append(row)
        with open(metrics_path, "a") as f:  # before the checkpoint: see `fit`
            f.write(json.dumps(row) + "\n")
        ckpt.save(epoch, state, identity)
        if progress:
            print(
                f"{label}epoch {epoch}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}, test loss {test_loss:.4f} acc {test_acc:.4f} "
                f"({row['epoch_s']:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
    return state


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(
        range(total),
        desc=desc,
        disable=not progress,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
