"""Data sets for the network studies: scikit-learn's bundled digits (no download needed),
CIFAR-10 from a local folder, synthetic images.

`digits()` returns the 1797 digits as flat vectors in [0, 1] with their labels (for MLPs).
The image loaders return a `Dataset` of NHWC float32 images, standardized per channel with
the training set's mean and standard deviation, and int32 labels:

- `digits_dataset()`: the same 1797 digits as 8x8x1 images (the default data of the ResNet
  studies), split into train and test by a fixed seeded, stratified draw.
- `cifar10(data_dir)`: the 50,000 + 10,000 32x32 RGB images of the python version of
  CIFAR-10, read from a local `cifar-10-batches-py` folder (`data_dir` or the CIFAR10_DIR
  variable). A missing or unreadable file is one `ValueError` line that names it and says
  where the data set comes from.
- `synthetic(...)`: Gaussian images of any shape, labelled by a random linear teacher (so
  they can be learned), for tests and benchmarks.

`augment(key, x)` is the CIFAR augmentation (random crop after 4-pixel zero padding, random
horizontal flip) in JAX, so it runs on the device inside a jitted training step.
"""

import os
import pickle
from pathlib import Path
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sandbox import checks
from sandbox.types import Array, Key

NAMES = ("digits", "cifar10", "synthetic")
Name = Literal[NAMES]  # a config field naming a data set
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class Dataset(NamedTuple):
    """Train and test images (NHWC float32, standardized) and int32 labels."""

    name: str
    x_train: np.ndarray  # [N, H, W, C]
    y_train: np.ndarray  # [N]
    x_test: np.ndarray  # [M, H, W, C]
    y_test: np.ndarray  # [M]
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def load(name: str, *, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    """The image data set `name` (one of NAMES) with its default sizes."""
    if name == "digits":
        return digits_dataset(seed=seed)
    if name == "cifar10":
        return cifar10(data_dir)
    if name == "synthetic":
        return synthetic(seed=seed)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(NAMES)}")


# ----------------------------------------------------------------------------- digits


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 handwritten digits that ship inside scikit-learn.

    Returns:
      (x_Nx64, y_N): pixel intensities scaled from 0..16 to [0, 1] as float32, and the
      labels 0..9 as int32, in scikit-learn's order (N = 1797).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError(
            "the digits data set needs scikit-learn: pip install scikit-learn "
            "(it ships the data; nothing is downloaded)"
        ) from None
    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float32) / 16.0
    y = np.asarray(bunch.target, dtype=np.int32)
    return x, y


def digits_dataset(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The digits as [N, 8, 8, 1] images, standardized; a stratified seeded split.

    Args:
      test_fraction: share of each class held out for testing (0.2: 1437 train, 360 test).
      seed: seed of the split.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
    x_flat, y = digits()
    x = x_flat.reshape(-1, 8, 8, 1)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: int(round(test_fraction * len(idx)))]] = True
    return _standardized("digits", x[~test], y[~test], x[test], y[test], 10)


# ----------------------------------------------------------------------------- CIFAR-10


def cifar10_dir(data_dir: str | Path | None = None) -> Path:
    """The folder to read: `data_dir`, else $CIFAR10_DIR, else ./data/cifar-10-batches-py.

    A folder that holds a `cifar-10-batches-py` subfolder stands for that subfolder.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get("CIFAR10_DIR") or Path("data") / CIFAR10_FOLDER
    path = Path(data_dir).expanduser()
    if (path / CIFAR10_FOLDER).is_dir():
        path = path / CIFAR10_FOLDER
    return path


def cifar10(data_dir: str | Path | None = None) -> Dataset:
    """CIFAR-10 (python version) from a local folder; see `cifar10_dir` for where.

    Raises:
      ValueError: one line naming the folder or the file that is missing or corrupt, and
        where the data set comes from.
    """
    path = cifar10_dir(data_dir)
    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
    missing = [n for n in names if not (path / n).is_file()]
    if missing:
        what = "folder" if not path.is_dir() else f"{', '.join(missing)} in"
        raise ValueError(
            f"CIFAR-10 not found: missing {what} {str(path)!r}; download the python version "
            f"(cifar-10-python.tar.gz) from {CIFAR10_URL}, unpack it and pass --data-dir "
            f"or set CIFAR10_DIR to its {CIFAR10_FOLDER} folder"
        )
    train = [_read_cifar_batch(path / n) for n in CIFAR10_TRAIN]
    x_test, y_test = _read_cifar_batch(path / CIFAR10_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _standardized("cifar10", x_train, y_train, x_test, y_test, 10)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays only: the CIFAR batches need no more,
    and a crafted file in the data folder then cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        if module == "numpy.core.multiarray":  # NumPy 2 renamed numpy.core to numpy._core
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> uint8 images [N, 32, 32, 3] and int32 labels [N]."""
    try:
        with open(file, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as e:  # truncated, not a pickle, wrong keys, ...
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise ValueError(
            f"CIFAR-10 file {str(file)!r} is corrupt ({reason}); download it again "
            f"from {CIFAR10_URL}"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(
            f"CIFAR-10 file {str(file)!r} is corrupt: expected data [N, 3072] and N labels, "
            f"got {data.shape} and {labels.shape}; download it again from {CIFAR10_URL}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10 file {str(file)!r} is corrupt: labels outside 0..9")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R, G, B planes
    return np.ascontiguousarray(x), labels.astype(np.int32)


# ----------------------------------------------------------------------------- synthetic


def synthetic(
    n_train: int = 1024,
    n_test: int = 256,
    *,
    shape: tuple[int, ...] = (32, 32, 3),
    num_classes: int = 10,
    seed: int = 0,
) -> Dataset:
    """Standard-normal images of `shape` (H, W, C), labelled by a random linear teacher."""
    for name, v in (("n_train", n_train), ("n_test", n_test), ("num_classes", num_classes)):
        checks.integer(name, v, minimum=1)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"`shape` must be (H, W, C) of positive sizes, got {shape}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_train + n_test, *shape), dtype=np.float32)
    teacher = rng.standard_normal((int(np.prod(shape)), num_classes), dtype=np.float32)
    y = np.argmax(x.reshape(len(x), -1) @ teacher, axis=1).astype(np.int32)
    return _standardized(
        "synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes
    )


# ----------------------------------------------------------------------------- helpers


def _standardized(name, x_train, y_train, x_test, y_test, num_classes) -> Dataset:
    """Per-channel standardization with the training set's statistics (float64 sums)."""
    x_train = np.asarray(x_train, np.float32)
    mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = x_train.std(axis=(0, 1, 2), dtype=np.float64)
    std = np.where(std > 0, std, 1.0)

    def norm(x):
        return ((np.asarray(x, np.float64) - mean) / std).astype(np.float32)

    return Dataset(
        name,
        norm(x_train),
        np.asarray(y_train, np.int32),
        norm(x_test),
        np.asarray(y_test, np.int32),
        int(num_classes),
    )


def standardize_features(x_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each feature (column) of `x_train` and of `others` centred and scaled by the mean and
    standard deviation of that feature over `x_train`; a constant feature (the digits'
    border pixels) is only centred. For flat inputs [N, features] (an MLP's); images are
    standardized per channel by the loaders."""
    x_train = np.asarray(x_train)
    if x_train.ndim != 2 or not len(x_train):
        raise ValueError(f"`x_train` must have shape [N, features], N >= 1, got {x_train.shape}")
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return tuple((np.asarray(x) - mean) / std for x in (x_train, *others))


def augment(key: Key, x_BxHxWxC: Array, *, pad: int = 4, flip: bool = True) -> Array:
    """Random crop of each image after zero padding by `pad` pixels, and a random flip.

    Pure JAX (jit- and vmap-friendly): the CIFAR augmentation of He et al. 2016. On
    standardized images, zero padding is padding with the mean.
    """
    b, h, w, c = x_BxHxWxC.shape
    crop_key, flip_key = jax.random.split(key)
    offsets_Bx2 = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
    padded = jnp.pad(x_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    out = jax.vmap(crop)(padded, offsets_Bx2)
    if flip:
        flip_B = jax.random.bernoulli(flip_key, 0.5, (b,))
        out = jnp.where(flip_B[:, None, None, None], out[:, :, ::-1, :], out)
    return out
