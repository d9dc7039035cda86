"""Data sets: digits (flat and as a seeded split of images), CIFAR-10 read back from tiny files
in the real format, bad folders and files, synthetic data, and the crop-and-flip augmentation."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sandbox import data


def test_digits_flat_is_unchanged():
    x, y = data.digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))


def test_digits_dataset_is_a_fixed_stratified_standardized_split():
    d = data.digits_dataset()
    assert d.name == "digits" and d.num_classes == 10 and d.image_shape == (8, 8, 1)
    assert len(d.x_train) + len(d.x_test) == 1797 and len(d.x_test) == 359
    # Stratified: every class holds out 20% of its images (35 to 37 of about 180).
    counts = np.bincount(d.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    np.testing.assert_allclose(d.x_train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(), 1.0, rtol=1e-5)
    # The split is the seed's: the same seed gives the same arrays, another seed another.
    again = data.digits_dataset()
    np.testing.assert_array_equal(again.x_test, d.x_test)
    other = data.digits_dataset(seed=1)
    assert not np.array_equal(other.y_test, d.y_test)
    # Train and test partition the 1797 flat digits, up to one affine map (the
    # standardization), which keeps the lexicographic order of the rows.
    x, _ = data.digits()
    both = np.concatenate([d.x_train, d.x_test]).reshape(-1, 64).astype(np.float64)
    x_sorted = x[np.lexsort(x.T[::-1])].astype(np.float64)
    both_sorted = both[np.lexsort(both.T[::-1])]
    scale = np.ptp(x_sorted) / np.ptp(both_sorted)
    np.testing.assert_allclose(
        x_sorted, (both_sorted - both_sorted.min()) * scale + x_sorted.min(), atol=1e-5
    )


def test_load_by_name_and_unknown_names():
    assert data.load("digits").name == "digits"
    assert data.load("synthetic").image_shape == (32, 32, 3)
    with pytest.raises(ValueError, match="unknown data set 'mnist'; known: digits, cifar10"):
        data.load("mnist")


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_the_real_format_back(tiny_cifar):
    folder, images = tiny_cifar
    x, y = data._read_cifar_batch(folder / "data_batch_2")
    np.testing.assert_array_equal(x, images["data_batch_2"][0])  # pixel order H, W, RGB
    np.testing.assert_array_equal(y, images["data_batch_2"][1])
    d = data.cifar10(folder)
    assert d.x_train.shape == (20, 32, 32, 3) and d.x_test.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(d.y_train[4:8], images["data_batch_2"][1])
    # Per-channel normalization with the training set's statistics.
    raw = np.concatenate([images[n][0] for n in data.CIFAR10_TRAIN]).astype(np.float64)
    mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
    np.testing.assert_allclose(d.x_train, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    test_raw = images["test_batch"][0].astype(np.float64)
    np.testing.assert_allclose(d.x_test, (test_raw - mean) / std, rtol=1e-5, atol=1e-5)


def test_cifar10_folder_from_the_parent_and_from_the_environment(tiny_cifar, monkeypatch):
    folder, _ = tiny_cifar
    assert data.cifar10(folder.parent).x_train.shape[0] == 20  # the folder that holds it
    monkeypatch.setenv("CIFAR10_DIR", str(folder))
    assert data.cifar10().x_test.shape[0] == 3
    assert data.load("cifar10").name == "cifar10"


def test_missing_cifar10_folder_or_file_is_one_line(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_DIR", raising=False)
    with pytest.raises(ValueError) as e:
        data.cifar10(tmp_path / "nowhere")
    msg = str(e.value)
    assert "nowhere" in msg and data.CIFAR10_URL in msg and "\n" not in msg
    folder, _ = tiny_cifar
    (folder / "data_batch_3").unlink()
    (folder / "test_batch").unlink()
    with pytest.raises(ValueError, match="missing data_batch_3, test_batch in"):
        data.cifar10(folder)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "corrupt"),
        (b"not a pickle at all", "corrupt"),
        (pickle.dumps({b"labels": [1]}, protocol=2), "corrupt"),  # no data
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "3072"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}), "labels"),
    ],
)
def test_corrupt_cifar10_file_is_one_line_naming_it(tiny_cifar, content, match):
    folder, _ = tiny_cifar
    (folder / "data_batch_4").write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        data.cifar10(folder)
    assert "data_batch_4" in str(e.value) and "\n" not in str(e.value)


def test_truncated_cifar10_file_is_corrupt(tiny_cifar):
    folder, _ = tiny_cifar
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="test_batch.*corrupt"):
        data.cifar10(folder)


def test_a_pickle_that_would_run_code_is_refused(tiny_cifar, tmp_path):
    folder, _ = tiny_cifar
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="data_batch_1.*corrupt"):
        data.cifar10(folder)
    assert not marker.exists()


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_labels():
    d = data.synthetic(50, 10, shape=(9, 7, 2), num_classes=3, seed=1)
    assert d.x_train.shape == (50, 9, 7, 2) and d.x_test.shape == (10, 9, 7, 2)
    assert d.y_train.dtype == np.int32 and set(np.unique(d.y_train)) <= {0, 1, 2}
    np.testing.assert_array_equal(
        d.x_train, data.synthetic(50, 10, shape=(9, 7, 2), seed=1).x_train
    )
    with pytest.raises(ValueError, match="`n_train` must be an integer >= 1"):
        data.synthetic(0)
    with pytest.raises(ValueError, match="`shape`"):
        data.synthetic(4, shape=(8, 8))


# ----------------------------------------------------------------------------- augment


def test_augment_is_a_shifted_window_of_the_padded_image_maybe_mirrored(key):
    x = jax.random.normal(key, (16, 6, 5, 2))
    out = np.asarray(jax.jit(data.augment)(jax.random.key(3), x))
    assert out.shape == x.shape
    padded = np.pad(np.asarray(x), ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips = 0
    for i in range(16):
        windows = [padded[i, a : a + 6, b : b + 5] for a in range(9) for b in range(9)]
        plain = any(np.array_equal(out[i], w) for w in windows)
        mirrored = any(np.array_equal(out[i], w[:, ::-1]) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 0 < flips < 16
    # Same key, same result; pad 0 without flips is the identity.
    np.testing.assert_array_equal(jax.jit(data.augment)(jax.random.key(3), x), out)
    same = data.augment(key, x, pad=0, flip=False)
    np.testing.assert_array_equal(same, x)
    assert jnp.issubdtype(out.dtype, jnp.floating)


def test_standardize_features_gives_each_training_feature_mean_0_and_std_1():
    x, _ = data.digits()
    train, test = data.standardize_features(x[:1000], x[1000:])
    varying = x[:1000].std(axis=0) > 0
    # The digits are float32: mean 0 and std 1 to float32 rounding over 1000 rows (the
    # rarely-lit pixels, values up to 30 standard deviations, lose most: 2e-5).
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0)[varying], 1.0, rtol=1e-4)
    assert not varying.all() and np.all(train[:, ~varying] == 0)  # constant border pixels
    # The test rows move by the training statistics, not their own.
    col = int(np.flatnonzero(varying)[0])
    ref = x[:1000, col].astype(np.float64)
    expected = (x[1000:, col] - ref.mean()) / ref.std()  # in float64; float32 sums: 1e-5
    np.testing.assert_allclose(test[:, col], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="`x_train` must have shape"):
        data.standardize_features(x[:0])
