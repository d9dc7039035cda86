"""Data sets for the network studies: scikit-learn's bundled digits (no download needed)."""

import numpy as np


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
