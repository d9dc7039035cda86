"""bfloat16 mixed precision (sandbox.precision) against float32 on a small CNN on CPU.

bfloat16 keeps 8 significant bits: each rounding is off by at most u = 2^-8 = 3.9e-3 of
the value. The bounds below count the roundings a result goes through, in units of u, and
each says what it measured (jax 0.10.2, XLA:CPU).
"""

import dataclasses
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sandbox import checkpoints, precision, surface, train

U = 2.0**-8  # bfloat16's unit roundoff


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with batch norm, a residual add, pooling and a dense head: the
    layers of a CIFAR ResNet in a network that compiles in a second."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        def bn(h):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)

        h = nn.relu(bn(nn.Conv(8, (3, 3), use_bias=False)(x)))
        h = nn.relu(h + bn(nn.Conv(8, (3, 3), use_bias=False)(h)))
        return nn.Dense(10)(jnp.mean(h, axis=(1, 2)))


@pytest.fixture(scope="module")
def cnn():
    """The small CNN with non-trivial running statistics, 64 random 8x8 images."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    model = SmallCNN()
    v = jax.jit(model.init)(jax.random.key(0), x[:1])
    v = {"params": v["params"], "batch_stats": jax.tree.map(lambda a: a + 0.3, v["batch_stats"])}
    return model, v, x, y


def _logits(model, v, x, p):
    out = model.apply(precision.variables(v, p), precision.cast(jnp.asarray(x), p), train=False)
    return precision.logits(out, p)


@pytest.mark.slow  # make test keeps the surface losses of the same forward pass
def test_bfloat16_logits_stay_within_a_few_roundings_of_float32(cnn):
    model, v, x, y = cnn
    z32, z16 = _logits(model, v, x, "float32"), _logits(model, v, x, "bfloat16")
    assert z16.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(z16 - z32)))
    scale = float(jnp.max(jnp.abs(z32)))
    # Along any path through the network the images, each layer's weights and each stored
    # activation are rounded to bfloat16 (products summed in float32): a handful of
    # roundings of relative size u; 4u of the logits' scale (measured 1.2u).
    assert err <= 4 * U * scale
    # ... and the bfloat16 path is really taken: float32 would agree to ~1e-7.
    assert err > 1e-2 * U * scale


def test_bfloat16_surface_losses_are_within_one_rounding_of_float32(cnn):
    model, v, x, y = cnn
    d1 = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    d2 = surface.filter_normalized_direction(jax.random.key(2), v["params"])
    xs = np.linspace(-1.0, 1.0, 3)
    m32 = surface.plane(model, v, d1, d2, xs, xs, x, y, batch_size=16)
    m16 = surface.plane(model, v, d1, d2, xs, xs, x, y, batch_size=16, precision="bfloat16")
    rel = np.abs(m16.loss - m32.loss) / m32.loss
    # The mean cross-entropy over 64 images: each image's loss is off by a few u (as the
    # logits are, random in sign), the mean by less: one u (measured 7.8e-4, u / 5).
    assert np.max(rel) <= U
    assert np.max(rel) > 0  # the points were evaluated in bfloat16
    # A prediction changes only where the two top logits are within ~u of each other:
    # at most 4 of the 64 images (measured 0).
    assert np.max(np.abs(m16.accuracy - m32.accuracy)) <= 4 / 64


@pytest.mark.slow  # make test keeps the surface losses within one rounding
def test_bfloat16_surface_sums_losses_in_float32():
    # 320 copies of one image in 5 batches of 64: every per-image loss is the same value l,
    # so a float32 sum gives 320 l / 320 = l to float32 rounding; a bfloat16 sum of 64 or
    # 320 equal values would round at each addition past 2^8 l / 2^8 (errors of ~u).
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            del train
            return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x.reshape(len(x), -1))))

    model = MLP()
    x = np.tile(np.random.default_rng(0).standard_normal((1, 5)).astype(np.float32), (320, 1))
    y = np.zeros(320, np.int32)
    v = dict(model.init(jax.random.key(0), x[:1]))
    d = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    kw = dict(batch_size=64, precision="bfloat16")
    once = surface.line(model, v, d, [0.0, 0.5], x[:64], y[:64], **kw)
    five = surface.line(model, v, d, [0.0, 0.5], x, y, **kw)
    np.testing.assert_allclose(five.loss, once.loss, rtol=1e-6, atol=0)


def test_bfloat16_training_step_keeps_float32_state_and_a_close_update(cnn):
    model, _, x, y = cnn
    cfg = train.TrainConfig(epochs=1, batch_size=32, lr=0.05)
    tx = train.make_optimizer(cfg, 2)
    state = train.init_state(model, tx, jax.random.key(0), x.shape[1:])
    out = {}
    for p in precision.NAMES:
        step = train.make_train_step(model, tx, batch_size=32, do_augment=False, precision=p)
        new, (loss, _) = step(
            jax.tree.map(jnp.array, state),
            jnp.asarray(x),
            jnp.asarray(y),
            jnp.arange(64),
            0,
            jax.random.key(3),
        )
        out[p] = (jax.device_get(new), float(loss))
        assert loss.dtype == jnp.float32
    new16 = out["bfloat16"][0]
    # Parameters, statistics and optimizer state stay float32 (the casts are inside the step).
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.dtype, b.dtype), new16, state)
    (new32, loss32), loss16 = out["float32"], out["bfloat16"][1]
    # The batch's mean loss: one u (measured 5.6e-6).
    assert abs(loss16 - loss32) <= U * loss32
    # The update: gradients flow back through the same bfloat16 layers, rounded again on
    # the way (activation gradients), and batch norm's backward pass subtracts batch means
    # of the gradient, which cancels leading digits (the convolution kernels' updates are
    # off by 9u to 12u each): 8u of the whole update's norm (measured 3.5u, 0.0136).
    d32 = ravel_pytree(new32["params"])[0] - ravel_pytree(state["params"])[0]
    d16 = ravel_pytree(new16["params"])[0] - ravel_pytree(state["params"])[0]
    rel = float(jnp.linalg.norm(d16 - d32) / jnp.linalg.norm(d32))
    assert 1e-2 * U < rel <= 8 * U
    # Batch statistics are float32 means of bfloat16 activations: one u of their largest
    # magnitude (measured 2.9e-4).
    s32, s16 = ravel_pytree(new32["batch_stats"])[0], ravel_pytree(new16["batch_stats"])[0]
    assert float(jnp.max(jnp.abs(s16 - s32))) <= U * float(jnp.max(jnp.abs(s32)))


def test_the_precision_is_part_of_a_runs_identity():
    model = SmallCNN()

    class Data:  # what run_identity reads of a data.Dataset
        name = "synthetic"
        x_train = x_test = np.zeros((4, 8, 8, 1), np.float32)
        y_train = y_test = np.zeros(4, np.int32)
        image_shape = (8, 8, 1)
        num_classes = 4

    f32 = checkpoints.run_identity(model, train.TrainConfig(), Data)
    b16 = checkpoints.run_identity(model, train.TrainConfig(precision="bfloat16"), Data)
    assert b16 != f32 and b16["train"]["precision"] == "bfloat16"
    # float32 runs keep the identity they had before the option existed (their
    # checkpoints resume).
    assert "precision" not in f32["train"]


def test_a_surface_store_of_the_other_precision_is_refused(cnn, tmp_path):
    model, v, x, y = cnn
    d = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    kw = dict(batch_size=32, store=tmp_path / "s")
    first = surface.line(model, v, d, [0.0, 1.0], x, y, **kw)
    with pytest.raises(ValueError, match="store"):
        surface.line(model, v, d, [0.0, 1.0], x, y, precision="bfloat16", **kw)
    again = surface.line(model, v, d, [0.0, 1.0], x, y, **kw)  # the store is untouched
    np.testing.assert_array_equal(again.loss, first.loss)


@pytest.mark.parametrize("bad", ["float16", "bf16", None])
def test_unknown_precisions_are_one_line_errors(cnn, bad):
    model, v, x, y = cnn
    d = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    with pytest.raises(ValueError, match="`precision` must be one of float32, bfloat16"):
        surface.line(model, v, d, [0.0], x, y, precision=bad)
    with pytest.raises(ValueError, match="`precision` must be one of"):
        train.TrainConfig(precision=bad)


@pytest.mark.parametrize("study", ["train_resnet", "resnet_landscape"])
def test_the_studies_precision_flag(study, capsys):
    module = importlib.import_module(f"studies.{study}")
    with pytest.raises(SystemExit) as e:
        module.main(["--precision", "float16", "--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision" in err and "float16" in err
    # The config records the precision, so its run folder, checkpoints and stores differ.
    cfg = dataclasses.replace(module.QUICK, precision="bfloat16")
    assert dataclasses.asdict(cfg)["precision"] == "bfloat16"
    if study == "train_resnet":
        assert cfg.train_config().precision == "bfloat16"
    with pytest.raises(ValueError, match="`precision`"):
        dataclasses.replace(module.QUICK, precision="float16")
