"""CIFAR ResNet-(6n+2) of He et al. 2016 in Flax linen, with and without skip connections.

A 3x3 stem with 16 channels, three stages of n basic blocks (two 3x3 convolutions each) with
16/32/64 channels and strides 1/2/2, global average pooling and a dense classifier. Depths
20, 32, 44, 56 and 110 are the paper's; any depth 6n + 2 (n >= 1) works, ResNet-8 included
for fast tests. Shortcuts:

- "A": identity; where the shape changes, the input is subsampled (every other pixel) and
  its channels zero-padded (no parameters: ResNet-56 has 853,018 on CIFAR-10).
- "B": identity, or a 1x1 projection with batch norm where the shape changes (855,770).
- "none": no shortcut at all, the plain network of Li et al. 2018 (853,018).

Batch norm can be switched off (the convolutions then get biases). Convolution kernels are
He-normal. With a shortcut, the last batch-norm scale of each block starts at zero, so every
residual block starts as the identity (Goyal et al. 2017); without a shortcut it starts at
one, since a zero there would make the block's output zero.

`init` and `apply` are pure functions of the variables (`{"params", "batch_stats"}`): no
`axis_name` on the batch norms, so the model runs inside `jax.vmap` over parameter sets.

    model = ResNet(depth=56, shortcut="A")
    variables = model.init(key, x_BxHxWxC)                       # params, batch_stats
    logits_BxK = model.apply(variables, x_BxHxWxC)               # eval: running statistics
    logits_BxK, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])

Inputs are NHWC, of any spatial size >= 8 and any number of channels.

`impl="fast"` (default) stores each block's intermediate and output activations through a
fence that XLA:CPU cannot fuse through (`stored`); `impl="plain"` is the textbook Flax
network, the baseline of benchmarks/resnet.py. Both have the same parameters, by name and
value, and compute the same numbers bit for bit; on CPU the fast one trains 2-3x faster.
Why: along the residual stream every block's output is an elementwise function of all
earlier convolution outputs of its stage (batch norm, add, ReLU). XLA:CPU fuses elementwise
producers into each consumer and duplicates them freely, so without a fence every fusion
(the weight-gradient transposes above all) recomputes the whole stage so far, element by
element in a strided order: quadratic work, and 80% of the plain step's time.
"""

from collections.abc import Callable
from typing import Annotated, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sandbox import config

SHORTCUTS = ("A", "B", "none")
IMPLS = ("fast", "plain")
STAGES = ((16, 1), (32, 2), (64, 2))  # (channels, stride of the first block)
BN_MOMENTUM = 0.9  # running average: new = 0.9 old + 0.1 batch, as PyTorch's 0.1
BN_EPSILON = 1e-5

he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # He et al. 2015


# A study config's depth field: the depths `check_depth` accepts, up to 1202 layers.
Depth = Annotated[int, config.bounds(8, 1202, rule=(lambda d: (d - 2) % 6 == 0, "6n + 2"))]


def check_depth(depth: Any) -> int:
    """The number of blocks per stage, n = (depth - 2) / 6; ValueError naming `depth`."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"`depth` must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}"
        )
    return (depth - 2) // 6


def check_shortcut(shortcut: Any) -> str:
    if shortcut not in SHORTCUTS:
        raise ValueError(f"`shortcut` must be one of {', '.join(SHORTCUTS)}, got {shortcut!r}")
    return shortcut


def stored(x: jax.Array) -> jax.Array:
    """x, computed once into its own buffer on CPU; the identity elsewhere (bit for bit).

    A conditional is a boundary that XLA's fusion passes do not cross, so the consumers of
    the result read a stored array instead of recomputing its elementwise producers.
    (`lax.optimization_barrier` would say this directly, but XLA:CPU expands it before
    fusion.) The predicate is always true, (bits | 1) != 0, yet XLA cannot prove it; the
    branch never taken differs from the identity so that XLA does not merge the two.
    Under `vmap` the predicate is batched and the conditional becomes a select: same
    numbers, no fence.
    """

    def fence(x):
        uint = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[x.dtype.itemsize]
        bits = lax.bitcast_convert_type(x.reshape(-1)[0], uint)
        return lax.cond((bits | 1) != 0, lambda v: v, lambda v: -v, x)

    # Only XLA:CPU was measured to need it; on accelerators a conditional can cost more
    # (a round trip of its predicate) than the fusions it would change.
    return lax.platform_dependent(x, cpu=fence, default=lambda v: v)


def _conv(features: int, kernel: int, stride: int, bias: bool, name: str) -> nn.Conv:
    """A `flax.linen.Conv`, He-normal, padded like PyTorch's CIFAR ResNets."""
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=bias,
        kernel_init=he_normal,
        name=name,
    )


class Block(nn.Module):
    """Two 3x3 convolutions (with batch norm) and a shortcut; ReLU after the sum."""

    features: int
    stride: int
    shortcut: str
    norm: bool
    impl: str

    @nn.compact
    def __call__(self, x, train: bool):
        def bn(name: str, scale_init: Callable = nn.initializers.ones):
            if not self.norm:
                return lambda h: h
            return nn.BatchNorm(
                use_running_average=not train,
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                scale_init=scale_init,
                name=name,
            )

        store = stored if self.impl == "fast" else lambda v: v
        bias = not self.norm
        y = _conv(self.features, 3, self.stride, bias, "conv1")(x)
        y = store(nn.relu(bn("bn1")(y)))
        y = _conv(self.features, 3, 1, bias, "conv2")(y)
        # Zero scale: the block starts as its shortcut. Without one, it would output zero.
        last = nn.initializers.zeros if self.shortcut != "none" else nn.initializers.ones
        y = bn("bn2", last)(y)
        if self.shortcut == "none":
            return store(nn.relu(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            if self.shortcut == "A":
                x = x[:, :: self.stride, :: self.stride, :]
                extra = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
            else:  # "B": 1x1 projection
                x = _conv(self.features, 1, self.stride, bias, "proj")(x)
                x = bn("proj_bn")(x)
        return store(nn.relu(y + x))


class ResNet(nn.Module):
    """CIFAR ResNet-(6n+2); see the module docstring.

    Attributes:
      depth: 6n + 2 (20, 32, 44, 56, 110, ...).
      shortcut: "A", "B" or "none".
      norm: batch norm after every convolution (else biased convolutions).
      num_classes: outputs of the classifier.
      impl: "fast" or "plain" (same parameters and numbers; see the module docstring).
    """

    depth: int = 56
    shortcut: str = "A"
    norm: bool = True
    num_classes: int = 10
    impl: str = "fast"

    def __post_init__(self):
        check_depth(self.depth)
        check_shortcut(self.shortcut)
        if not isinstance(self.norm, bool):
            raise ValueError(f"`norm` must be True or False, got {self.norm!r}")
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or (self.num_classes < 1)
        ):
            raise ValueError(f"`num_classes` must be a positive integer, got {self.num_classes!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"`impl` must be one of {', '.join(IMPLS)}, got {self.impl!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        """Logits [B, num_classes] for images x [B, H, W, C] (H, W >= 8)."""
        if x.ndim != 4 or min(x.shape[1:3]) < 8 or x.shape[3] < 1:
            raise ValueError(f"input must be images [B, H, W, C] with H, W >= 8, got {x.shape}")
        n = check_depth(self.depth)
        x = _conv(16, 3, 1, not self.norm, "stem")(x)
        if self.norm:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                name="stem_bn",
            )(x)
        x = nn.relu(x)
        if self.impl == "fast":
            x = stored(x)
        for s, (features, stride) in enumerate(STAGES):
            for b in range(n):
                x = Block(
                    features,
                    stride if b == 0 else 1,
                    self.shortcut,
                    self.norm,
                    self.impl,
                    name=f"stage{s + 1}_block{b + 1}",
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(x)


def num_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return sum(int(p.size) for p in jax.tree.leaves(params))
