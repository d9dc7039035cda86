"""Run folders: config.json, arrays.npz, meta.json, summary.json and figures, written atomically
and landed as a whole; meta.json ties every data file to its run by digest."""

import dataclasses
import datetime
import errno
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
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
# The files meta.json records the SHA-256 of: every data file of a run is tied to the run.
DIGESTED = ("config.json", "arrays.npz", "summary.json")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            e.filename = e.filename or str(path)  # a failed write() names no file
            e.needed = len(data)  # what `disk_full_message` reports
        raise
    return path


def create_new(path: Path | str, data: bytes) -> bool:
    """Writes `data` to `path`, whole, unless a file is already there: of processes that race
    for `path` (on one machine or a shared folder), exactly one makes it. True if this call
    made it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, FILE_MODE)
        os.link(tmp, path)  # fails if `path` exists, where a rename would replace it
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


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
    """Creates `path` if needed; ValueError naming `argument` if it cannot be written.

    A symbolic link stands for the folder it points to, which is created if missing.
    """
    path = Path(path)
    try:
        real = Path(os.path.realpath(path))
        real.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=real, prefix=".probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(
            f"`{argument}` must be a writable folder, got {str(path)!r} ({e.strerror})"
        ) from None
    return path


def meta(wall_s: float, seed: int | None = None) -> dict[str, Any]:
    """Provenance: git commit, library versions, backend and devices, x64 flag, timing.

    The backend, devices and x64 flag are those of the JAX the run computed with; a run that
    never imported JAX (one that only draws saved arrays) gets None, [] and None rather than
    importing it and starting a backend here.
    """
    jax = sys.modules.get("jax")
    packages = ("jax", "jaxlib", "optax", "flax", "numpy", "matplotlib")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "versions": {"python": platform.python_version()} | {p: _version(p) for p in packages},
        "backend": jax.default_backend() if jax else None,
        "devices": [str(d.device_kind) for d in jax.devices()] if jax else [],
        "num_devices": jax.device_count() if jax else 0,
        "x64": bool(jax.config.jax_enable_x64) if jax else None,
        "seed": seed,
        "wall_s": round(wall_s, 3),
        "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def _version(package: str) -> str | None:
    """The installed version of `package` (None if it is not installed), without importing it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


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
    # Ties every data file to this meta.json: a changed, truncated or foreign one (another
    # study's, another run's) is refused on load.
    info["files"] = {name: _sha256(run_dir / name) for name in DIGESTED}
    info["arrays_sha256"] = info["files"]["arrays.npz"]
    write_json(run_dir / "meta.json", info)


def load(run_dir: Path | str, config_cls: type | None = None, study: str | None = None):
    """Reads a run folder: returns (config, arrays, summary).

    `config` is an instance of `config_cls` when given (lists become tuples where the
    field's default is a tuple), else a dict. Every file is checked against the digest its
    meta.json recorded: an unreadable, missing, changed or foreign file is one ValueError
    naming it; `study` also refuses a folder of another study.
    """
    run_dir = Path(run_dir)
    if not any((run_dir / name).exists() for name in RUN_DATA):
        raise ValueError(
            f"no saved results in {str(run_dir)!r}: run the study without --plot-only first"
        )
    info = _read_json(run_dir / "meta.json", required=True)
    if study is not None and info.get("study") != study:
        raise ValueError(
            f"{str(run_dir / 'meta.json')!r} is a run of {info.get('study')!r}, not of {study!r}"
        )
    digests = info.get("files")
    for name in DIGESTED:
        if not isinstance(digests, dict) or not isinstance(digests.get(name), str):
            raise ValueError(
                f"{str(run_dir / 'meta.json')!r} holds no digest of {name} (damaged, or written "
                "before run files were tied to their run); run the study again"
            )
        if not (run_dir / name).is_file():
            raise ValueError(f"{str(run_dir / name)!r} is missing; run the study again")
        if _sha256(run_dir / name) != digests[name]:
            raise ValueError(
                f"{str(run_dir / name)!r} is not the file its meta.json was written with "
                "(changed, truncated or from another run); run the study again"
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
    summary = _read_json(run_dir / "summary.json", required=True)
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
    """A run folder written as a whole: a lock, a staging folder, one atomic landing.

    `with RunFolder(out) as stage:` holds an exclusive lock on `out` (released by the kernel
    if the process dies, so a killed run never leaves it stuck; a second run into the same
    folder is refused with one line), finishes or removes what a killed run left behind, and
    gives a staging folder inside `out` for the new files. `commit()` lands them:

    - usually the new folder is built beside `out` from hard links (the new files, plus the
      subfolders and hidden files of `out`, such as checkpoints and engine stores, that a run
      keeps between runs) and exchanged with `out` in one `renameat2(RENAME_EXCHANGE)`;
    - where `out` cannot be exchanged (a mount point, or a folder whose parent cannot be
      written), a journal naming the staged files is written atomically, then each file is
      renamed into `out`; a run killed after the journal is finished by its watcher or by the
      next run, and one killed before it leaves `out` as it was.

    Whatever moment a run is killed at, the folder holds the files of one run (landing in
    place, once the watcher has finished; until then `load` refuses the mix by digest). Older
    top-level run files (`RUN_FILE_SUFFIXES`) that the new run did not write are dropped; a
    new run into a folder that holds such files but no run (none of `RUN_DATA`) is refused
    in one line before anything is computed, so a mistyped `--out` drops nothing.
    A symbolic link `out` stands for the folder it points to: the files land there and the
    link stays. A Ctrl-C during the landing is held back until the folder has landed; a full
    disk is one ValueError naming the folder and the space (`disk_full_message`).
    """

    def __init__(self, out: Path | str, *, new_run: bool = True):
        self.given = check_writable(out)
        self.new_run = new_run  # (a redraw's `load` refuses a folder that holds no run)
        self.out = Path(os.path.realpath(self.given))
        self.in_place = os.path.ismount(self.out) or not _can_build_beside(self.out)
        self.landed = False
        self._lock = None
        self._watcher = None
        self._had_run = False
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        fd = os.open(self.out / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(
                f"`--out` {str(self.given)!r} is in use by another run (pid {other}); wait for "
                "it or give another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock = fd
        OPENED.append(self)
        _recover(self.out)
        if self.given.is_symlink():  # what older versions left beside a linked --out
            _remove_next(self.given)
        self._had_run = any((self.out / name).exists() for name in RUN_DATA)
        # A folder of no run (none of RUN_DATA, not even a damaged or older run's): what the
        # landing would drop there is someone else's.
        foreign = _run_files(self.out) if self.new_run and not self._had_run else []
        if foreign:
            self._release()
            raise ValueError(
                f"`--out` {str(self.given)!r} holds files that are not a run's "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): a run lands "
                "as a whole folder and would drop them; give a new or empty folder, or a run's"
            )
        # The watcher starts first, so that no moment leaves a stage without one.
        self.stage = self.out / f".staging-{os.getpid()}-{os.urandom(4).hex()}"
        self._watcher = _start_watcher(self.out, self.stage)
        self.stage.mkdir(mode=0o700)
        return self.stage

    def _release(self) -> None:
        os.close(self._lock)
        self._lock = None
        OPENED.remove(self)

    def __exit__(self, exc_type, exc, tb) -> None:
        staged = _size_of(self.stage) if self.stage is not None and not self.landed else 0
        if (self.out / LANDING).exists():  # a landing in place began: it is carried out
            try:
                _recover(self.out)
                self.landed = True
            except OSError:
                pass  # the stage stays for the watcher or the next run to finish
        elif self.stage is not None and self.stage.exists():
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
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise ValueError(self.disk_full_message(exc, staged)) from None

    def disk_full_message(self, exc: OSError, staged: int = 0) -> str:
        """One line: where the disk is full, the space the run needed and what is free."""
        if self.landed:
            fate = "the new run landed whole"
        elif self._had_run:
            fate = "the earlier run in it is unchanged"
        else:
            fate = "nothing was written"
        return disk_full_message(exc, self.given, self.out, staged, fate)

    def link_data(self) -> None:
        """Hard-links the saved data files of `out` into the stage (for --plot-only)."""
        for name in RUN_DATA:
            if (self.out / name).exists():
                os.link(self.out / name, self.stage / name)

    def commit(self) -> None:
        """Lands the staged files as a whole (see the class); a Ctrl-C waits until they have."""
        with _sigint_held():
            if self.in_place:
                self._land_in_place()
            else:
                self._exchange()
            self.landed = True

    def _exchange(self) -> None:
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

    def _land_in_place(self) -> None:
        staged = {p.name for p in self.stage.iterdir()}
        drop = [name for name in _run_files(self.out) if name not in staged]
        plan = {"stage": self.stage.name, "drop": drop}
        atomic_write_bytes(self.out / LANDING, json.dumps(plan).encode())  # the commit point
        _recover(self.out)


def _run_files(folder: Path) -> list[str]:
    """The top-level run files of `folder` (`RUN_FILE_SUFFIXES`, not hidden), sorted: what a
    landing replaces or drops. Everything else (subfolders such as checkpoints, hidden
    files, other files) is kept."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and p.name.endswith(RUN_FILE_SUFFIXES)
        and (p.is_symlink() or p.is_file())
    )


LANDING = ".landing.json"
# The run folders this process opened, latest last (`cli.command` reports the latest one's
# fate when a run is interrupted).
OPENED: list[RunFolder] = []


def _recover(out) -> None:
    """Finishes or undoes what a run into `out` left; its caller holds the folder's lock.

    A landing journal (`RunFolder._land_in_place`) is carried out to its end; without one, a
    staging folder, half-written files and a half-built next folder are removed. Plain
    Python without imports from the module, as the watcher process runs its source.
    """
    import json
    import os
    import shutil
    from pathlib import Path

    out = Path(out)
    try:
        plan = json.loads((out / LANDING).read_text())
    except (OSError, ValueError):  # none (the journal is written whole or not at all)
        plan = None
    if plan is not None:
        stage = out / plan["stage"]
        names = sorted(os.listdir(stage)) if stage.is_dir() else []
        for name in sorted(names, key=lambda n: n == "meta.json"):  # meta.json last
            if (out / name).is_dir() and not (out / name).is_symlink():
                shutil.rmtree(out / name)
            os.replace(stage / name, out / name)
        for name in plan["drop"]:
            if (out / name).is_file() or (out / name).is_symlink():
                os.unlink(out / name)
        os.unlink(out / LANDING)
    for p in out.glob(".staging-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in out.glob(".*.tmp"):
        p.unlink(missing_ok=True)
    _remove_next(out)


def _remove_next(out) -> None:
    """Removes the half-built or old folders a run leaves beside `out` while it lands."""
    import shutil
    from pathlib import Path

    for p in Path(out).parent.glob("." + Path(out).name + ".next-*"):
        if p.is_symlink() or not p.is_dir():
            p.unlink(missing_ok=True)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _can_build_beside(folder: Path) -> bool:
    """Whether a folder can be made beside `folder` (where `RunFolder` builds the next run)."""
    try:
        probe = tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.next-")
    except OSError:
        return False
    try:
        os.rmdir(probe)
    except FileNotFoundError:
        pass  # the cleanup of a run that holds the folder took it first (it is ours by name)
    return True


def _size_of(folder: Path) -> int:
    """Bytes of the files under `folder` that take space of their own (not hard links to
    saved files, as --plot-only stages them; 0 if it is gone)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_size if st.st_nlink == 1 else 0
    return total


def disk_full_message(
    exc: OSError,
    given: Path | str | None = None,
    out: Path | str | None = None,
    staged: int = 0,
    fate: str = "",
) -> str:
    """One line for a full disk: the folder that could not be written (the run folder, or the
    store or other folder the failed file lies in), the space free there and, where known,
    the space the run needed; `fate` says what became of the run folder."""
    where = Path(given) if given is not None else None
    inside = where
    failed = _failed_file(exc)
    if failed is not None:
        real = Path(os.path.realpath(out if out is not None else where)) if where else None
        if real is None or (failed != real and real not in failed.parents):
            where = next((p for p in failed.parents if (p / "engine.json").exists()), None)
            where = where or failed.parent  # a chunk store (sandbox.engine), or the folder
    probe = where if where is not None else Path.cwd()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        free = None
    # What the failed run had written is removed by now, so it needed more than is free;
    # at least its staged files and the write that failed, where that is known.
    needed = staged + getattr(exc, "needed", 0)
    line = "no space left on the device"
    line += f" of {str(where)!r}" if where is not None else ""
    if free is not None and needed > free:
        line += f": the new run needs at least {_bytes(needed)}, {_bytes(free)} free"
    elif free is not None and given is not None:
        line += f": the new run needs more than the {_bytes(free)} free"
    elif free is not None:
        line += f" ({_bytes(free)} free)"
    if inside is not None and where != inside and fate:
        fate = fate.replace("in it", f"in {str(inside)!r}")
    return line + (f"; {fate}" if fate else "")


def _failed_file(exc: OSError) -> Path | None:
    """The file a failed write was writing: the error's filename, else (a library such as
    zarr writes through a bare `write()`) the innermost absolute `path` of its traceback."""
    if exc.filename:
        return Path(os.path.realpath(exc.filename))
    found = None
    tb = exc.__traceback__
    while tb is not None:
        value = tb.tb_frame.f_locals.get("path")
        if isinstance(value, str | os.PathLike) and os.path.isabs(value):
            found = value
        tb = tb.tb_next
    return Path(os.path.realpath(found)) if found is not None else None


def _bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class _sigint_held:
    """Holds a Ctrl-C (SIGINT) back until the block ends, then raises it as usual.

    Python handles signals in the main thread only, so elsewhere this does nothing.
    """

    def __enter__(self):
        self._caught = None
        self._active = threading.current_thread() is threading.main_thread()
        if self._active:
            self._old = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self._caught = (signum, frame)

    def __exit__(self, *exc) -> None:
        if not self._active:
            return
        signal.signal(signal.SIGINT, self._old if self._old is not None else signal.SIG_DFL)
        if self._caught is not None:
            if callable(self._old):
                self._old(*self._caught)
            elif self._old in (signal.SIG_DFL, None):
                raise KeyboardInterrupt


# A process that outlives a killed run: it waits for its run's end (the pipe from the run
# closes, also when the run is SIGKILLed), then, holding the folder's lock, finishes or
# removes what the run left (`_recover`).
_WATCHER = """
import fcntl, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
out, stage = sys.argv[1], sys.argv[2]
sys.stdin.buffer.read()
try:
    fd = os.open(os.path.join(out, ".lock"), os.O_RDWR)
    # Blocks while the dying run still holds it, or while a new run does (which cleans up
    # itself); then nothing else can touch the folder.
    fcntl.flock(fd, fcntl.LOCK_EX)
except OSError:
    sys.exit(0)  # the folder is gone
LANDING = %r
%s
%s
_recover(out)
"""


def _start_watcher(out: Path, stage: Path) -> subprocess.Popen | None:
    """Starts the process that cleans up after this run if it is killed (`_WATCHER`)."""
    import inspect

    source = _WATCHER % (LANDING, inspect.getsource(_remove_next), inspect.getsource(_recover))
    try:
        return subprocess.Popen(
            [sys.executable, "-S", "-c", source, str(out), str(stage)],
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
