"""Serving: uvicorn in a thread over the app, and the command line."""

import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from sandbox import cli
from sandbox.explore import routes
from sandbox.explore.explorer import Explorer


class Server:
    """uvicorn serving `app(explorer)` in a thread: `start()` returns once it listens."""

    def __init__(self, explorer: Explorer, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.explorer = explorer
        cfg = uvicorn.Config(routes.app(explorer), host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, name="explore-http", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the explorer's server did not start")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.explorer.worker.stop()
        self.explorer.train_worker.stop()
        self.explorer.finishers.shutdown(wait=False)


def _default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "gradient-sandbox" / "tiles"


@cli.command
def main(argv: Sequence[str] | None = None) -> None:
    p = cli.Parser(
        prog="python -m sandbox.explore",
        description="The explorer: live basin and trainability maps in the browser.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free)")
    p.add_argument("--fn", default=None, metavar="MODULE:FUNCTION", help="one more surface")
    p.add_argument(
        "--bounds",
        type=float,
        nargs=4,
        default=(-5.0, 5.0, -5.0, 5.0),
        metavar=("X_LO", "X_HI", "Y_LO", "Y_HI"),
        help="domain of a --fn function (a Landscape brings its own)",
    )
    p.add_argument(
        "--cache",
        default=str(_default_cache()),
        metavar="DIR",
        help="disk cache of tiles ('none': memory only)",
    )
    p.add_argument("--cache-mb", type=int, default=512, help="disk cache size in MiB")
    p.add_argument(
        "--sweep",
        default=None,
        metavar="DIR",
        help="a finished sweep store (python -m sandbox.sweep run SPEC --store DIR) to show",
    )
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"`--port` must be in [0, 65535], got {args.port}")
    if args.cache_mb < 1:
        raise ValueError(f"`--cache-mb` must be >= 1, got {args.cache_mb}")
    cache = None if args.cache == "none" else Path(args.cache)
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"`--cache` folder {str(cache)!r} cannot be made ({e})") from None
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars per tile on the console
    ex = Explorer(
        args.fn,
        bounds=args.bounds,
        cache_dir=cache,
        disk_bytes=args.cache_mb << 20,
        sweep_dir=args.sweep,
    )
    server = Server(ex, args.host, args.port)
    try:
        url = server.start()
    except RuntimeError:
        raise ValueError(f"`--port` {args.port} on {args.host} cannot be bound") from None
    page = f"{url}/?mode=sweep" if args.sweep else f"{url}/"
    print(f"explorer: {page}  ({jax.device_count()} x {jax.devices()[0].device_kind})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # `kill`: the same clean stop as ^C
    try:
        while server.thread.is_alive() and not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
