"""Tile geometry and rendering: boxes of slippy-map tiles, pixel centres, the dtype a grid
needs, and palette PNGs in the colours of `plotting` and the fractal study."""

import io

import numpy as np

from sandbox import basins
from sandbox.explore.params import RESOLVE_ULPS, BadRequest

TILE = 256  # pixels per tile side
# The study's colour gap between the two classes of the trainability score (studies/fractal.py).
TRAIN_GAP = 0.12
LOSS_DECADES = (-8.0, 4.0)  # colour=loss: log10(loss - f_min) from blue to yellow
STEPS_SPECIAL = (40, 40, 40)  # colour=steps: runs that never reached tol
LOSS_SPECIAL = (0, 0, 0)  # colour=loss: diverged runs


def precision(box: np.ndarray, nx: int, ny: int, what: str, reach: float = 0.0) -> bool:
    """Whether an nx x ny grid over `box` needs float64 (False: float32 resolves it).

    A grid resolves in a dtype when its pixel spacing is at least RESOLVE_ULPS ulps of the
    largest coordinate the computation holds: the box's, or `reach` (for descents, the
    largest coordinate of the surface's bounds: starts near the origin move out to O(1)
    iterates, where float32 no longer tells neighbouring starts apart). A grid float64 does
    not resolve is a BadRequest naming `what` (the zoom, or the bounds).
    """
    spacing = min((box[0, 1] - box[0, 0]) / nx, (box[1, 1] - box[1, 0]) / ny)
    scale = max(float(np.max(np.abs(box))), reach, 1e-300)
    if spacing >= RESOLVE_ULPS * np.finfo(np.float32).eps * scale:
        return False
    if spacing >= RESOLVE_ULPS * np.finfo(np.float64).eps * scale:
        return True
    raise BadRequest(
        f"`{what}` is beyond what float64 resolves: a pixel spacing of {spacing:.3g} at "
        f"coordinates up to {scale:.3g} (at least {RESOLVE_ULPS} ulps are needed)"
    )


def max_zoom(bounds: np.ndarray, dtype=np.float64) -> int:
    """The deepest tile zoom over `bounds` that `dtype` resolves (`precision`)."""
    z = 0
    while z < 60:
        b = tile_box(bounds, z + 1, 0, 0)
        spacing = min(b[0, 1] - b[0, 0], b[1, 1] - b[1, 0]) / TILE
        if spacing < RESOLVE_ULPS * np.finfo(dtype).eps * float(np.max(np.abs(bounds))):
            break
        z += 1
    return z


def tile_box(bounds: np.ndarray, z: int, x: int, y: int) -> np.ndarray:
    """The box [[x_lo, x_hi], [y_lo, y_hi]] of slippy-map tile (z, x, y) over `bounds`:
    zoom 0 is one tile over the bounds, tile y = 0 at the top (largest y)."""
    w = (bounds[0, 1] - bounds[0, 0]) / 2.0**z
    h = (bounds[1, 1] - bounds[1, 0]) / 2.0**z
    xl = bounds[0, 0] + x * w
    yh = bounds[1, 1] - y * h
    return np.array([[xl, xl + w], [yh - h, yh]])


def centres(box: np.ndarray, nx: int, ny: int, x64: bool) -> np.ndarray:
    """Pixel-centre starts [ny * nx, 2], row i at y = y0 + (i + 0.5)(y1 - y0)/ny, column j
    at x = x0 + (j + 0.5)(x1 - x0)/nx (row 0 at y0), row-major."""
    xs = box[0, 0] + (np.arange(nx) + 0.5) * (box[0, 1] - box[0, 0]) / nx
    ys = box[1, 0] + (np.arange(ny) + 0.5) * (box[1, 1] - box[1, 0]) / ny
    xx, yy = np.meshgrid(xs, ys)
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64 if x64 else np.float32)


def basin_table(k: int) -> np.ndarray:
    """uint8 RGB [k + 2, 3]: row 0 diverged, row 1 not converged, row 2 + i basin i, in the
    colours of `plotting.basin_image`."""
    from sandbox import plotting

    rgba = np.concatenate(
        [[plotting.DIVERGED_COLOR, plotting.NOT_CONVERGED_COLOR], plotting.basin_palette(k)]
    )
    return np.round(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)


def png(index_HxW: np.ndarray, table_Cx3: np.ndarray) -> bytes:
    """A palette PNG: pixel (i, j) has colour table[index[i, j]] (row 0 at the top)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(index_HxW, np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(table_Cx3)] = table_Cx3
    img.putpalette(pal.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _cmap_table(name: str, n: int = 254) -> np.ndarray:
    import matplotlib as mpl

    return np.round(mpl.colormaps[name](np.linspace(0, 1, n))[:, :3] * 255).astype(np.uint8)


def fractions(labels, k: int) -> dict:
    """A basin map's share per minimum ("0", "1", ...), not converged and diverged, as the
    API reports them."""
    frac = basins.fractions(labels, k)
    out = {str(i): float(f) for i, f in enumerate(frac[:-2])}
    out["not_converged"], out["diverged"] = float(frac[-2]), float(frac[-1])
    return out


def render_basins(labels_HxW, k: int) -> bytes:
    """Labels (row 0 at the bottom) as a PNG in the basin colours (top row first)."""
    return png(np.asarray(labels_HxW)[::-1] + 2, basin_table(k))


def render_scalar(v_HxW: np.ndarray, lo: float, hi: float, special_HxW, special_rgb) -> bytes:
    """Values in [lo, hi] on viridis (row 0 at the bottom); `special` pixels in one colour."""
    t = np.clip((np.asarray(v_HxW, np.float64) - lo) / (hi - lo), 0, 1)
    idx = 1 + np.round(np.nan_to_num(t) * 253).astype(np.int64)
    idx[np.asarray(special_HxW)] = 0
    table = np.concatenate([[special_rgb], _cmap_table("viridis")]).astype(np.uint8)
    return png(idx[::-1], table)


def train_table() -> np.ndarray:
    """uint8 RGB [256, 3] for the trainability score: the study's RdBu colours with a gap
    between the classes (index 0..127 diverged, -1 to 0; 128..255 trainable, 0 to 1)."""
    s = np.concatenate([np.linspace(-1, -1e-9, 128), np.linspace(1e-9, 1, 128)])
    d = np.sign(s) * (TRAIN_GAP + (1 - TRAIN_GAP) * np.abs(s))
    import matplotlib as mpl

    rgb = mpl.colormaps["RdBu"]((d + 1) / 2)[:, :3]
    return np.round(rgb * 255).astype(np.uint8)


def score_index(score_HxW: np.ndarray) -> np.ndarray:
    """Score [-1, 1] -> index of `train_table` (< 128 exactly where the score is < 0)."""
    s = np.asarray(score_HxW, np.float64)
    neg = np.clip(np.round((s + 1) * 127).astype(np.int64), 0, 127)
    pos = np.clip(128 + np.round(s * 127).astype(np.int64), 128, 255)
    return np.where(s > 0, pos, neg)


def hex_stops(table_Cx3: np.ndarray, n: int = 9) -> list[str]:
    """n evenly spaced colours of a table as "#rrggbb", first to last (a legend's bar)."""
    idx = np.round(np.linspace(0, len(table_Cx3) - 1, n)).astype(int)
    return ["#" + bytes(table_Cx3[i].astype(np.uint8)).hex() for i in idx]


def legends() -> dict:
    """The colour bars of the scalar colourings, for the page's legends."""
    viridis = _cmap_table("viridis")
    train = train_table()
    return {
        "steps": {"stops": hex_stops(viridis), "special": "#" + bytes(STEPS_SPECIAL).hex()},
        "loss": {
            "stops": hex_stops(viridis),
            "decades": list(LOSS_DECADES),
            "special": "#" + bytes(LOSS_SPECIAL).hex(),
        },
        # Score -1 (diverges at once) to 0 from index 0 to 127, 0 to 1 (trains, fastest)
        # from 128 to 255.
        "trainability": {"diverges": hex_stops(train[:128]), "trains": hex_stops(train[128:])},
    }
