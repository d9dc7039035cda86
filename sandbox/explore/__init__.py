"""The explorer: a web server that computes basin maps and trainability tiles live, and its page.

Every view is computed on demand by the library: basin tiles and maps by `sweep.descend` (on
every device JAX has, through `engine.map_chunks`) and `basins.classify`, coloured as
`plotting` colours basins; trainability tiles (lr1 x lr2, and initialization offset x lr) by
`fractal.score_grid` on the fractal study's network; the view's box-counting dimension by
`fractal.box_counting_dimension`. Nothing sent by the browser is run as code: the landscapes
are the registry's 2-D ones, plus the one function given with `--fn` at start-up.

Endpoints (README.md, "Explorer", lists every parameter): `/api/landscapes`, `/api/config`,
`/api/basins`, `/api/path`, `/tile/{z}/{x}/{y}.png`, `/view.png`, `/api/trainability`,
`/api/init_vs_lr`, `/tile/{trainability|init_vs_lr}/{z}/{x}/{y}.png`, `/api/sweep`,
`/sweep.png`, and the page at `/`.
A bad request (an unknown parameter included) gets HTTP 400 with `{"error": "..."}` naming it.

One module per concern: `params` (query parsing), `tiles` (tile geometry and rendering),
`caches` (memory and disk LRUs, the code version in every key), `jobs` (the queue and its
compute threads), `explorer` (the state and the computations), `stored` (a finished sweep
store as a map, `--sweep DIR`), `routes` (the handlers), `server` (uvicorn and the command
line).

Run: make explore   (python -m sandbox.explore [--host 127.0.0.1] [--port 8765]
[--fn MODULE:FUNCTION] [--cache DIR] [--sweep DIR])
"""

from sandbox.explore.caches import DiskCache, MemoryCache, code_version
from sandbox.explore.explorer import REACH_TOL, Explorer, Surface, dimension, load_fn
from sandbox.explore.jobs import Busy, Job, Worker
from sandbox.explore.params import (
    INIT_BOUNDS,
    TRAIN_BOUNDS,
    TRAIN_SEED,
    TRAIN_STEPS,
    TRAIN_WIDTH,
    BadRequest,
)
from sandbox.explore.routes import app
from sandbox.explore.server import Server, main
from sandbox.explore.tiles import (
    TILE,
    TRAIN_GAP,
    centres,
    max_zoom,
    precision,
    render_basins,
    tile_box,
)

__all__ = [
    "INIT_BOUNDS",
    "REACH_TOL",
    "TILE",
    "TRAIN_BOUNDS",
    "TRAIN_GAP",
    "TRAIN_SEED",
    "TRAIN_STEPS",
    "TRAIN_WIDTH",
    "BadRequest",
    "Busy",
    "DiskCache",
    "Explorer",
    "Job",
    "MemoryCache",
    "Server",
    "Surface",
    "Worker",
    "app",
    "centres",
    "code_version",
    "dimension",
    "load_fn",
    "main",
    "max_zoom",
    "precision",
    "render_basins",
    "tile_box",
]
