"""checkpoints.tree_digest against hashlib over the same bytes, whole and in slices, and
against the digest a checkpoint of the state records."""

import hashlib

import jax.numpy as jnp
import numpy as np

from sandbox import checkpoints


def _reference(leaves) -> str:
    """The digest every saved checkpoint records: 0-d leaves as shape (1,)."""
    h = hashlib.sha256()
    for leaf in leaves:
        a = np.ascontiguousarray(leaf)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_tree_digest_is_the_sha256_of_dtypes_shapes_and_bytes_in_tree_order():
    big = np.arange((1 << 22) + 5, dtype=np.float32)  # 16 MiB + 20 bytes: hashed in 2 slices
    tree = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": (np.int32(7), big), "c": np.zeros((0, 4))}
    leaves = [tree["a"], tree["b"][0], big, tree["c"]]
    assert checkpoints.tree_digest(tree) == _reference(leaves)
    assert _reference([np.float32(1)]) == _reference([np.ones(1, np.float32)])  # 0-d as (1,)
    # Another dtype or shape of the same bytes is another digest.
    assert checkpoints.tree_digest({"x": np.zeros(4, np.float32)}) != checkpoints.tree_digest(
        {"x": np.zeros(4, np.int32)}
    )
    assert checkpoints.tree_digest({"x": np.zeros((2, 2))}) != checkpoints.tree_digest(
        {"x": np.zeros(4)}
    )
