"""The routes: one short handler per endpoint over the `Explorer` in `app.state.explorer`;
every ValueError a 400 naming the parameter, a full queue a 503."""

import asyncio
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sandbox import optim
from sandbox.explore import jobs, params, stored, tiles
from sandbox.explore.params import BOX, PHASES
from sandbox.explore.tiles import TILE

STATIC = Path(__file__).parents[1] / "static"
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there
NO_STORE = {"Cache-Control": "no-store"}
KEEP = {"Cache-Control": "public, max-age=86400"}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=NO_STORE)


def tile_headers(ex, q: dict) -> dict:
    """A tile is kept by the browser (a day) only under a URL whose `v` is the server's
    `tiles_version` (the page adds it): a tile of other code or surfaces is never reused."""
    return KEEP if q.pop("v", None) == ex.tiles_version else NO_STORE


async def answer(request, make, media: str, headers: dict | None, worker: jobs.Worker) -> Response:
    """Waits for the job `make()` builds (shared with identical requests) off the event
    loop; a client that goes away stops waiting, so a job nobody wants is not computed (or
    stops at its next block). A shared job cancelled just as this request joined it is
    submitted again. The answer carries `headers` (default: no-store)."""
    while True:
        job = worker.submit(make())
        fut = asyncio.wrap_future(job.future)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=DISCONNECT_POLL_S)
                if done:
                    break
                if await request.is_disconnected():
                    worker.release(job)
                    return Response(status_code=499)
        except asyncio.CancelledError:
            worker.release(job)
            raise
        if not fut.cancelled():
            break
    return Response(fut.result(), media_type=media, headers=headers or NO_STORE)


def guarded(handler):
    async def wrapped(request):
        try:
            return await handler(request, request.app.state.explorer, dict(request.query_params))
        except ValueError as e:  # BadRequest, or a library check (names the argument)
            return error(400, str(e))
        except jobs.Busy as e:
            return error(503, str(e))
        except Exception as e:  # a bug: the request fails, the server keeps serving
            return error(500, f"{type(e).__name__}: {e}")

    return wrapped


async def landscapes_(request, ex, q):
    params.no_others(q, set(), "/api/landscapes")
    return JSONResponse(ex.infos)


async def config(request, ex, q):
    params.no_others(q, set(), "/api/config")
    maps = {
        name: {
            "phase_space": phase,
            "bounds": bounds.tolist(),
            "max_zoom": tiles.max_zoom(bounds),
        }
        for name, (phase, bounds) in PHASES.items()
    }
    return JSONResponse(
        {
            "optimizers": {n: optim.hyperparameters(n) for n in optim.names()},
            "colours": list(params.COLOURS),
            "legends": tiles.legends(),
            "tile": TILE,
            "limits": {
                "n": params.N_MAX,
                "view": params.VIEW_MAX,
                "steps": params.STEPS_MAX,
                "train_steps": params.TRAIN_STEPS_MAX,
                "queue": jobs.QUEUE_MAX,
            },
            "trainability": {
                "bounds": params.TRAIN_BOUNDS.tolist(),
                "steps": params.TRAIN_STEPS,
                "width": params.TRAIN_WIDTH,
                "seed": params.TRAIN_SEED,
                "px": list(params.TRAIN_PX),
                "max_zoom": tiles.max_zoom(params.TRAIN_BOUNDS),
            },
            "maps": maps,
            # The stored sweep, and the surface its live tiles take (`landscape` = its name).
            "sweep": ex.stored.info() | {"surface": ex.surfaces[stored.SURFACE].info()}
            if ex.stored is not None
            else None,
            "tiles_version": ex.tiles_version,
        }
    )


def _stored(ex):
    if ex.stored is None:
        raise params.BadRequest("no stored sweep: start the server with `--sweep DIR`")
    return ex.stored


async def sweep_info(request, ex, q):
    """/api/sweep?AXIS=INDEX...: the stored combination's values and basin fractions."""
    st = _stored(ex)
    a = st.combination(q)
    values = {k: float(v[int(q.get(k) or 0)]) for k, v in st.axes.items()}
    return JSONResponse({"combination": values, "fractions": st.fractions(a)}, headers=NO_STORE)


async def sweep_png(request, ex, q):
    """/sweep.png?AXIS=INDEX...: the stored basin map of one combination, a pixel a start."""
    st = _stored(ex)
    return Response(st.png(st.combination(q)), media_type="image/png", headers=NO_STORE)


async def basins_(request, ex, q):
    d = params.descent(q, ex.surfaces, BOX | {"n"})
    box = params.box(q)
    n = params.integer(q, "n", 64, 1, params.N_MAX)
    key = f"basins|{ex.version}|{d.key()}|{box.tolist()!r}|{n}"
    # After the tiles in the queue: the map comes first, the numbers of the view next.
    prio = float(TILE * TILE + n * n)
    make = lambda: ex.basin_job(d, box, n, n, "json", key, prio)  # noqa: E731
    return await answer(request, make, "application/json", None, ex.worker)


async def tile(request, ex, q):
    headers = tile_headers(ex, q)
    d = params.descent(q, ex.surfaces, set())
    s = ex.surfaces[d.surface]
    p = request.path_params
    z, x, y = params.tile(p["z"], p["x"], p["y"], tiles.max_zoom(s.bounds))
    key = f"tile|{ex.version}|{s.version}|{d.key()}|{z}/{x}/{y}"
    hit = ex.cached(key)
    if hit is not None:
        return Response(hit, media_type="image/png", headers=headers)
    box = tiles.tile_box(s.bounds, z, x, y)
    make = lambda: ex.basin_job(d, box, TILE, TILE, "png", key, float(TILE * TILE))  # noqa: E731
    return await answer(request, make, "image/png", headers, ex.worker)


async def view(request, ex, q):
    d = params.descent(q, ex.surfaces, BOX | {"w", "h"})
    box = params.box(q)
    w = params.integer(q, "w", 512, 1, params.VIEW_MAX)
    h = params.integer(q, "h", 512, 1, params.VIEW_MAX)
    key = f"view|{ex.version}|{d.key()}|{box.tolist()!r}|{w}x{h}"
    make = lambda: ex.basin_job(d, box, w, h, "png", key, float(w * h))  # noqa: E731
    return await answer(request, make, "image/png", None, ex.worker)


async def path(request, ex, q):
    d = params.descent(q, ex.surfaces, {"x", "y", "z"})
    b = ex.surfaces[d.surface].bounds
    x, y = params.within(q, "x", *b[0]), params.within(q, "y", *b[1])
    z = params.integer(q, "z", 0, 0, tiles.max_zoom(b))
    key = f"path|{ex.version}|{d.key()}|{x!r},{y!r},{z}"
    make = lambda: ex.path_job(d, x, y, z, key)  # noqa: E731
    return await answer(request, make, "application/json", None, ex.worker)


async def trainability(request, ex, q):
    """/api/trainability (lr1 x lr2) and /api/init_vs_lr (offset x lr): the view's scores."""
    phase = "trainability" if request.url.path.endswith("trainability") else "init_vs_lr"
    t = params.training(q, phase, BOX | {"n"})
    box = params.box(q)
    n = params.integer(q, "n", 32, 1, params.N_MAX)
    key = f"train|{ex.version}|{t.key()}|{box.tolist()!r}|{n}"
    names = ("x0", "x1", "y0", "y1")
    make = lambda: ex.train_job(t, box, n, n, "json", key, float(n * n), names)  # noqa: E731
    return await answer(request, make, "application/json", None, ex.train_worker)


async def train_tile(request, ex, q):
    headers = tile_headers(ex, q)
    p = request.path_params
    t = params.training(q, p["map"], {"px"})
    bounds = PHASES[t.phase][1]
    z, x, y = params.tile(p["z"], p["x"], p["y"], tiles.max_zoom(bounds))
    px = params.integer(q, "px", TILE, 1, TILE)
    if px not in params.TRAIN_PX:
        raise params.BadRequest(f"`px` must be one of {list(params.TRAIN_PX)}, got {px}")
    key = f"ttile|{ex.version}|{t.key()}|{px}|{z}/{x}/{y}"
    hit = ex.cached(key)
    if hit is not None:
        return Response(hit, media_type="image/png", headers=headers)
    box = tiles.tile_box(bounds, z, x, y)
    names = ("z",) * 4
    make = lambda: ex.train_job(t, box, px, px, "png", key, float(px * px), names)  # noqa: E731
    return await answer(request, make, "image/png", headers, ex.train_worker)


async def index(request):
    return FileResponse(STATIC / "index.html", headers=NO_STORE)


async def not_found(request, exc):
    return error(exc.status_code, exc.detail or "not found")


def app(explorer) -> Starlette:
    """The Starlette application over `explorer`."""
    routes = [
        Route("/", index),
        Route("/api/landscapes", guarded(landscapes_)),
        Route("/api/config", guarded(config)),
        Route("/api/basins", guarded(basins_)),
        Route("/api/path", guarded(path)),
        Route("/api/trainability", guarded(trainability)),
        Route("/api/init_vs_lr", guarded(trainability)),
        Route("/view.png", guarded(view)),
        Route("/api/sweep", guarded(sweep_info)),
        Route("/sweep.png", guarded(sweep_png)),
        Route("/tile/{map}/{z}/{x}/{y}.png", guarded(train_tile)),
        Route("/tile/{z}/{x}/{y}.png", guarded(tile)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    a = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    a.state.explorer = explorer
    return a
