"""Run folders: config.json, arrays.npz, meta.json, summary.json and figures, written atomically."""

import dataclasses
import datetime
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_ROOT = Path("results")
# The mode of every file of a run folder: what the umask allows of rw-rw-rw-.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
# Files a run writes at the top of its folder; older ones that the new run did not write are
# dropped when it lands, so every such file comes from one run.
RUN_FILE_SUFFIXES = (".json", ".npz", ".png", ".pdf", ".gif", ".md")
RUN_DATA = ("config.json", "arrays.npz", "summary.json", "meta.json")


# ----------------------------------------------------------------------------- writing


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Writes `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600; results are meant to be read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: Path | str, obj: Any) -> Path:
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=True)
    return atomic_write_bytes(path, (text + "\n").encode())


def write_arrays(path: Path | str, arrays: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buf.getvalue())


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray | np.generic) or hasattr(obj, "__array__"):
        a = np.asarray(obj)
        return a.item() if a.ndim == 0 else a.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------- folders


def check_writable(path: Path | str, argument: str = "--out") -> Path:
    """Creates `path` if needed; ValueError naming `argument` if it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(
            f"`{argument}` must be a writable folder, got {str(path)!r} ({e.strerror})"
        ) from None
    return path


def meta(wall_s: float, seed: int | None = None) -> dict[str, Any]:
    """Provenance: git commit, library versions, backend and devices, x64 flag, timing."""
    import flax
    import jax
    import matplotlib
    import optax

    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "versions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "optax": optax.__version__,
            "flax": flax.__version__,
            "numpy": np.__version__,
            "matplotlib": matplotlib.__version__,
        },
        "backend": jax.default_backend(),
        "devices": [str(d.device_kind) for d in jax.devices()],
        "num_devices": jax.device_count(),
        "x64": bool(jax.config.jax_enable_x64),
        "seed": seed,
        "wall_s": round(wall_s, 3),
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def save(
    run_dir: Path | str,
    config: Any,
    arrays: dict[str, Any],
    summary: dict[str, Any],
    wall_s: float,
    study: str | None = None,
) -> None:
    """Writes config.json, arrays.npz, summary.json and meta.json into `run_dir`.

    Each file is replaced atomically; `run_study` writes them into a staging folder and
    lands the whole folder at once (`RunFolder`), so files of two runs never mix.
    """
    run_dir = Path(run_dir)
    write_arrays(run_dir / "arrays.npz", arrays)
    write_json(run_dir / "config.json", config)
    write_json(run_dir / "summary.json", summary)
    info = meta(wall_s, getattr(config, "seed", None))
    info["study"] = study
    # Ties the arrays to this meta.json: a truncated or foreign arrays.npz is refused on load.
    info["arrays_sha256"] = _sha256(run_dir / "arrays.npz")
    write_json(run_dir / "meta.json", info)


def load(run_dir: Path | str, config_cls: type | None = None, study: str | None = None):
    """Reads a run folder: returns (config, arrays, summary).

    `config` is an instance of `config_cls` when given (lists become tuples where the
    field's default is a tuple), else a dict. Every unreadable, missing or mismatched file
    is one ValueError naming it; `study` also refuses a folder of another study.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "arrays.npz").exists():
        raise ValueError(
            f"no saved results in {str(run_dir)!r}: run the study without --plot-only first"
        )
    info = _read_json(run_dir / "meta.json", required=False)
    if study is not None and info.get("study", study) != study:
        raise ValueError(
            f"{str(run_dir / 'meta.json')!r} is a run of {info['study']!r}, not of {study!r}"
        )
    if "arrays_sha256" in info and _sha256(run_dir / "arrays.npz") != info["arrays_sha256"]:
        raise ValueError(
            f"{str(run_dir / 'arrays.npz')!r} is not the file its meta.json was written with "
            "(truncated or from another run); run the study again"
        )
    try:
        with np.load(run_dir / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile, zlib and format errors alike
        raise ValueError(
            f"{str(run_dir / 'arrays.npz')!r} is not a readable NumPy archive "
            f"({type(e).__name__}); run the study again"
        ) from None
    config = _read_json(run_dir / "config.json", required=True)
    if config_cls is not None:
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(config_cls)})
        if unknown:
            raise ValueError(
                f"{str(run_dir / 'config.json')!r} has fields {unknown} that "
                f"{config_cls.__module__}.{config_cls.__name__} does not know"
            )
        try:
            config = config_from_dict(config_cls, config)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{str(run_dir / 'config.json')!r} is not a valid config: {e}"
            ) from None
    summary = _read_json(run_dir / "summary.json", required=False)
    return config, arrays, summary


def _read_json(path: Path, *, required: bool) -> dict:
    if not path.exists():
        if required:
            raise ValueError(f"{str(path)!r} is missing; run the study again")
        return {}
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_from_dict(cls: type, data: dict[str, Any]):
    """Rebuilds a frozen dataclass config from its JSON form."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v = data[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, tuple) and isinstance(v, list):
            v = tuple(tuple(e) if isinstance(e, list) else e for e in v)
        kwargs[f.name] = v
    return cls(**kwargs)


# ----------------------------------------------------------------------------- command line


class RunFolder:
    """A run folder written as a whole: a lock, a staging folder, one atomic swap.

    `with RunFolder(out) as stage:` holds an exclusive lock on `out` (released by the kernel
    if the process dies, so a killed run never leaves it stuck; a second run into the same
    folder is refused with one line), removes what a killed run left behind, and gives a
    staging folder inside `out` for the new files. `commit()` builds the new folder beside
    `out` from hard links (the new files, plus the subfolders and hidden files of `out`,
    such as checkpoints and engine stores, that a run keeps between runs), and exchanges it
    with `out` in one `renameat2(RENAME_EXCHANGE)`. Whatever moment a run is killed at, the
    folder holds the files of one run. Older top-level run files (`RUN_FILE_SUFFIXES`) that
    the new run did not write are dropped.
    """

    def __init__(self, out: Path | str):
        self.out = check_writable(out)
        self._lock = None
        self._watcher = None
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(
                f"`--out` {str(self.out)!r} is in use by another run (pid {other}); wait for it "
                "or give another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd
        self._clean()
        # The watcher starts first, so that no moment leaves a stage without one.
        self.stage = self.out / f".staging-{os.getpid()}-{os.urandom(4).hex()}"
        self._watcher = _start_watcher(self.out, self.stage)
        self.stage.mkdir(mode=0o700)
        return self.stage

    def __exit__(self, *exc) -> None:
        if self.stage is not None and self.stage.exists():
            shutil.rmtree(self.stage, ignore_errors=True)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:  # wakes up, waits for the lock, finds nothing left, exits
            watcher.stdin.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None
        if watcher is not None:
            try:
                watcher.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass  # a new run took the folder first; the watcher exits after it

    def _clean(self) -> None:
        """Removes what a killed run left (we hold the lock, so its owner is gone)."""
        for p in self.out.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in self.out.glob(".*.tmp"):
            p.unlink(missing_ok=True)
        for p in self.out.parent.glob(f".{self.out.name}.next-*"):
            shutil.rmtree(p, ignore_errors=True)

    def link_data(self) -> None:
        """Hard-links the saved data files of `out` into the stage (for --plot-only)."""
        for name in RUN_DATA:
            if (self.out / name).exists():
                os.link(self.out / name, self.stage / name)

    def commit(self) -> None:
        new = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.next-"))
        try:
            staged = {p.name for p in self.stage.iterdir()}
            for p in self.out.iterdir():
                if p == self.stage or p.name.startswith(".staging-") or p.name in staged:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.copytree(p, new / p.name, symlinks=True, copy_function=os.link)
                elif p.name.startswith(".") or not p.name.endswith(RUN_FILE_SUFFIXES):
                    os.link(p, new / p.name, follow_symlinks=False)
            for name in staged:
                os.rename(self.stage / name, new / name)
            os.chmod(new, os.stat(self.out).st_mode & 0o7777)
            _exchange(new, self.out)
        finally:
            shutil.rmtree(new, ignore_errors=True)  # after the exchange: the old folder


# A process that outlives a killed run: it waits for its run's end (the pipe from the run
# closes, also when the run is SIGKILLed), then, holding the folder's lock, removes what the
# run left: its staging folder, half-written files and a half-built next folder.
_WATCHER = """
import fcntl, os, shutil, signal, sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.SIG_IGN)
out, stage = Path(sys.argv[1]), Path(sys.argv[2])
sys.stdin.buffer.read()
try:
    fd = os.open(out / ".lock", os.O_RDWR)
    # Blocks while the dying run still holds it, or while a new run does (which removes
    # this stage itself); then nothing else can touch the folder.
    fcntl.flock(fd, fcntl.LOCK_EX)
except OSError:
    sys.exit(0)  # the folder is gone
shutil.rmtree(stage, ignore_errors=True)
for p in out.glob(".*.tmp"):
    p.unlink(missing_ok=True)
for p in out.parent.glob("." + out.name + ".next-*"):
    shutil.rmtree(p, ignore_errors=True)
"""


def _start_watcher(out: Path, stage: Path) -> subprocess.Popen | None:
    """Starts the process that cleans up after this run if it is killed (`_WATCHER`)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHER, str(out), str(stage)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or kill of the run's process group spares it
        )
    except OSError:
        return None  # the next run into the folder cleans up instead


def _exchange(a: Path, b: Path) -> None:
    """Swaps two folders atomically (Linux renameat2); elsewhere two renames."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
    old = a.with_name(a.name + ".old")
    os.rename(b, old)
    os.rename(a, b)
    os.rename(old, a)
