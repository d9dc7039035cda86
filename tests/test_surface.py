"""sandbox.surface against independent references: per-filter norms computed filter by filter,
a plain Python loop over points, the training code's own evaluation, scikit-learn's PCA, and
surfaces whose shape is known."""

import functools
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_on_devices

from sandbox import engine, surface, train
from sandbox.models.resnet import ResNet


class TinyMLP(nn.Module):
    """Two dense layers with biases: kernels [in, out] and 1-D biases."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        x = x.reshape(len(x), -1)
        x = jnp.tanh(nn.Dense(6)(x))
        return nn.Dense(3)(x)


@pytest.fixture(scope="module")
def mlp():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 4)).astype(np.float32)
    y = rng.integers(0, 3, 37).astype(np.int32)
    model = TinyMLP()
    variables = model.init(jax.random.key(0), x[:1])
    return model, dict(variables), x, y


@pytest.fixture(scope="module")
def resnet8():
    """ResNet-8 with batch norm and non-trivial running statistics, on 8x8 images."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 50).astype(np.int32)
    model = ResNet(depth=8, shortcut="A")
    v = jax.jit(model.init)(jax.random.key(0), x[:1])
    v = {
        "params": v["params"],
        "batch_stats": jax.tree.map(lambda a: a + 0.3, v["batch_stats"]),
    }
    return model, v, x, y


def reference_loss(model, variables, x, y):
    """The mean loss by one plain forward pass of the whole batch (no chunks, no vmap)."""
    return float(_reference_loss(model, variables, x, y))


@functools.partial(jax.jit, static_argnums=0)  # op by op, ResNet-8 takes 0.4 s a call
def _reference_loss(model, variables, x, y):
    logits = model.apply(variables, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ----------------------------------------------------------------------------- directions


def test_filter_norms_match_the_weights_filter_by_filter(resnet8):
    _, v, _, _ = resnet8
    params = v["params"]
    d = surface.filter_normalized_direction(jax.random.key(3), params)
    flat_p = jax.tree_util.tree_leaves_with_path(params)
    flat_d = jax.tree.leaves(d)
    kernels = 0
    for (path, p), q in zip(flat_p, flat_d, strict=True):
        p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
        if p.ndim <= 1:  # biases and batch-norm parameters: zero by default
            assert np.all(q == 0), jax.tree_util.keystr(path)
            continue
        kernels += 1
        for j in range(p.shape[-1]):  # output filter j: everything in [..., j]
            want = np.linalg.norm(p[..., j])
            got = np.linalg.norm(q[..., j])
            # float32 norms of <= 576 entries: a few ulps.
            assert got == pytest.approx(want, rel=1e-5), (jax.tree_util.keystr(path), j)
        # Not the weights themselves: a random direction.
        assert abs(np.vdot(p.ravel(), q.ravel())) < 0.9 * np.linalg.norm(p) ** 2
    assert kernels == 1 + 6 + 1  # stem, 3 blocks x 2 convolutions, head


def test_keeping_1d_leaves_copies_the_weights(mlp):
    _, v, _, _ = mlp
    d = surface.filter_normalized_direction(jax.random.key(0), v["params"], ignore_1d=False)
    for p, q in zip(jax.tree.leaves(v["params"]), jax.tree.leaves(d), strict=True):
        if p.ndim == 1:
            np.testing.assert_array_equal(q, p)


def test_directions_depend_only_on_the_key(mlp):
    _, v, _, _ = mlp
    a = surface.filter_normalized_direction(jax.random.key(5), v["params"])
    b = surface.filter_normalized_direction(jax.random.key(5), v["params"])
    c = surface.filter_normalized_direction(jax.random.key(6), v["params"])
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, w)
    assert not all(
        np.array_equal(u, w) for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(c), strict=True)
    )


def test_orthogonalize_removes_the_projection(resnet8):
    _, v, _, _ = resnet8
    d1 = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    d2 = surface.filter_normalized_direction(jax.random.key(2), v["params"])
    d2o = surface.orthogonalize(d2, d1)
    cos = float(surface.vdot(d2o, d1) / (surface.norm(d2o) * surface.norm(d1)))
    assert abs(cos) < 1e-6  # float32 inner products of ~75k terms


def test_a_direction_that_does_not_match_is_refused(mlp, resnet8):
    _, v, _, _ = mlp
    _, rv, _, _ = resnet8
    with pytest.raises(ValueError, match="`direction` does not match"):
        surface.normalize_filters(rv["params"], v["params"])
    bad = jax.tree.map(lambda p: jnp.zeros((*p.shape, 2)), v["params"])
    with pytest.raises(ValueError, match=r"`direction` does not match the parameters at .*shape"):
        surface.normalize_filters(bad, v["params"])
    with pytest.raises(ValueError, match=r"`directions\[0\]` does not match"):
        surface.evaluate(*mlp[:2], [rv["params"]], np.zeros((1, 1)), *mlp[2:])


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_matches_a_plain_loop_over_points(mlp):
    model, v, x, y = mlp
    d1 = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    d2 = surface.filter_normalized_direction(jax.random.key(2), v["params"], ignore_1d=False)
    coords = np.random.default_rng(2).uniform(-1, 1, (9, 2))
    got = surface.evaluate(model, v, [d1, d2], coords, x, y, batch_size=8, progress=False)
    for p, (a, b) in enumerate(coords):
        params = jax.tree.map(lambda o, u, w, a=a, b=b: o + a * u + b * w, v["params"], d1, d2)
        logits = np.asarray(model.apply({"params": params}, x), np.float64)
        logp = (
            logits
            - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1))[:, None]
            - logits.max(1, keepdims=True)
        )
        want = -np.mean(logp[np.arange(len(y)), y])
        # float32 forward passes, batch sums in float32: relative 1e-5.
        assert got.loss[p] == pytest.approx(want, rel=1e-5)
        assert got.accuracy[p] == np.mean(np.argmax(logits, 1) == y)


def test_centre_equals_the_trained_models_loss(resnet8):
    model, v, x, y = resnet8
    d1 = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    d2 = surface.filter_normalized_direction(jax.random.key(2), v["params"])
    xs = ys = surface.axis(-1.0, 1.0, 3)
    m = surface.plane(model, v, d1, d2, xs, ys, x, y, batch_size=16, progress=False)
    assert m.loss.shape == (3, 3)
    ref_loss, ref_acc = train.make_evaluate(model, 16)(v, jnp.asarray(x), jnp.asarray(y))
    assert m.loss[1, 1] == pytest.approx(ref_loss, rel=1e-6)  # same batches, same sums
    assert m.accuracy[1, 1] == ref_acc
    # The rest of the plane is another network: the loss moves.
    assert np.all(m.loss[[0, 0, 2, 2], [0, 2, 0, 2]] != m.loss[1, 1])


@pytest.mark.slow  # make test keeps its float32 twin (test_evaluate_matches_a_plain_loop...)
def test_evaluate_in_float64_matches_a_plain_loop(mlp):
    model, v, x, y = mlp
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
        d = surface.filter_normalized_direction(jax.random.key(1), v64["params"])
        got = surface.line(model, v64, d, [0.0, 0.5], x.astype(np.float64), y, progress=False)
        params = jax.tree.map(lambda o, u: o + 0.5 * u, v64["params"], d)
        logits = model.apply({"params": params}, x.astype(np.float64))
        want = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())
        # Float64 throughout: the sums agree to rounding.
        assert got.loss[1] == pytest.approx(want, rel=1e-12)


def test_results_do_not_depend_on_chunks_or_batches(mlp):
    model, v, x, y = mlp
    d = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    alphas = np.linspace(-2, 2, 11)
    base = surface.line(model, v, d, alphas, x, y, batch_size=37, progress=False)
    for kw in ({"chunk_size": 1}, {"chunk_size": 3}, {"chunk_size": 64}, {"batch_size": 5}):
        other = surface.line(model, v, d, alphas, x, y, progress=False, **{"batch_size": 37, **kw})
        # Float32 sums in another order when the batch changes: relative 1e-6.
        np.testing.assert_allclose(other.loss, base.loss, rtol=1e-6)
        np.testing.assert_array_equal(other.accuracy, base.accuracy)


def test_interpolation_ends_at_both_models(resnet8):
    model, start, x, y = resnet8
    end = jax.tree.map(lambda a: a * 1.1 + 0.01, start)
    m = surface.interpolate(model, start, end, [0.0, 0.5, 1.0], x, y, progress=False)
    assert m.loss[0] == pytest.approx(reference_loss(model, start, x, y), rel=1e-5)
    assert m.loss[2] == pytest.approx(reference_loss(model, end, x, y), rel=1e-5)
    mid = jax.tree.map(lambda a, b: (a + b) / 2, start, end)
    assert m.loss[1] == pytest.approx(reference_loss(model, mid, x, y), rel=1e-5)
    # Beyond the ends the parameters extrapolate and the running statistics stay those of
    # the nearer end (extrapolated variances could be negative).
    out = surface.interpolate(model, start, end, [-0.5, 1.5], x, y, progress=False)
    lo = {
        "params": jax.tree.map(lambda a, b: 1.5 * a - 0.5 * b, start["params"], end["params"]),
        "batch_stats": start["batch_stats"],
    }
    hi = {
        "params": jax.tree.map(lambda a, b: -0.5 * a + 1.5 * b, start["params"], end["params"]),
        "batch_stats": end["batch_stats"],
    }
    assert np.all(np.isfinite(out.loss))
    assert out.loss[0] == pytest.approx(reference_loss(model, lo, x, y), rel=1e-5)
    assert out.loss[1] == pytest.approx(reference_loss(model, hi, x, y), rel=1e-5)


@pytest.mark.slow  # the engine under it is tested on 2 and 3 devices in make test
def test_results_do_not_depend_on_the_device_count(tmp_path):
    # Simulated CPU devices need a fresh process: XLA reads the flag at start-up.
    script = textwrap.dedent(
        """
        import sys, numpy as np, jax, jax.numpy as jnp
        import flax.linen as nn
        from sandbox import surface

        class Net(nn.Module):  # a convolution, batch norm and a dense head
            @nn.compact
            def __call__(self, x, train=False):
                x = nn.Conv(4, (3, 3))(x)
                x = nn.BatchNorm(use_running_average=not train)(x)
                return nn.Dense(10)(jnp.tanh(x).reshape(len(x), -1))

        rng = np.random.default_rng(1)
        x = rng.standard_normal((40, 8, 8, 1)).astype(np.float32)
        y = rng.integers(0, 10, 40).astype(np.int32)
        model = Net()
        v = jax.jit(model.init)(jax.random.key(0), x[:1])
        d1 = surface.filter_normalized_direction(jax.random.key(1), v["params"])
        d2 = surface.filter_normalized_direction(jax.random.key(2), v["params"])
        xs = surface.axis(-1.0, 1.0, 5)
        m = surface.plane(model, v, d1, d2, xs, xs[:3], x, y, batch_size=16, progress=False)
        np.savez(sys.argv[1], loss=m.loss, acc=m.accuracy, n=jax.device_count())
        """
    )
    outs = {}
    for count in (1, 2):
        outs[count] = run_on_devices(script, count, tmp_path / f"d{count}.npz")
        assert int(outs[count]["n"]) == count
    # 15 points over 2 devices (a chunk of 16, one point padded) against one device: each
    # point is the same compiled forward pass wherever it runs; float32, relative 1e-6.
    np.testing.assert_allclose(outs[2]["loss"], outs[1]["loss"], rtol=1e-6)
    np.testing.assert_array_equal(outs[2]["acc"], outs[1]["acc"])


# ----------------------------------------------------------------------------- resume


def test_an_interrupted_grid_resumes_where_it_stopped(mlp, tmp_path, monkeypatch):
    model, v, x, y = mlp
    d = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    alphas = np.linspace(-1, 1, 10)
    full = surface.line(model, v, d, alphas, x, y, chunk_size=2, progress=False)
    path = tmp_path / "cells"
    real_write = engine._Store.write
    calls = []

    def write_then_die(self, c, outputs):
        real_write(self, c, outputs)
        calls.append(c)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after two chunks were written

    monkeypatch.setattr(engine._Store, "write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        surface.line(model, v, d, alphas, x, y, chunk_size=2, store=path, progress=False)
    assert sorted(int(p.name) for p in (path / "done").iterdir()) == sorted(calls)
    # Resumed: only the three chunks not yet written are computed (a store's chunks are
    # checked against their checksums, so a marked cell would be computed again instead).
    written = []

    def counting_write(self, c, outputs):
        written.append(c)
        real_write(self, c, outputs)

    monkeypatch.setattr(engine._Store, "write", counting_write)
    again = surface.line(model, v, d, alphas, x, y, chunk_size=2, store=path, progress=False)
    assert sorted(written) == sorted(set(range(5)) - set(calls))  # the other three
    np.testing.assert_array_equal(again.loss, full.loss)
    np.testing.assert_array_equal(again.accuracy, full.accuracy)
    assert len(list((path / "done").iterdir())) == 5


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_store_of_another_surface_is_refused_and_kept(mlp, tmp_path):
    model, v, x, y = mlp
    d = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    e = surface.filter_normalized_direction(jax.random.key(2), v["params"])
    path = tmp_path / "cells"
    surface.line(model, v, d, [0.0, 1.0], x, y, store=path, progress=False)
    before = _files(path)
    with pytest.raises(ValueError, match=r"another computation \(different shared.directions\)"):
        surface.line(model, v, e, [0.0, 1.0], x, y, store=path, progress=False)
    other = {"params": jax.tree.map(lambda a: a + 1.0, v["params"])}
    with pytest.raises(ValueError, match=r"another computation \(different shared.parameters\)"):
        surface.line(model, other, d, [0.0, 1.0], x, y, store=path, progress=False)
    with pytest.raises(ValueError, match=r"another computation \(different items.coords\)"):
        surface.line(model, v, d, [0.0, 0.5], x, y, store=path, progress=False)
    with pytest.raises(ValueError, match=r"another computation \(different shared.data\)"):
        surface.line(model, v, d, [0.0, 1.0], x, (y + 1) % 3, store=path, progress=False)
    assert _files(path) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is a folder that is not an engine store"):
        surface.line(model, v, d, [0.0, 1.0], x, y, store=tmp_path / "other", progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- bad input


def test_bad_ranges_and_grids_are_one_line_errors(mlp):
    model, v, x, y = mlp
    d = surface.filter_normalized_direction(jax.random.key(1), v["params"])
    with pytest.raises(ValueError, match="`range` must satisfy lo < hi.*inverted"):
        surface.axis(1.0, -1.0, 5)
    with pytest.raises(ValueError, match="`range` must satisfy lo < hi"):
        surface.axis(0.5, 0.5, 5)
    with pytest.raises(ValueError, match="number of points >= 2"):
        surface.axis(-1.0, 1.0, 1)
    with pytest.raises(ValueError, match="finite"):
        surface.axis(-np.inf, 1.0, 5)
    with pytest.raises(ValueError, match=r"`coords` must have shape \[P, 2\]"):
        surface.evaluate(model, v, [d, d], np.zeros((4, 3)), x, y)
    with pytest.raises(ValueError, match="`coords` must be finite"):
        surface.evaluate(model, v, [d], np.array([[np.nan]]), x, y)
    with pytest.raises(ValueError, match="`chunk_size`"):
        surface.evaluate(model, v, [d], np.zeros((4, 1)), x, y, chunk_size=0)
    with pytest.raises(ValueError, match="`batch_size`"):
        surface.evaluate(model, v, [d], np.zeros((4, 1)), x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"`y` must have shape \[\d+\] like `x`"):
        surface.evaluate(model, v, [d], np.zeros((4, 1)), x, y[:-1])
    with pytest.raises(ValueError, match=r"`x` must have shape \[N, ...\] with N >= 1 images"):
        surface.evaluate(model, v, [d], np.zeros((4, 1)), x[:0], y[:0])
    with pytest.raises(
        ValueError, match=r"`y` must hold labels in \[0, \d+\) \(the model's classes\)"
    ):
        surface.evaluate(model, v, [d], np.zeros((4, 1)), x, y + 100)
    with pytest.raises(ValueError, match=r"`y` must hold labels in \[0, "):
        surface.evaluate(model, v, [d], np.zeros((4, 1)), x, y - 100)
    with pytest.raises(ValueError, match="non-empty list"):
        surface.evaluate(model, v, [], np.zeros((4, 0)), x, y)


def test_a_grid_too_large_for_memory_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"`coords`: a grid of 1,000,000,000,000 points needs"):
        surface._check_memory(10**12, 2)
    surface._check_memory(51 * 51, 2)  # the paper's grid: fine
    # Through the public calls, refused before the coordinates are made or copied.
    huge = np.broadcast_to(np.float32(0.0), (10**12, 1))  # no memory behind it
    with pytest.raises(ValueError, match=r"`coords`: a grid of 1,000,000,000,000 points"):
        surface.evaluate(None, {"params": {}}, [{}], huge, np.zeros((1, 2)), np.zeros(1, int))
    xs = np.broadcast_to(np.float32(0.0), (10**6,))
    with pytest.raises(ValueError, match=r"`coords`: a grid of 1,000,000,000,000 points"):
        surface.plane(None, {"params": {}}, {}, {}, xs, xs, np.zeros((1, 2)), np.zeros(1, int))


# ----------------------------------------------------------------------------- PCA


def test_pca_recovers_a_planar_path_like_scikit_learn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    final = {"w": rng.standard_normal((5, 4)), "b": rng.standard_normal(4)}
    n = 20
    u, v = np.linalg.qr(rng.standard_normal((n, 2)))[0].T
    t = np.linspace(0, 1, 12)
    a, b = 3 * (1 - t) ** 2, np.sin(3 * t) * (1 - t)
    rows = a[:, None] * u + b[:, None] * v
    path = [{"w": final["w"] + r.reshape(5, 4), "b": final["b"]} for r in rows]
    pca = surface.pca_directions(path, final=final)
    sk = PCA(2).fit(rows)
    for k in range(2):
        got = np.asarray(pca.directions[k]["w"]).ravel()
        # Unit directions, equal to scikit-learn's components up to sign; stored in the
        # parameters' dtype (float32 unless x64 is on): 1e-6.
        assert abs(abs(np.dot(got, sk.components_[k])) - 1) < 1e-6
        assert np.all(np.asarray(pca.directions[k]["b"]) == 0)
    # The rows are float32 differences of the parameters (x64 off): relative 1e-6.
    np.testing.assert_allclose(pca.explained, sk.explained_variance_ratio_, rtol=1e-6)
    assert pca.explained.sum() == pytest.approx(1.0, abs=1e-6)  # the path is planar
    # The projected path keeps every distance: same Gram matrix as (a, b) (entries <= 9).
    ab = np.stack([a, b], 1)
    np.testing.assert_allclose(pca.coords @ pca.coords.T, ab @ ab.T, atol=1e-5)
    assert np.allclose(pca.coords[-1], 0)  # the final point at the origin


def test_pca_needs_two_checkpoints_that_differ():
    p = {"w": np.ones((2, 2))}
    with pytest.raises(ValueError, match="at least 2 checkpoints"):
        surface.pca_directions([p])
    with pytest.raises(ValueError, match="`num_components`"):
        surface.pca_directions([p, p], num_components=2)
    with pytest.raises(ValueError, match="spans fewer than 1"):
        surface.pca_directions([p, p], num_components=1)
    # Three checkpoints, two of them equal: one direction, not two (the second would be
    # rounding noise).
    q, f = {"w": np.ones((2, 2)) * 2}, {"w": np.array([[0.0, 1.0], [3.0, -1.0]])}
    with pytest.raises(ValueError, match="spans fewer than 2"):
        surface.pca_directions([q, q, f])
    assert surface.pca_directions([q, q, f], num_components=1).explained[0] == pytest.approx(1)


# ----------------------------------------------------------------------------- statistics


def test_surface_stats_on_known_shapes():
    xs = ys = np.linspace(-1, 1, 21)
    X, Y = np.meshgrid(xs, ys)
    bowl = surface.surface_stats(X**2 + Y**2, xs, ys, level=0.5)
    assert bowl["local_minima"] == 1 and bowl["nonconvex_fraction"] == 0.0
    assert bowl["centre"] == 0.0 and bowl["median_abs_ratio"] == pytest.approx(1.0)
    # Area of the disc r^2 < 0.5 in the square [-1, 1]^2: pi * 0.5 / 4 = 0.39; counted on a
    # grid of 201^2 points, within 1% of the square.
    fine = np.linspace(-1, 1, 201)
    Xf, Yf = np.meshgrid(fine, fine)
    disc = surface.surface_stats(Xf**2 + Yf**2, fine, fine, level=0.5)
    assert disc["below_level"] == pytest.approx(np.pi * 0.5 / 4, abs=0.01)
    saddle = surface.surface_stats(X**2 - Y**2, xs, ys, level=0.0)
    assert saddle["local_minima"] == 0 and saddle["nonconvex_fraction"] == 1.0
    flat = surface.surface_stats(np.ones((5, 5)), xs[:5], ys[:5], level=2.0)  # no warning
    assert flat["median_abs_ratio"] == 1.0 and flat["local_minima"] == 0
    with_inf = np.where(X**2 + Y**2 > 0.8, np.inf, X**2 + Y**2)
    blown = surface.surface_stats(with_inf, xs, ys, level=0.5)
    assert blown["non_finite"] == int(np.sum(np.isinf(with_inf))) and blown["local_minima"] == 1
    egg = surface.surface_stats(np.cos(3 * np.pi * X) * np.cos(3 * np.pi * Y), xs, ys, level=0)
    assert egg["local_minima"] > 1 and 0 < egg["nonconvex_fraction"] < 1
    assert egg["roughness"] > bowl["roughness"]


def test_images_or_variables_that_do_not_fit_the_network_are_named(resnet8):
    model, v, x, y = resnet8  # a 1-channel ResNet-8
    rgb = np.repeat(x, 3, axis=-1)
    with pytest.raises(ValueError, match=r"`x`: images of shape \(8, 8, 3\) do not fit") as e:
        surface.evaluate(model, v, [v["params"]], np.zeros((1, 1)), rgb, y, progress=False)
    assert "\n" not in str(e.value)
    # ... and 1-channel images for a 3-channel network (its variables built abstractly).
    shapes = jax.eval_shape(model.init, jax.random.key(0), rgb[:1])
    v_rgb = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    with pytest.raises(
        ValueError, match=r"`x`: images of shape \(8, 8, 1\) do not fit .*\(3, 3, 3, 16\)"
    ):
        surface.evaluate(model, v_rgb, [v_rgb["params"]], np.zeros((1, 1)), x, y, progress=False)
    with pytest.raises(ValueError, match="`variables` lacks 'batch_stats'"):
        surface.evaluate(
            model, {"params": v["params"]}, [v["params"]], np.zeros((1, 1)), x, y, progress=False
        )
