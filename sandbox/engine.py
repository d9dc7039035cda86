"""The one chunked, sharded map under every batched computation, with resumable chunk stores.

`map_chunks(one, items, shared)` computes `one(item, shared)` for every item (a row of a pytree
of arrays with a leading axis N) and returns the outputs stacked along N. Sweeps of descent
runs, loss-surface grid points and the fractal's learning-rate grid all go through it:

- Fixed-shape chunks: N is cut into chunks of `chunk` items (the last one padded with copies
  of its first item), each a multiple of the device count, so one compilation serves every
  chunk, and every call with the same shapes and static configuration reuses it.
- Each chunk is split over the local devices (`jax.shard_map`, nothing communicated); a device
  vmaps `one` over its share, or `lax.map`s it `batch` items at a time. The next chunk is
  dispatched before the last one is copied back.
- Results are bitwise independent of the chunk size and of the device count: every item goes
  through the same vectorized loop body (per-device shares are multiples of `lane`, and of
  `batch` above it).
- `store=PATH`: every finished chunk is written to a zarr group at PATH as soon as it is back
  on the host, then marked done. The store records a digest of everything that determines
  the results (the jaxpr of `one` with its constants, the items, the shared inputs, the
  layout, and what the caller adds); called again with the same arguments, `map_chunks`
  computes only the chunks not marked done and returns arrays bitwise equal to an
  uninterrupted run. A store made by another computation is refused with one line naming
  what differs, and left untouched. With `lazy=True` the outputs come back as zarr arrays
  read on demand, so a map larger than memory never holds all its results at once.
- Several processes: after `jax.distributed.initialize()`, every process calls the same
  `map_chunks(..., store=SHARED_PATH)`; process p computes the missing chunks c with
  c % process_count == p on its own devices, then waits until the others have written
  theirs, and every process returns the whole result. A process that is killed and started
  again computes only its chunks that are not yet done.
"""

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from sandbox import checks

PyTree = Any
# Progress bars appear once a map has run this many seconds.
PROGRESS_AFTER_S = 3.0
# How often a process waiting for the chunks of other processes looks at the store.
POLL_S = 0.2
STORE_FORMAT = "sandbox.engine/1"


def map_chunks(
    one: Callable[[PyTree, PyTree], PyTree],
    items: PyTree,
    shared: PyTree = None,
    *,
    chunk: int | None = None,
    lane: int = 1,
    batch: int | None = None,
    store: Path | str | None | bool = None,
    identity: dict[str, str] | None = None,
    finish: Callable[[PyTree, int], PyTree] | None = None,
    lazy: bool = False,
    progress: bool | None = None,
    desc: str = "",
    unit: str = "item",
) -> PyTree:
    """`one(item, shared)` for every item, stacked along a leading axis N.

    Args:
      one: a pure, unbatched function of one item and the shared inputs; it returns a pytree
        of arrays. Keep its identity stable across calls (a module-level function or a cached
        closure): compilations are cached per `one`.
      items: a pytree of arrays (NumPy, or anything sliced like one, such as zarr arrays),
        each with the same leading axis N >= 1.
      shared: a pytree of arrays given whole to every item (replicated on every device).
      chunk: items per compiled call (default: N), rounded up to a multiple of
        `lane` x the local device count (and of `batch` above it).
      lane: every device's share of a chunk is a multiple of this many items.
      batch: items a device vectorizes at once (`lax.map`'s batch size); 1: one item at a
        time; None: the whole share in one vmap.
      store: a folder holding the finished chunks (see the module docstring); None: one
        under the folder of `stores_in` when inside one; False: none even there.
      identity: more parts of what determines the result, for the store's digest (strings).
      finish: `finish(outputs, start)` on the host, on each chunk's outputs (NumPy, rows
        start, start + 1, ...) before they are stored; it returns outputs of the same
        structure, shapes and dtypes.
      lazy: with `store`, return zarr arrays that are read on demand instead of NumPy.
      progress: a tqdm bar over the items (None: shown once the map has run a few seconds).
      desc, unit: the bar's label and unit.

    Returns:
      The pytree `one` returns, each leaf with the leading axis N (NumPy, or zarr if lazy).
    """
    n = _count(items)
    checks.integer("lane", lane, minimum=1)
    if batch is not None:
        checks.integer("batch", batch, minimum=1)
    store = _store_path(store, lazy)
    devices = jax.local_devices()
    chunk = round_chunk(
        n if chunk is None else checks.integer("chunk", chunk, minimum=1), len(devices), lane, batch
    )
    out_spec = _out_spec(one, items, shared)

    chunks = -(-n // chunk)
    store_ = None
    todo = list(range(chunks))
    if store is not None:
        parts = _identity(one, items, shared, out_spec, identity)
        if isinstance(store, _Root):  # inside `stores_in`: a store named by the computation
            key = json.dumps({"n": n, "identity": parts}, sort_keys=True).encode()
            store = store.path / hashlib.sha256(key).hexdigest()[:16]
        store_ = _Store.open(Path(store), parts, out_spec, n, chunk, len(devices), lane, batch)
        chunk = store_.chunk
        chunks = -(-n // chunk)
        todo = [c for c in range(chunks) if not store_.is_done(c)]
    pid, count = jax.process_index(), jax.process_count()
    mine = [c for c in todo if store_ is None or c % count == pid]

    bar = tqdm(
        total=n,
        initial=n - sum(_rows(c, chunk, n) for c in todo),
        unit=unit,
        desc=desc,
        file=sys.stderr,
        leave=False,
        disable=not progress if progress is not None else _OUTER_BARS > 0,
        delay=0 if progress else PROGRESS_AFTER_S,
    )
    with bar:
        pieces = _run(one, items, shared, mine, chunk, n, batch, finish, store_, bar)
        if store_ is not None:
            store_.wait_for_others(todo, bar, lambda c: _rows(c, chunk, n))
    if store_ is not None:
        return store_.read(lazy)
    if len(pieces) == 1:
        return pieces[0]
    return jax.tree.map(lambda *a: np.concatenate(a), *[pieces[c] for c in range(chunks)])


_STORE_ROOTS: list[Path] = []  # the folders of `stores_in`, innermost last


class _Root(NamedTuple):
    path: Path  # a store will be made under it, named by the computation's digest


def _store_path(store, lazy: bool):
    """The store of a map: its own folder, a `_Root` inside `stores_in`, or None."""
    if store is False:
        store = None
    elif store is None and _STORE_ROOTS:
        store = _Root(_STORE_ROOTS[-1])
    if lazy and store is None:
        raise ValueError("`lazy` needs a `store` to read the results from")
    return store


@contextlib.contextmanager
def stores_in(root: Path | str | None):
    """Inside this block every map without a `store` of its own keeps its chunks in a store
    under `root`, named by the digest of its computation (`<root>/<16 hex digits>`).

    What a study's `--store DIR` does: a run killed and started again with the same DIR
    computes only the chunks that are not yet done, and another computation gets a store of
    its own instead of being refused. `root=None` changes nothing.
    """
    if root is None:
        yield
        return
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"`store` {str(root)!r} is not a folder")
    _STORE_ROOTS.append(root)
    try:
        yield
    finally:
        _STORE_ROOTS.pop()


def _count(items: PyTree) -> int:
    """N, the leading axis every leaf of `items` shares (ValueError otherwise)."""
    leaves = jax.tree.leaves(items)
    if not leaves:
        raise ValueError("`items` must hold at least one array")
    n = int(leaves[0].shape[0]) if np.ndim(leaves[0]) else 0
    for leaf in leaves:
        if np.ndim(leaf) == 0 or leaf.shape[0] != n:
            shapes = [tuple(np.shape(a)) for a in leaves]
            raise ValueError(f"`items` must share a leading axis N, got shapes {shapes}")
    if n == 0:
        raise ValueError("`items` must hold at least one item (N >= 1)")
    return n


def _run(one, items, shared, mine, chunk, n, batch, finish, store_, progress_bar) -> dict:
    """Computes the chunks `mine`, the next dispatched while the last is copied back; each
    is finished, then stored (or kept: the returned {chunk index: outputs})."""
    devices = jax.local_devices()
    pieces = {}
    runner = _runner(one, len(devices), batch)
    sharding = NamedSharding(_mesh(tuple(devices)), P("items"))
    shared_dev = jax.device_put(shared, NamedSharding(_mesh(tuple(devices)), P()))
    pending = None
    for c in [*mine, None]:
        out = None
        if c is not None:
            part = jax.device_put(_chunk_of(items, c, chunk, n), sharding)
            out = runner(part, shared_dev)
        if pending is not None:  # copy back the last chunk while this one runs
            pc, pout = pending
            host = jax.tree.map(
                lambda a, pc=pc: np.asarray(a)[: _rows(pc, chunk, n)], jax.device_get(pout)
            )
            if finish is not None:
                host = finish(host, pc * chunk)
            if store_ is not None:
                store_.write(pc, host)
            else:
                pieces[pc] = host
            progress_bar.update(_rows(pc, chunk, n))
        pending = None if c is None else (c, out)
    return pieces


def bar(iterable, *, desc: str, unit: str = "cell", total: int | None = None):
    """A study-level progress bar over `iterable` (parts, cells of a table): shown once the
    work has run a few seconds, with the time left; while it runs, the engine's own bars
    stay hidden, so a person sees one bar, never a stack of them."""
    global _OUTER_BARS
    _OUTER_BARS += 1
    try:
        yield from tqdm(
            iterable,
            desc=desc,
            unit=unit,
            total=total,
            file=sys.stderr,
            leave=False,
            delay=PROGRESS_AFTER_S,
        )
    finally:
        _OUTER_BARS -= 1


_OUTER_BARS = 0  # how many study-level bars are open (`bar`)


def round_chunk(chunk: int, num_devices: int, lane: int = 1, batch: int | None = None) -> int:
    """Items per call: each device's share a multiple of `lane` (and of `batch` above it)."""
    per_device = -(-chunk // num_devices)
    per_device = -(-per_device // lane) * lane
    if batch and per_device > batch:
        per_device = -(-per_device // batch) * batch
    return per_device * num_devices


def _rows(c: int, chunk: int, n: int) -> int:
    return min(chunk, n - c * chunk)


def _chunk_of(items: PyTree, c: int, chunk: int, n: int) -> PyTree:
    """Rows [c * chunk, (c + 1) * chunk) of every leaf, the tail padded with its first row."""
    lo = c * chunk

    def part(a):
        p = np.asarray(a[lo : lo + chunk])
        if len(p) < chunk:
            p = np.concatenate([p, np.repeat(p[:1], chunk - len(p), axis=0)])
        return p

    return jax.tree.map(part, items)


def shape_key(tree: PyTree) -> tuple:
    """(treedef, leaves as ShapeDtypeStructs): a hashable key of a pytree's shapes and dtypes,
    for caching what is traced once per input shapes."""
    spec = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(
            np.shape(a), a.dtype if hasattr(a, "dtype") else np.result_type(a)
        ),
        tree,
    )
    leaves, treedef = jax.tree.flatten(spec)
    return treedef, tuple(leaves)


def _out_spec(one, items, shared) -> PyTree:
    """The shapes and dtypes `one` returns, traced once per `one` and input shapes."""
    item = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), items)
    return _traced_spec(one, *shape_key(item), *shape_key(shared))


@functools.lru_cache(maxsize=256)
def _traced_spec(one, tree_i, leaves_i, tree_s, leaves_s) -> PyTree:
    item, shared = jax.tree.unflatten(tree_i, leaves_i), jax.tree.unflatten(tree_s, leaves_s)
    try:
        return jax.eval_shape(one, item, shared)
    except (TypeError, ValueError, jax.errors.JAXTypeError) as e:
        raise ValueError(f"`one` cannot be traced on one item: {e}") from e


@functools.lru_cache(maxsize=8)
def _mesh(devices: tuple) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(devices), ("items",))


@functools.lru_cache(maxsize=256)
def _runner(one: Callable, num_devices: int, batch: int | None) -> Callable:
    """jit(shard_map(vmap or lax.map of `one`)); jit caches one compilation per shape."""

    def per_device(items, shared):
        rows = jax.tree.leaves(items)[0].shape[0]
        if batch is None or rows <= batch:
            return jax.vmap(one, in_axes=(0, None))(items, shared)
        if batch == 1:
            return jax.lax.map(lambda it: one(it, shared), items)
        return jax.lax.map(lambda it: one(it, shared), items, batch_size=batch)

    sharded = jax.shard_map(
        per_device,
        mesh=_mesh(tuple(jax.local_devices()[:num_devices])),
        in_specs=(P("items"), P()),
        out_specs=P("items"),
        # Items are independent: nothing is communicated, and values created inside `one`
        # need not be marked as varying over the item axis.
        check_vma=False,
    )
    return jax.jit(sharded)


# ----------------------------------------------------------------------------- the store


def _digest(tree: PyTree) -> str:
    """SHA-256 of the dtypes, shapes and bytes of every leaf (read chunk by chunk)."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        shape = tuple(np.shape(leaf))
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        h.update(f"{dtype.str}{shape}".encode())
        if isinstance(leaf, jax.Array):
            leaf = np.asarray(jax.device_get(leaf))
        step = max(1, (1 << 24) // max(1, dtype.itemsize * int(np.prod(shape[1:], dtype=int))))
        rows = shape[0] if shape else 1
        for lo in range(0, rows, step):
            a = np.ascontiguousarray(leaf[lo : lo + step] if shape else leaf)
            h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def _identity(one, items, shared, out_spec, extra) -> dict[str, str]:
    """Digests of what the results are a function of, part by part (for a useful error)."""
    item = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), items)
    closed = jax.make_jaxpr(one)(item, shared)
    fn = hashlib.sha256(str(closed.jaxpr).encode())
    fn.update(_digest(closed.consts).encode())
    parts = {"function": fn.hexdigest()[:16]}
    for label, tree in (("items", items), ("shared", shared)):
        if isinstance(tree, dict):  # one digest per entry, so an error can name it
            parts.update({f"{label}.{k}": _digest(v) for k, v in sorted(tree.items())})
        else:
            parts[label] = _digest(tree)
    parts["outputs"] = hashlib.sha256(repr(out_spec).encode()).hexdigest()[:16]
    for k, v in (extra or {}).items():
        parts[k] = str(v)
    return parts


class _Store:
    """A zarr group of the outputs (one zarr chunk per engine chunk) and done markers."""

    def __init__(self, path: Path, meta: dict, out_spec: PyTree):
        self.path = path
        self.meta = meta
        self.chunk = meta["chunk"]
        self.n = meta["n"]
        self.out_spec = out_spec
        self.names = [_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_spec)[0]]
        self._group = None

    @classmethod
    def open(cls, path, parts, out_spec, n, chunk, num_devices, lane, batch) -> "_Store":
        meta_path = path / "engine.json"
        if not meta_path.exists():
            if path.exists() and any(path.iterdir()):
                raise ValueError(
                    f"`store` {str(path)!r} is a folder that is not an engine store; "
                    "give a new or empty path"
                )
            meta = {"format": STORE_FORMAT, "n": n, "chunk": chunk, "identity": parts}
            _create(path, meta, out_spec)
        try:
            meta = json.loads(meta_path.read_text())
            saved = meta["identity"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"`store` {str(path)!r} has an unreadable engine.json") from None
        if meta.get("format") != STORE_FORMAT:
            raise ValueError(f"`store` {str(path)!r} is not a {STORE_FORMAT} store")
        differ = sorted(set(parts) ^ set(saved) | {k for k in parts if saved.get(k) != parts[k]})
        if meta["n"] != n:
            differ = ["number of items", *differ]
        if differ:
            raise ValueError(
                f"`store` {str(path)!r} holds another computation (different "
                f"{', '.join(differ)}); use another path or delete that one"
            )
        if round_chunk(meta["chunk"], num_devices, lane, batch) != meta["chunk"]:
            raise ValueError(
                f"`store` {str(path)!r} has chunks of {meta['chunk']} items, which "
                f"{num_devices} devices cannot split evenly; resume with a device count that "
                "divides it"
            )
        return cls(path, meta, out_spec)

    def group(self):
        import zarr

        if self._group is None:
            self._group = zarr.open_group(self.path / "arrays.zarr", mode="r+")
        return self._group

    def is_done(self, c: int) -> bool:
        return (self.path / "done" / str(c)).exists()

    def write(self, c: int, outputs: PyTree) -> None:
        g = self.group()
        lo = c * self.chunk
        for name, a in zip(self.names, jax.tree.leaves(outputs), strict=True):
            g[name][lo : lo + len(a)] = a
        # The marker goes last, atomically: a chunk killed halfway is simply computed again.
        marker = self.path / "done" / str(c)
        fd, tmp = tempfile.mkstemp(dir=marker.parent, prefix=f".{c}.")
        os.close(fd)
        os.replace(tmp, marker)

    def wait_for_others(self, todo: list[int], bar, rows: Callable[[int], int]) -> None:
        left = [c for c in todo if not self.is_done(c)]
        if left:
            bar.set_description("waiting for the chunks of other processes")
        while left:
            time.sleep(POLL_S)
            now = [c for c in left if not self.is_done(c)]
            bar.update(sum(rows(c) for c in left if c not in now))
            left = now

    def read(self, lazy: bool) -> PyTree:
        import zarr

        g = zarr.open_group(self.path / "arrays.zarr", mode="r")
        arrays = [g[name] if lazy else g[name][...] for name in self.names]
        return jax.tree.unflatten(jax.tree.structure(self.out_spec), arrays)


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _create(path: Path, meta: dict, out_spec: PyTree) -> None:
    """Builds the empty store in a temporary folder and renames it into place (atomic: of
    several processes creating the same store at once, one wins and the others open it)."""
    import zarr

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        g = zarr.open_group(tmp / "arrays.zarr", mode="w")
        for p, spec in jax.tree_util.tree_flatten_with_path(out_spec)[0]:
            g.create_array(
                _name(p),
                shape=(meta["n"], *spec.shape),
                chunks=(meta["chunk"], *spec.shape),
                dtype=spec.dtype,
                fill_value=0,
            )
        (tmp / "done").mkdir()
        (tmp / "engine.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:  # replaces an empty folder; fails on a store another process just made
            os.rename(tmp, path)
        except OSError:
            if not (path / "engine.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
