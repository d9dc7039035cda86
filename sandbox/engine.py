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
- `store=PATH`: every finished chunk is written to a zarr group at PATH as soon as it is back on the
  host, read back, and marked done by a marker holding the checksums of its bytes, salted with the
  store's identity and the chunk's index (one atomic rename). The store records a digest of
  everything that determines the results (the jaxpr of `one` with its constants, the items, the
  shared inputs, the outputs' shapes, and what the caller adds) and the layout (device count and
  platform, lane, batch); called again with the same arguments, `map_chunks` computes only the
  chunks not done and returns arrays bitwise equal to an uninterrupted run. Every chunk is checked
  against its checksums before it is returned: a missing, swapped, truncated or garbled chunk, or a
  marker without its data (a chunk swapped with its marker, or copied in from another store,
  included), is computed again (one line on stderr says which). A store of another computation or
  layout, a damaged engine.json or zarr metadata, a file, or a store that cannot be written while
  chunks are missing is refused with one ValueError naming the store and what is wrong, before any
  work, and left untouched. With `lazy=True` the outputs come back as zarr arrays read on demand, so
  a map larger than memory never holds all its results at once.
- Any number of jobs (processes, on any hosts sharing the folder) may run the same
  `map_chunks(..., store=SHARED_PATH)` at once: each claims chunks by leases (`_Claims`),
  computes and marks them, and takes over the chunks of a job whose lease expired (`lease`
  seconds without renewal), so no job waits without bound on another; every job returns the
  whole result, bitwise equal to one job's (a chunk's bits depend only on the store's
  identity and layout).
"""

import contextlib
import functools
import hashlib
import itertools
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from sandbox import checkpoints, checks, results

PyTree = Any
# Progress bars appear once a map has run this many seconds.
PROGRESS_AFTER_S = 3.0
# Every bar of the engine: on stderr, gone once its work is done.
_tqdm = functools.partial(tqdm, file=sys.stderr, leave=False)
# How often a job whose remaining chunks are all leased by other jobs looks at the store again.
POLL_S = 0.2
# Seconds a chunk's lease lasts unless its holder renews it (every quarter of it): what a job
# killed while computing costs the others in waiting, at most.
LEASE_S = 60.0
# A lease is renewed for at most this many lease lengths: a job hung inside one chunk (alive,
# its renewal thread still running) does not hold that chunk from the others forever.
RENEW_MAX = 100
STORE_FORMAT = "sandbox.engine/3"  # 3: markers' checksums salted with store and chunk
# Formats a store keeps when it is resumed or read: a format-2 store's markers hold its
# chunks' checksums unsalted (it does not find a chunk moved with its marker).
READ_FORMATS = ("sandbox.engine/2", STORE_FORMAT)


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
    lease: float | None = None,
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
      lease: with `store`, seconds a claim on a chunk lasts unless renewed (default
        `LEASE_S`): how long other jobs wait before they take over the chunks of a job
        that died.

    Returns:
      The pytree `one` returns, each leaf with the leading axis N (NumPy, or zarr if lazy).
    """
    n = _count(items)
    checks.integer("lane", lane, minimum=1)
    if batch is not None:
        checks.integer("batch", batch, minimum=1)
    store = _store_path(store, lazy)
    lease = LEASE_S if lease is None else checks.positive("lease", lease)
    devices = jax.local_devices()
    chunk = round_chunk(
        n if chunk is None else checks.integer("chunk", chunk, minimum=1), len(devices), lane, batch
    )
    out_spec = _out_spec(one, items, shared)
    bar = functools.partial(
        _tqdm,
        total=n,
        unit=unit,
        desc=desc,
        disable=not progress if progress is not None else _OUTER_BARS > 0,
        delay=0 if progress else PROGRESS_AFTER_S,
    )
    if store is None:
        chunks = -(-n // chunk)
        with bar() as b:
            pieces = _run(one, items, shared, range(chunks), chunk, n, batch, finish, None, b)
        if len(pieces) == 1:
            return pieces[0]
        return jax.tree.map(lambda *a: np.concatenate(a), *[pieces[c] for c in range(chunks)])

    parts = _identity(one, items, shared, out_spec, identity)
    layout = _layout(devices, lane, batch)
    if isinstance(store, _Root):  # inside `stores_in`: a store named by the computation
        key = json.dumps({"n": n, "identity": parts, "layout": layout}, sort_keys=True).encode()
        store = store.path / hashlib.sha256(key).hexdigest()[:16]
    store_ = _Store.open(Path(store), parts, out_spec, n, chunk, layout)
    with bar() as b:
        _run_stored(one, items, shared, store_, batch, finish, lease, b)
    return store_.read(lazy)


def _run_stored(one, items, shared, store_: "_Store", batch, finish, lease_s, bar) -> None:
    """Computes a store's missing chunks with any number of other jobs: checks the chunks
    marked done (those that fail are computed again), then claims chunks by leases until
    every one is done, waiting on other jobs' chunks only while their leases are live."""
    n, chunk, chunks = store_.n, store_.chunk, store_.chunks
    why_not = None
    done = store_.done()
    bad = store_.check(done)
    missing = bad or len(done) < chunks
    if missing:
        why_not = store_.writable()
        if why_not is not None and not bad:
            raise ValueError(
                f"`store` {str(store_.path)!r} cannot be written ({why_not}) and "
                f"{chunks - len(done)} of its {chunks} chunks are not computed"
            )
    if bad:
        store_.unmark(bad, why_not is None)
    if not missing:
        bar.update(n)
        return
    # In order: jobs that start together and race for a chunk lose nothing but a failed link.
    order = list(range(chunks))
    for _attempt in range(3):
        with _Claims(store_, lease_s) as claims:

            def claimed():
                while True:  # until no chunk is left to claim
                    done, current = store_.done(), claims.current()
                    bar.n = sum(store_.rows(c) for c in done)
                    bar.set_postfix_str(f"{len(done)}/{chunks} chunks", refresh=False)
                    # Every lease is looked at in every pass (so a dead job's leases are
                    # seen to stop changing from the start), and expired ones come first.
                    stale = claims.stale(current, done)
                    free = [c for c in order if c not in current and c not in done]
                    open_ = [c for c in [*sorted(stale), *free] if c not in claims.held]
                    if claims.held and len(open_) < 2:
                        # The next chunk while ours is still computing: not the last one
                        # open, which another job may be idle for. Ours first, then ask.
                        yield None
                        continue
                    for c in open_:
                        if not claims.claim(c, current, stale):
                            continue
                        if store_.is_done(c):  # finished by another job since the listing
                            claims.release(c)
                            continue
                        yield c
                        break
                    else:
                        return

            def stored(c, host):
                if not store_.is_done(c):  # another job may have finished it meanwhile
                    store_.write(c, host)
                claims.release(c)

            while True:
                todo = claimed()
                first = next(todo, None)
                if first is not None:  # (the shared inputs go to the devices only then)
                    todo = itertools.chain([first], todo)
                    _run(one, items, shared, todo, chunk, n, batch, finish, stored, bar)
                if len(store_.done()) == chunks:
                    break
                time.sleep(POLL_S)  # the rest is leased by live jobs (or soon expires)
        bad = store_.check(set(range(chunks)) - store_.verified)
        if not bad:
            bar.n = n
            return
        store_.unmark(bad, True)
    raise ValueError(
        f"`store` {str(store_.path)!r}: chunks {sorted(bad)} fail verification again and "
        "again (another program writing there?)"
    )


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
    its own instead of being refused. `root=None` changes nothing. A `root` that is a file or
    cannot be written is refused on entry, before the block does any work (it is made if
    missing).
    """
    if root is None:
        yield
        return
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"`store` {str(root)!r} is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        _probe(root)
    except OSError as e:
        raise ValueError(f"`store` {str(root)!r} cannot be written: {e.strerror or e}") from None
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


def _run(one, items, shared, chunks, chunk, n, batch, finish, stored, progress_bar) -> dict:
    """Computes the chunks `chunks` (any iterable, consumed one at a time; None: none to
    dispatch before the last one is finished), the next dispatched while the last is copied
    back; each is finished, then handed to `stored(c, outputs)` (or kept: the returned
    {chunk index: outputs})."""
    devices = jax.local_devices()
    pieces = {}
    runner = _runner(one, len(devices), batch)
    sharding = NamedSharding(_mesh(tuple(devices)), P("items"))
    shared_dev = jax.device_put(shared, NamedSharding(_mesh(tuple(devices)), P()))
    pending = None
    todo = iter(chunks)
    end = object()
    while True:
        c = next(todo, end)
        out = None
        if c is not end and c is not None:
            part = jax.device_put(_chunk_of(items, c, chunk, n), sharding)
            out = runner(part, shared_dev)
        if pending is not None:  # copy back the last chunk while this one runs
            pc, pout = pending
            host = jax.tree.map(
                lambda a, pc=pc: np.asarray(a)[: _rows(pc, chunk, n)], jax.device_get(pout)
            )
            if finish is not None:
                host = finish(host, pc * chunk)
            if stored is not None:
                stored(pc, host)
            else:
                pieces[pc] = host
            progress_bar.update(_rows(pc, chunk, n))
        if c is end:
            return pieces
        pending = None if c is None else (c, out)


def bar(
    iterable,
    *,
    desc: str,
    unit: str = "cell",
    total: int | None = None,
    disable: bool | None = None,
):
    """A study-level progress bar over `iterable` (parts, cells of a table): shown once the
    work has run a few seconds, with the time left; while it runs, the engine's own bars
    stay hidden, so a person sees one bar, never a stack of them.

    `disable=True` (a study's --no-progress) shows no bar, and every `bar` opened inside
    this one is silent too unless it says `disable=False`; None (the default): silent
    exactly when an enclosing bar was disabled."""
    global _OUTER_BARS, _SILENT_BARS
    silent = bool(disable) if disable is not None else _SILENT_BARS > 0
    _OUTER_BARS += 1
    _SILENT_BARS += silent
    try:
        yield from _tqdm(
            iterable, desc=desc, unit=unit, total=total, delay=PROGRESS_AFTER_S, disable=silent
        )
    finally:
        _OUTER_BARS -= 1
        _SILENT_BARS -= silent


_OUTER_BARS = 0  # how many study-level bars are open (`bar`)
_SILENT_BARS = 0  # how many of them were disabled: the bars opened inside stay silent


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


def _probe(folder: Path) -> None:
    """Writes and removes an empty file in `folder`: OSError unless files can be made there."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe.")
    os.close(fd)
    os.unlink(tmp)


def _digest(tree: PyTree) -> str:
    """The first 16 hex digits of the pytree digest that checkpoints also use."""
    return checkpoints.tree_digest(tree)[:16]


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


def _layout(devices: list, lane: int, batch: int | None) -> dict:
    """What, besides the identity, decides a chunk's bits: the devices that split it (XLA
    compiles a one-device program differently) and the per-device vector blocks."""
    flags = os.environ.get("XLA_FLAGS", "")
    width = next(
        (
            f.split("=", 1)[1]
            for f in flags.split()
            if f.startswith("--xla_cpu_prefer_vector_width")
        ),
        None,
    )
    return {
        "devices": len(devices),
        "platform": devices[0].platform,
        "kind": devices[0].device_kind,
        "cpu_vector_width": width if devices[0].platform == "cpu" else None,
        "lane": lane,
        "batch": batch,
    }


def _checksums(outputs: list[np.ndarray], salt: str) -> list[str]:
    """SHA-256 (first 32 hex digits) of `salt` and each array's dtype, shape and bytes."""
    sums = []
    for a in outputs:
        a = np.ascontiguousarray(a)
        h = hashlib.sha256(f"{salt}{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
        sums.append(h.hexdigest()[:32])
    return sums


class _Store:
    """A chunk store: engine.json (what it holds), arrays.zarr (one zarr chunk per engine
    chunk), done/<c> (a chunk's marker: the checksums of its bytes, written atomically after
    them) and leases/<c>.<epoch> (claims of chunks being computed, see `_Claims`)."""

    def __init__(self, path: Path, meta: dict, out_spec: PyTree):
        self.path = path
        self.meta = meta
        self.chunk = meta["chunk"]
        self.n = meta["n"]
        self.chunks = -(-self.n // self.chunk)
        self.out_spec = out_spec
        self.names = _names(out_spec)
        self.verified: set[int] = set()  # chunks whose bytes matched their marker
        self._group = None
        # Checksums hash what the chunk is, not only its bytes: a chunk swapped together with
        # its marker, or copied in from a store of other inputs, fails its check.
        what = {k: meta[k] for k in ("identity", "layout", "n", "chunk")}
        self._salt = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
        if meta["format"] != STORE_FORMAT:  # a format-2 store, resumed as it was made
            self._salt = None

    def checksums(self, c: int, arrays: list[np.ndarray]) -> list[str]:
        """The checksums of chunk c's arrays, as its marker holds them."""
        return _checksums(arrays, "" if self._salt is None else f"{self._salt}|chunk {c}|")

    @classmethod
    def open(cls, path, parts, out_spec, n, chunk, layout) -> "_Store":
        """Opens (or makes) the store and checks everything but the chunks' bytes: one
        ValueError naming the store and what is wrong, before anything is written."""
        where = f"`store` {str(path)!r}"
        if path.exists() and not path.is_dir():
            raise ValueError(f"{where} is a file, not a folder; give a folder (new or a store)")
        meta_path = path / "engine.json"
        if not meta_path.exists():
            if path.exists() and any(path.iterdir()):
                raise ValueError(
                    f"{where} is a folder that is not an engine store (no engine.json); "
                    "give a new or empty path"
                )
            meta = {
                "format": STORE_FORMAT,
                "n": n,
                "chunk": chunk,
                "layout": layout,
                "identity": parts,
            }
            try:
                _create(path, meta, out_spec)
            except OSError as e:
                raise ValueError(f"{where} cannot be made: {e.strerror or e}") from None
        meta = _read_meta(path)
        differ = sorted(
            set(parts) ^ set(meta["identity"])
            | {k for k in parts if meta["identity"].get(k) != parts[k]}
        )
        if meta["n"] != n:
            differ = ["number of items", *differ]
        if differ:
            raise ValueError(
                f"{where} holds another computation (different "
                f"{', '.join(differ)}); use another path or delete that one"
            )
        if meta["layout"] != layout:
            had, has = meta["layout"], layout
            differ = ", ".join(
                f"{k} {had[k]!r} there, {has[k]!r} here" for k in has if had[k] != has[k]
            )
            raise ValueError(
                f"{where} was computed on {had['devices']} {had['platform']} device(s) of "
                f"another layout ({differ}): its chunks would round differently; resume "
                "with the same devices and flags, or use another path"
            )
        store = cls(path, meta, out_spec)
        store._check_arrays()
        return store

    def _check_arrays(self) -> None:
        import zarr

        where = f"`store` {str(self.path)!r}"
        try:
            g = zarr.open_group(self.path / "arrays.zarr", mode="r")
        except Exception as e:  # zarr raises several kinds for a missing or broken group
            raise ValueError(
                f"{where} has damaged zarr metadata (arrays.zarr: {type(e).__name__}); "
                "delete the store to compute it again"
            ) from None
        leaves = jax.tree.leaves(self.out_spec)
        for name, spec in zip(self.names, leaves, strict=True):
            want = ((self.n, *spec.shape), np.dtype(spec.dtype), (self.chunk, *spec.shape))
            try:
                a = g[name]
                got = (tuple(a.shape), np.dtype(a.dtype), tuple(a.chunks))
            except Exception as e:
                raise ValueError(
                    f"{where} has damaged zarr metadata (array {name!r}: "
                    f"{type(e).__name__}); delete the store to compute it again"
                ) from None
            if got != want:
                raise ValueError(
                    f"{where} has damaged zarr metadata (array {name!r} is {got}, "
                    f"expected {want}); delete the store to compute it again"
                )

    def writable(self) -> str | None:
        """None if chunks can be written here; else why not (checked by writing)."""
        try:
            for sub in ("done", "leases"):
                (self.path / sub).mkdir(exist_ok=True)
                _probe(self.path / sub)
            _probe(self.path / "arrays.zarr")
        except OSError as e:
            return e.strerror or str(e)
        return None

    def group(self):
        import zarr

        if self._group is None:
            self._group = zarr.open_group(self.path / "arrays.zarr", mode="r+")
        return self._group

    def done(self) -> set[int]:
        """The chunks marked done (markers not yet checked against the bytes)."""
        try:
            names = os.listdir(self.path / "done")
        except FileNotFoundError:
            return set()
        return {int(m) for m in names if m.isdigit() and int(m) < self.chunks}

    def is_done(self, c: int) -> bool:
        return (self.path / "done" / str(c)).exists()

    def rows(self, c: int) -> int:
        return _rows(c, self.chunk, self.n)

    def read_chunk(self, c: int, group=None) -> list[np.ndarray]:
        g = self.group() if group is None else group
        lo = c * self.chunk
        return [np.asarray(g[name][lo : lo + self.rows(c)]) for name in self.names]

    def write(self, c: int, outputs: PyTree) -> None:
        """Writes a chunk, reads it back, checks it, then marks it done with the checksums
        of its bytes (one atomic rename): a chunk killed halfway has no marker."""
        arrays = [np.asarray(a) for a in jax.tree.leaves(outputs)]
        g = self.group()
        lo = c * self.chunk
        try:
            for name, a in zip(self.names, arrays, strict=True):
                g[name][lo : lo + len(a)] = a
        except OSError as e:  # a full disk: the command line names the store (cli.command)
            e.filename = e.filename or str(self.path)
            raise
        sums = self.checksums(c, arrays)
        if self.checksums(c, self.read_chunk(c)) != sums:
            raise ValueError(
                f"`store` {str(self.path)!r}: chunk {c} does not read back as it was written "
                "(a failing disk or another program writing there)"
            )
        marker = {"rows": self.rows(c), "sha256": dict(zip(self.names, sums, strict=True))}
        results.atomic_write_bytes(self.path / "done" / str(c), json.dumps(marker).encode())
        self.verified.add(c)

    def check(self, chunks) -> dict[int, str]:
        """Reads each chunk and compares its bytes with the checksums of its marker;
        returns {chunk: what is wrong} for those that fail (the others become verified)."""
        bad = {}
        g = None
        for c in sorted(chunks):
            try:
                marker = json.loads((self.path / "done" / str(c)).read_text())
                want = [marker["sha256"][name] for name in self.names]
                if marker["rows"] != self.rows(c):
                    raise ValueError
            except FileNotFoundError:
                bad[c] = "its done marker vanished"
                continue
            except (OSError, ValueError, KeyError, TypeError):
                bad[c] = "its done marker holds no valid checksums"
                continue
            try:
                if g is None:
                    g = _open_read(self.path)
                got = self.checksums(c, self.read_chunk(c, g))
            except Exception as e:  # a truncated or garbled chunk fails to decode
                bad[c] = f"its data cannot be read ({type(e).__name__})"
                continue
            wrong = [n for n, a, b in zip(self.names, got, want, strict=True) if a != b]
            if wrong:
                bad[c] = f"its bytes do not match its checksum ({', '.join(wrong)})"
            else:
                self.verified.add(c)
        return bad

    def unmark(self, bad: dict[int, str], writable: bool) -> None:
        """Forgets chunks that failed their check (they are computed again), saying so in one
        line; a store that cannot be written is refused instead."""
        where = f"`store` {str(self.path)!r}"
        first = min(bad)
        what = f"chunk {first} ({bad[first]})" + (
            f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        )
        if not writable:
            raise ValueError(f"{where} is damaged: {what}, and cannot be written to repair it")
        for c in bad:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / "done" / str(c))
            self.verified.discard(c)
        print(f"{where}: {what} failed verification; computing again", file=sys.stderr)

    def read(self, lazy: bool) -> PyTree:
        g = _open_read(self.path)
        arrays = [g[name] if lazy else g[name][...] for name in self.names]
        return jax.tree.unflatten(jax.tree.structure(self.out_spec), arrays)


def read(store: Path | str, *, lazy: bool = False) -> dict:
    """The arrays of a finished store by output name ("x", "loss", ... for a dict output;
    "out" for a bare array), every chunk checked against its checksums first, without
    recomputing anything (so on any devices). ValueError, naming the store, if a chunk is
    missing or damaged (the computation that made it computes it again)."""
    path = Path(store)
    if not path.is_dir():
        raise ValueError(f"`store` {str(path)!r} is not a folder")
    meta = _read_meta(path)
    try:
        g = _open_read(path)
        names = sorted(_array_names(g))
        spec = {k: jax.ShapeDtypeStruct(g[k].shape[1:], g[k].dtype) for k in names}
    except Exception as e:
        raise ValueError(
            f"`store` {str(path)!r} has damaged zarr metadata (arrays.zarr: {type(e).__name__})"
        ) from None
    st = _Store(path, meta, spec)
    st.names = names  # a dict's leaves come sorted by key: the same order
    st._check_arrays()
    missing = sorted(set(range(st.chunks)) - st.done())
    if missing:
        raise ValueError(
            f"`store` {str(path)!r} is not finished: {len(missing)} of its {st.chunks} chunks "
            f"are not done (chunk {missing[0]} first)"
        )
    bad = st.check(range(st.chunks))
    if bad:
        first = min(bad)
        raise ValueError(
            f"`store` {str(path)!r} is damaged: chunk {first} ({bad[first]})"
            + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
            + "; run its computation again to recompute them"
        )
    return {k: (g[k] if lazy else g[k][...]) for k in names}


def _array_names(group) -> list[str]:
    import zarr

    out = []
    for name, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            out.append(name)
    return out


def _open_read(path: Path):
    import zarr

    return zarr.open_group(path / "arrays.zarr", mode="r")


def _read_meta(path: Path) -> dict:
    """engine.json, checked field by field (ValueError naming the store and the field)."""
    where = f"`store` {str(path)!r}"
    try:
        meta = json.loads((path / "engine.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{where} has an unreadable engine.json ({type(e).__name__})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where} has a damaged engine.json (not an object)")
    if meta.get("format") not in READ_FORMATS:
        raise ValueError(
            f"{where} is not a {STORE_FORMAT} store (format {meta.get('format')!r}: made by "
            "another version of the sandbox); use another path or delete that one"
        )

    def bad(field, expected):
        value = meta.get(field)
        return ValueError(
            f"{where} has a damaged engine.json: `{field}` must be {expected}, got {value!r}"
        )

    for field in ("n", "chunk"):
        v = meta.get(field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad(field, "an integer >= 1")
    ident = meta.get("identity")
    if not isinstance(ident, dict) or not all(isinstance(v, str) for v in ident.values()):
        raise bad("identity", "an object of strings")
    layout = meta.get("layout")
    if not (
        isinstance(layout, dict)
        and set(layout) == {"devices", "platform", "kind", "cpu_vector_width", "lane", "batch"}
        and isinstance(layout["devices"], int)
        and layout["devices"] >= 1
        and isinstance(layout["lane"], int)
        and layout["lane"] >= 1
        and (layout["batch"] is None or isinstance(layout["batch"], int))
        and isinstance(layout["platform"], str)
    ):
        raise bad("layout", "{devices, platform, kind, cpu_vector_width, lane, batch}")
    if meta["chunk"] % (layout["devices"] * layout["lane"]):
        raise bad("chunk", f"a multiple of {layout['devices'] * layout['lane']}")
    return meta


def _names(out_spec: PyTree) -> list[str]:
    """A zarr array name per output leaf (a bare array: "out")."""
    names = [_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(out_spec)[0]]
    return ["out" if not n else n for n in names]


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _create(path: Path, meta: dict, out_spec: PyTree) -> None:
    """Builds the empty store in a temporary folder and renames it into place (atomic: of
    several processes creating the same store at once, one wins and the others open it)."""
    import zarr

    path.parent.mkdir(parents=True, exist_ok=True)
    # The umask's mode, as the store's other folders (mkdtemp's 0700 would keep the other
    # users of a shared folder out of it).
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        g = zarr.open_group(tmp / "arrays.zarr", mode="w")
        for name, spec in zip(_names(out_spec), jax.tree.leaves(out_spec), strict=True):
            g.create_array(
                name,
                shape=(meta["n"], *spec.shape),
                chunks=(meta["chunk"], *spec.shape),
                dtype=spec.dtype,
                fill_value=0,
            )
        (tmp / "done").mkdir()
        (tmp / "leases").mkdir()
        (tmp / "engine.json").write_text(json.dumps(meta, indent=2) + "\n")
        try:  # replaces an empty folder; fails on a store another process just made
            os.rename(tmp, path)
        except OSError:
            if not (path / "engine.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- claims

# The name of this host in leases: a lease of this host is expired as soon as its process is
# gone. Jobs that share a host name without sharing process ids (containers) set
# SANDBOX_HOST to something unique per container, so they wait for the lease instead.
HOST = os.environ.get("SANDBOX_HOST") or socket.gethostname()


class _Claims:
    """Leases on the chunks of one store, held by this process.

    A lease on chunk c is the file leases/<c>.<epoch>, made whole and at once (written
    beside it, then hard-linked into place: the link fails if the name exists, so of several
    jobs claiming the same chunk exactly one wins). Its holder touches it every lease / 4
    seconds while it computes (a thread). A lease is expired when its holder is a process of
    this host that no longer runs, or when it was not touched for `lease_s` seconds: on this
    host by its modification time, from another host by watching it (this process's own
    clock, so clocks of different hosts need not agree). An expired lease of epoch e is
    taken over by creating epoch e + 1, which again only one job can do. A holder that was
    presumed dead but was only slow still writes the same bytes: a chunk is a pure function
    of the store's identity and layout.
    """

    def __init__(self, store: _Store, lease_s: float):
        self.folder = store.path / "leases"
        self.lease_s = float(lease_s)
        self.owner = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: dict[int, Path] = {}
        self.since: dict[int, float] = {}  # when each held lease was taken
        self.seen: dict[str, tuple[tuple, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="lease renewal")

    def __enter__(self):
        self.folder.mkdir(exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for c in list(self.held):
            self.release(c)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            now = time.monotonic()
            with self._lock:
                for c, p in list(self.held.items()):
                    if now - self.since[c] > RENEW_MAX * self.lease_s:
                        continue  # a chunk this slow is hung: let another job take it over
                    try:
                        os.utime(p)
                    except FileNotFoundError:  # taken over and cleared: no longer ours
                        self.held.pop(c, None)

    def current(self) -> dict[int, tuple[int, str]]:
        """{chunk: (highest epoch, file name)} of the lease files now in the folder."""
        out: dict[int, tuple[int, str]] = {}
        for name in os.listdir(self.folder):
            c, _, e = name.partition(".")
            if c.isdigit() and e.isdigit() and int(e) >= out.get(int(c), (-1, ""))[0]:
                out[int(c)] = (int(e), name)
        return out

    def expired(self, name: str) -> bool:
        path = self.folder / name
        try:
            st = path.stat()
            info = json.loads(path.read_text())
        except FileNotFoundError:
            return True  # released or cleared since the listing
        except (OSError, ValueError):
            info = {}
        lease_s = float(info.get("lease_s", self.lease_s)) if isinstance(info, dict) else 0.0
        if isinstance(info, dict) and info.get("host") == HOST:
            if not _alive(info.get("pid")):
                return True
            return time.time() - st.st_mtime > lease_s
        key = (st.st_mtime_ns, st.st_size)
        now = time.monotonic()
        first = self.seen.get(name)
        if first is None or first[0] != key:
            self.seen[name] = (key, now)
            return False
        return now - first[1] > lease_s

    def stale(self, current: dict, done: set) -> set[int]:
        """The chunks not done whose lease (not this process's) has expired."""
        with self._lock:  # (the renewal thread may drop a lease meanwhile)
            mine = set(self.held)
        return {
            c
            for c, (_, name) in current.items()
            if c not in done and c not in mine and self.expired(name)
        }

    def claim(self, c: int, current: dict, stale: set | None = None) -> bool:
        """Takes a lease on chunk c if it is free or expired (`stale`: the expired ones, as
        `stale` found them); True if this process holds it."""
        epoch = 0
        if c in current:
            e, name = current[c]
            if not (c in stale if stale is not None else self.expired(name)):
                return False
            epoch = e + 1
        path = self.folder / f"{c}.{epoch}"
        info = {"owner": self.owner, "host": HOST, "pid": os.getpid(), "lease_s": self.lease_s}
        if not results.create_new(path, json.dumps(info).encode()):
            return False
        with self._lock:
            self.held[c] = path
            self.since[c] = time.monotonic()
        for old in range(epoch):  # the leases this one replaces
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / f"{c}.{old}")
        return True

    def release(self, c: int) -> None:
        with self._lock:
            path = self.held.pop(c, None)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leases(store: Path | str) -> list[dict]:
    """The leases of a store now: [{chunk, owner, host, pid, age_s, lease_s}] (age: seconds
    since its holder last renewed it, by this host's clock)."""
    folder = Path(store) / "leases"
    out = []
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        c, _, e = name.partition(".")
        if not (c.isdigit() and e.isdigit()):
            continue
        try:
            info = json.loads((folder / name).read_text())
            age = time.time() - (folder / name).stat().st_mtime
        except (OSError, ValueError):
            continue
        out.append({"chunk": int(c), **info, "age_s": age})
    return out


def progress(store: Path | str) -> dict:
    """How far a store is: {n, chunk, chunks, done, done_times} (done_times: when each done
    chunk was marked, seconds since the epoch, sorted)."""
    path = Path(store)
    meta = _read_meta(path)
    chunks = -(-meta["n"] // meta["chunk"])
    done = []
    folder = path / "done"
    for name in os.listdir(folder) if folder.is_dir() else []:
        if name.isdigit() and int(name) < chunks:
            with contextlib.suppress(OSError):
                done.append(((folder / name).stat().st_mtime, int(name)))
    return {
        "n": meta["n"],
        "chunk": meta["chunk"],
        "chunks": chunks,
        "done": [c for _, c in sorted(done)],
        "done_times": [t for t, _ in sorted(done)],
    }
