"""Checkpoints of a training run: orbax folders per epoch, tied to the run and to digests.

`Checkpoints(folder)` keeps the checkpoints of one run of `train.fit` under `folder`, one
per epoch (epoch 0 is the initialization). A checkpoint records the run it belongs to
(`run_identity`: model, training config, data and a digest of the data), the SHA-256 of its
arrays (`tree_digest`) and, once orbax has finished writing it, the SHA-256 of each of its
files. A checkpoint from a different run, or one whose files or arrays do not match their
digests, is refused with a one-line ValueError that names it, before anything is read through
orbax. Orbax writes each checkpoint into a temporary folder and renames it when complete, so
a run killed while saving leaves no checkpoint that looks complete.

`load_checkpoint(folder, epoch)` reads a saved epoch without the model at hand (the landscape
study's PCA path, `surface.checkpoint_path`). `tree_digest` is the one SHA-256 of a pytree's
arrays.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sandbox import results
from sandbox.data import Dataset
from sandbox.types import PyTree

FORMAT = 1  # version of the checkpoint layout


def run_identity(model: Any, cfg: Any, dataset: Dataset) -> dict:
    """What a checkpoint must match to be resumed: model (a flax Module), training config
    (`train.TrainConfig`), data."""
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.name not in ("parent", "name")
    }
    train_fields = dataclasses.asdict(cfg)
    if train_fields["precision"] == "float32":
        # Runs from before the precision option are float32 runs: their checkpoints still
        # belong to the same run. Any other precision is part of the identity.
        del train_fields["precision"]
    identity = {
        "model": {"class": type(model).__name__, **fields},
        "train": train_fields,
        "data": {
            "name": dataset.name,
            "n_train": len(dataset.x_train),
            "n_test": len(dataset.x_test),
            "image_shape": list(dataset.image_shape),
            "num_classes": dataset.num_classes,
            "sha256": _data_digest(dataset),
        },
    }
    return json.loads(json.dumps(identity))  # as it reads back from the checkpoint


def _data_digest(dataset: Dataset) -> str:
    h = hashlib.sha256()
    for a in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def tree_digest(tree: PyTree) -> str:
    """SHA-256 (hex) of every leaf's dtype, shape and bytes, in tree order.

    Leaves on a device are fetched one at a time and hashed in slices of at most 16 MiB, so
    a large pytree never needs a second copy of itself on the host. The bytes hashed are
    those of `str(dtype)` and the shape tuple, then the C-ordered data; a 0-d leaf counts as
    shape (1,) (`np.ascontiguousarray`), as the checkpoints saved so far recorded it.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        a = np.ascontiguousarray(jax.device_get(leaf))
        h.update(f"{a.dtype}{a.shape}".encode())
        flat = a.reshape(-1)
        step = max(1, (1 << 24) // max(1, a.dtype.itemsize))
        for lo in range(0, max(flat.size, 1), step):
            h.update(np.ascontiguousarray(flat[lo : lo + step]).tobytes())
    return h.hexdigest()


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}={a!r} there, {b!r} here")
    return out


class Checkpoints:
    """Orbax checkpoints of one run under `folder`, one per epoch (the step number)."""

    def __init__(self, folder: Path, keep_last: int = 3, keep_epochs=(), *, read_only=False):
        import orbax.checkpoint as ocp  # imported late: it is slow to import

        self._ocp = ocp
        self.folder = Path(folder)
        if read_only:  # not orbax's read_only (which logs warnings), but nothing is written
            options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
        else:
            policies = ocp.checkpoint_managers
            keep = [policies.LatestN(max(1, keep_last))]
            if keep_epochs:
                keep.append(policies.CustomSteps(sorted({int(e) for e in keep_epochs})))
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,  # remove what a killed save left behind
                preservation_policy=policies.AnyPreservationPolicy(keep),
                create=True,
            )
        self.manager = ocp.CheckpointManager(self.folder.resolve(), options=options)

    def epochs(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, epoch: int, state: dict, identity: dict) -> None:
        ocp = self._ocp
        meta = {"format": FORMAT, "epoch": epoch, "run": identity, "sha256": tree_digest(state)}
        self.manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.manager.wait_until_finished()
        # Digests of the files as written, checked before any later read: a damaged file
        # is then refused with one line instead of failing inside orbax's readers.
        step = self.folder / str(epoch)
        results.write_json(step / DIGESTS, _file_digests(step))

    def verify(self, epoch: int) -> None:
        """ValueError unless the files of `epoch` match the digests written after saving."""
        step = self.folder / str(epoch)
        try:
            expected = json.loads((step / DIGESTS).read_text())
        except FileNotFoundError:
            return  # killed right after orbax finished: the array hash still guards the load
        except (OSError, ValueError) as e:
            raise ValueError(f"checkpoint {str(step)!r} is corrupt: {_reason(e)}") from None
        actual = _file_digests(step)
        bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
        if bad:
            raise ValueError(
                f"checkpoint {str(step)!r} is corrupt: {len(bad)} file(s) changed or missing "
                f"({bad[0]}); delete it to resume from the one before"
            )

    def meta(self, epoch: int, identity: dict | None = None) -> dict:
        """The metadata saved with `epoch`; ValueError unless it belongs to `identity`."""
        ocp = self._ocp
        where = self.folder / str(epoch)
        self.verify(epoch)
        try:
            meta = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = meta["meta"]
        except Exception as e:
            raise ValueError(f"checkpoint {str(where)!r} is corrupt: {_reason(e)}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"checkpoint {str(where)!r} is not a sandbox.train checkpoint")
        if identity is not None and meta.get("run") != identity:
            diff = _differences(meta.get("run") or {}, identity)
            raise ValueError(
                f"checkpoint {str(where)!r} is from a different run ({'; '.join(diff[:4])}); "
                "use another output folder or delete that one"
            )
        return meta

    def restore(self, epoch: int, like: dict | None, identity: dict | None = None) -> dict:
        """The state saved at `epoch` (structured like `like`; None: as saved, numpy arrays),
        checked against its files' digests and its arrays' hash."""
        return self._restore(epoch, like, identity)[0]

    def _restore(self, epoch: int, like: dict | None, identity: dict | None) -> tuple[dict, dict]:
        ocp = self._ocp
        where = self.folder / str(epoch)
        meta = self.meta(epoch, identity)
        abstract = None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            state = self.manager.restore(
                epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:
            raise ValueError(f"checkpoint {str(where)!r} is corrupt: {_reason(e)}") from None
        if tree_digest(state) != meta.get("sha256"):
            raise ValueError(
                f"checkpoint {str(where)!r} is corrupt: its arrays do not match their SHA-256; "
                "delete it to resume from the one before"
            )
        return state, meta

    def close(self) -> None:
        self.manager.close()


DIGESTS = "sandbox_sha256.json"  # in each checkpoint folder: file -> SHA-256


def _file_digests(step: Path) -> dict[str, str]:
    """SHA-256 of every file of the checkpoint's items (state/ and meta/)."""
    out = {}
    for item in ("state", "meta"):
        for f in sorted((step / item).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(step))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def load_checkpoint(folder: Path | str, epoch: int | None = None) -> tuple[dict, dict]:
    """(state as nested dicts of numpy arrays, meta) of a saved epoch (default the last),
    checked as a resume checks it (its files' digests, its arrays' hash); writes nothing.

    For readers that do not have the model at hand (e.g. the landscape study's PCA path).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no checkpoints in {str(folder)!r}")
    ckpts = Checkpoints(folder, read_only=True)
    try:
        epochs = ckpts.epochs()
        if not epochs:
            raise ValueError(f"no checkpoints in {str(folder)!r}")
        epoch = epochs[-1] if epoch is None else epoch
        if epoch not in epochs:
            raise ValueError(f"no checkpoint for epoch {epoch} in {str(folder)!r}; have {epochs}")
        state, meta = ckpts._restore(epoch, None, None)
    finally:
        ckpts.close()
    return jax.device_get(state), meta
