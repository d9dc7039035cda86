"""ResNet-(6n+2): parameter counts of He et al. 2016, shapes, shortcuts, bad input, the fast
implementation against the plain Flax one, and running under vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox.models import resnet
from sandbox.models.resnet import ResNet


@pytest.fixture
def quick_compile():
    """XLA's optimizations take most of the compile time of these small networks and change
    no result that these tests check."""
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _shapes(model, input_shape):
    """Variable shapes without computing anything (jax.eval_shape of init)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape)))


@pytest.mark.parametrize(
    "depth, shortcut, expected",
    [
        (20, "A", 269_722),
        (56, "A", 853_018),
        (56, "none", 853_018),
        (56, "B", 855_770),
        (110, "A", 1_727_962),
    ],
)
def test_parameter_counts_on_cifar_shapes(depth, shortcut, expected):
    v = _shapes(ResNet(depth=depth, shortcut=shortcut), (1, 32, 32, 3))
    assert resnet.num_params(v["params"]) == expected


def test_resnet8_layout_and_shapes(key, quick_compile):
    model = ResNet(depth=8, num_classes=7)
    for shape in [(2, 8, 8, 1), (3, 9, 11, 5), (2, 32, 32, 3)]:
        v = _shapes(model, shape)
        out = jax.eval_shape(model.apply, v, jnp.zeros(shape))
        assert out.shape == (shape[0], 7)
    v = jax.jit(model.init)(key, jnp.zeros((2, 9, 11, 3)))
    out = jax.jit(model.apply)(v, jnp.ones((2, 9, 11, 3)))
    assert out.shape == (2, 7) and np.all(np.isfinite(out))
    p = v["params"]
    assert set(p) == {"stem", "stem_bn", "stage1_block1", "stage2_block1", "stage3_block1", "head"}
    assert p["stem"]["kernel"].shape == (3, 3, 3, 16)
    assert p["stage2_block1"]["conv1"]["kernel"].shape == (3, 3, 16, 32)
    assert p["stage3_block1"]["conv2"]["kernel"].shape == (3, 3, 64, 64)
    assert "bias" not in p["stem"]  # batch norm follows every convolution
    assert p["head"]["kernel"].shape == (64, 7)
    # Average pooling: the spatial size only changes the activations, not the parameters.
    assert resnet.num_params(p) == resnet.num_params(_shapes(model, (1, 8, 8, 3))["params"])


def test_shortcut_b_projects_only_where_the_shape_changes():
    p = _shapes(ResNet(depth=14, shortcut="B"), (1, 8, 8, 3))["params"]
    assert "proj" in p["stage2_block1"] and "proj" in p["stage3_block1"]
    assert "proj" not in p["stage1_block1"] and "proj" not in p["stage2_block2"]
    assert p["stage3_block1"]["proj"]["kernel"].shape == (1, 1, 32, 64)


def test_init_is_he_normal_and_zero_residual_only_with_a_shortcut(key, quick_compile):
    def init(**kw):
        model = ResNet(**kw)
        return jax.jit(model.init)(key, jnp.zeros((1, 8, 8, 3)))["params"]

    with_a, none = init(depth=8, shortcut="A"), init(depth=8, shortcut="none")
    k = np.asarray(with_a["stage3_block1"]["conv2"]["kernel"])  # fan-in 3 * 3 * 64
    np.testing.assert_allclose(k.mean(), 0, atol=0.003)
    np.testing.assert_allclose(k.std(), np.sqrt(2 / 576), rtol=0.02)
    assert np.all(np.asarray(with_a["stage1_block1"]["bn2"]["scale"]) == 0)
    assert np.all(np.asarray(none["stage1_block1"]["bn2"]["scale"]) == 1)
    assert np.all(np.asarray(none["stage1_block1"]["bn1"]["scale"]) == 1)


def test_without_norm_convolutions_have_biases_and_there_are_no_batch_stats(key, quick_compile):
    model = ResNet(depth=8, norm=False)
    v = jax.jit(model.init)(key, jnp.zeros((1, 8, 8, 3)))
    assert "batch_stats" not in v
    assert v["params"]["stem"]["bias"].shape == (16,)
    out = jax.jit(model.apply, static_argnames="train")(
        v, jax.random.normal(key, (2, 8, 8, 3)), train=True
    )
    assert out.shape == (2, 10) and np.all(np.isfinite(out))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 57}, "`depth` must be 6n \\+ 2 .* got 57"),
        ({"depth": 2}, "got 2"),
        ({"depth": 56.0}, "got 56.0"),
        ({"shortcut": "C"}, "`shortcut` must be one of A, B, none, got 'C'"),
        ({"impl": "cuda"}, "`impl` must be one of fast, plain, got 'cuda'"),
        ({"num_classes": 0}, "`num_classes`"),
        ({"norm": "yes"}, "`norm`"),
    ],
)
def test_bad_configuration_is_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


@pytest.mark.parametrize("shape", [(1, 7, 8, 3), (1, 8, 8), (1, 8, 4, 3)])
def test_bad_input_shape_is_one_clear_error(key, quick_compile, shape):
    with pytest.raises(ValueError, match=r"H, W >= 8"):
        ResNet(depth=8).init(key, jnp.zeros(shape))


@pytest.mark.parametrize(
    "shortcut, optimized",
    [
        ("A", False),
        pytest.param("none", False, marks=pytest.mark.slow),
        pytest.param("B", False, marks=pytest.mark.slow),
        pytest.param("A", True, marks=pytest.mark.slow),  # XLA's optimized fusions
    ],
)
def test_fast_and_plain_have_the_same_parameters_outputs_and_gradients(key, shortcut, optimized):
    old = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", not optimized)
    try:
        _check_fast_against_plain(key, shortcut)
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


def _check_fast_against_plain(key, shortcut):
    fast, plain = (
        ResNet(depth=8, shortcut=shortcut),
        ResNet(depth=8, shortcut=shortcut, impl="plain"),
    )
    x = jax.random.normal(key, (4, 8, 8, 3))
    y = jnp.arange(4) % 10
    if jax.config.values["jax_disable_most_optimizations"]:
        v = jax.jit(fast.init)(key, x)
        jax.tree.map(np.testing.assert_array_equal, v, jax.jit(plain.init)(key, x))
    else:  # random variables of the right shapes: an optimized init compiles slowly
        shapes = _shapes(fast, x.shape)
        leaves, tree = jax.tree.flatten(shapes)
        keys = jax.random.split(key, len(leaves))
        v = tree.unflatten(
            [jax.random.normal(k, s.shape) for k, s in zip(keys, leaves, strict=True)]
        )
        v["batch_stats"] = jax.tree.map(jnp.abs, v["batch_stats"])  # variances
    # Shift every parameter: the zero-initialised scales then let every path matter.
    v["params"] = jax.tree.map(lambda p: p + 0.1, v["params"])

    def loss(params, model):
        logits, upd = model.apply(
            {"params": params, "batch_stats": v["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y]), (
            upd,
            model.apply({"params": params, "batch_stats": v["batch_stats"]}, x),
        )

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (lf, (uf, ef)), gf = grad(v["params"], fast)
    (lp, (up, ep)), gp = grad(v["params"], plain)
    np.testing.assert_allclose(lf, lp, rtol=1e-6, atol=0)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, gf, gp)
    jax.tree.map(close, uf, up)
    close(ef, ep)


def test_fast_stores_the_residual_stream_on_cpu_and_is_plain_elsewhere():
    x = jnp.ones((2, 8, 8, 3))
    model = ResNet(depth=8)
    v = _shapes(model, x.shape)
    hlo = jax.jit(model.apply).lower(v, x).as_text()
    plain_hlo = jax.jit(ResNet(depth=8, impl="plain").apply).lower(v, x).as_text()
    if jax.default_backend() == "cpu":
        assert "stablehlo.case" in hlo or "stablehlo.if" in hlo
    assert "stablehlo.case" not in plain_hlo and "stablehlo.if" not in plain_hlo
    # The fence is the identity, including signed zeros, NaN and inf.
    z = jnp.array([[-0.0, 0.0, jnp.nan, jnp.inf, -jnp.inf, 1e-40]])
    out = jax.jit(resnet.stored)(z)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(z))
    np.testing.assert_array_equal(out, z)


@pytest.mark.slow  # make test keeps test_surface's ResNet-8 plane (parameter sets vmapped)
def test_runs_inside_vmap_over_parameter_sets(key, quick_compile):
    model = ResNet(depth=8)
    x = jax.random.normal(key, (3, 8, 8, 1))
    vs = jax.jit(jax.vmap(lambda k: model.init(k, x)))(jax.random.split(key, 2))

    def logits(v):  # train mode (batch statistics) and eval mode (running averages)
        return model.apply(v, x, train=True, mutable=["batch_stats"])[0], model.apply(v, x)

    batched = jax.jit(jax.vmap(logits))(vs)
    single = jax.jit(logits)
    for i in range(2):
        one = single(jax.tree.map(lambda a, i=i: a[i], vs))
        for b, o in zip(batched, one, strict=True):
            np.testing.assert_allclose(b[i], o, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_benchmark_variants_compute_the_same_numbers():
    """benchmarks/resnet.py: the fast model with its batch split over the devices against
    plain Flax on one device, after one training step and for inference."""
    from benchmarks import resnet as bench

    variants = bench.compile_variants({"depth": 8}, {"plain": False, "fast": True})
    err = bench.check_same_numbers(variants)
    assert err["train"] < 1e-4 and err["infer"] < 1e-5, err
