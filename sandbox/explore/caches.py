"""Caches of finished tiles: a memory LRU and a disk LRU (both bounded in bytes, both through
cachetools' LRU policy), disk entries verified by a checksum on every read; and the code
version every cache key carries."""

import hashlib
import os
import threading
from pathlib import Path

import cachetools
import jax

SANDBOX = Path(__file__).resolve().parents[1]
_DIGEST = 32  # bytes of sha256 before each disk entry's payload


def code_version(root: Path | str = SANDBOX) -> str:
    """Digest of every file under `root` (the whole library: a tile depends on landscapes,
    optimizers, the engine, models, ... and their static data) and of the JAX version, so a
    tile computed by other code is never served. `__pycache__` is left out."""
    root = Path(root)
    h = hashlib.sha256(f"jax {jax.__version__}".encode())
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


class MemoryCache:
    """Least recently used bytes, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int):
        self.lru = cachetools.LRUCache(maxsize=max(max_bytes, 1), getsizeof=len)
        self.lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self.lru.currsize)

    def get(self, key: str) -> bytes | None:
        with self.lock:
            return self.lru.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self.lock:
            try:
                self.lru[key] = value
            except ValueError:  # larger than the whole cache: not kept
                pass


class _FileLRU(cachetools.LRUCache):
    """An LRU of file sizes whose evictions delete the files."""

    def __init__(self, root: Path, max_bytes: int):
        super().__init__(maxsize=max(max_bytes, 1), getsizeof=lambda size: size)
        self.root = root

    def popitem(self):
        name, size = super().popitem()
        (self.root / name).unlink(missing_ok=True)
        return name, size


class DiskCache:
    """Files named by the digest of their key in `root`, at most `max_bytes` in all (past
    it the least recently used go). Each file is the sha256 of its payload, then the
    payload: a file that does not match (truncated, garbled, replaced) is deleted and
    reported as a miss, so the tile is computed again."""

    def __init__(self, root: Path | str, max_bytes: int):
        self.root, self.max_bytes = Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.rejected = 0  # entries that failed their checksum: tests count them
        self.index = _FileLRU(self.root, max_bytes)
        files = []
        for p in self.root.glob("*.bin"):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, p.name, st.st_size))
        for _, name, size in sorted(files):  # oldest first: the first evicted
            self._add(name, size)

    @property
    def size(self) -> int:
        return int(self.index.currsize)

    def _name(self, key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:32] + ".bin"

    def _add(self, name: str, size: int) -> None:
        try:
            self.index[name] = size
        except ValueError:  # larger than the whole cache
            (self.root / name).unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        name = self._name(key)
        p = self.root / name
        try:
            data = p.read_bytes()
        except OSError:
            return None
        digest, payload = data[:_DIGEST], data[_DIGEST:]
        if len(data) < _DIGEST or hashlib.sha256(payload).digest() != digest:
            with self.lock:
                self.rejected += 1
                self.index.pop(name, None)
                p.unlink(missing_ok=True)
            return None
        with self.lock:
            if name in self.index:
                self.index[name]  # noqa: B018 (a read marks it recently used)
            else:
                self._add(name, len(data))
        return payload

    def put(self, key: str, value: bytes) -> None:
        data = hashlib.sha256(value).digest() + value
        if len(data) > self.max_bytes:
            return
        name = self._name(key)
        p = self.root / name
        tmp = p.with_suffix(f".{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, p)
        except OSError:  # a full or read-only disk costs the cache, not the request
            tmp.unlink(missing_ok=True)
            return
        with self.lock:
            self.index.pop(name, None)
            self._add(name, len(data))
