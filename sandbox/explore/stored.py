"""A stored sweep (`sandbox.sweep.load`) as a map: the basin labels of its grid of starts for
one combination of its axes, and the descent settings that continue it live."""

import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np

from sandbox import basins, sweep
from sandbox.explore import params, tiles
from sandbox.explore.params import BadRequest, integer, no_others

# The `landscape` of the live tiles, paths and views that continue a stored sweep: its
# function over its bounds, labelled by its minima, basin_tol, bound and dtype.
SURFACE = "@sweep"


class StoredSweep:
    """The finished sweep in `folder`: 2-D starts on a grid (`[starts] grid`), any axes."""

    def __init__(self, folder: Path | str):
        folder = Path(folder)
        try:
            r = sweep.load(folder)
        except (OSError, ValueError) as e:
            raise ValueError(f"`--sweep` {str(folder)!r}: {e}") from None
        spec = r.spec
        if "grid" not in spec["starts"] or r.starts.shape[1] != 2:
            raise ValueError(
                f"`--sweep` {str(folder)!r} must hold 2-D starts on a grid ([starts] grid = n) "
                "to draw a map"
            )
        self.folder, self.spec = folder, spec
        self.h, self.w = spec["starts"]["grid"]
        self.box = np.asarray(spec["starts"]["box"], np.float64)  # [[x_lo, x_hi], [y_lo, y_hi]]
        self.minima = np.asarray(spec["minima"], np.float64).reshape(-1, 2)
        self.axes = {k: np.asarray(v, np.float64) for k, v in r.axes.items()}
        labels = basins.classify(r.x, self.minima, spec["basin_tol"], r.diverged)
        combos = math.prod(len(v) for v in self.axes.values())
        self.labels_SxA = labels.reshape(len(r.starts), combos)

    def surface(self, base):
        """The live continuation of the map: `base` (an `explorer.Surface`: the spec's
        landscape) over the spec's bounds, its runs labelled as the sweep labels them."""
        s = self.spec
        bounds = np.asarray(s["bounds"], np.float64)
        rule = [base.version, bounds.tolist(), self.minima.tolist(), s["basin_tol"], s["bound"]]
        rule.append(s["dtype"])
        return dataclasses.replace(
            base,
            name=SURFACE,
            bounds=bounds,
            minima=self.minima,
            basin_tol=float(s["basin_tol"]),
            bound=float(s["bound"]),
            float64=s["dtype"] == "float64",
            version=hashlib.sha256(repr(rule).encode()).hexdigest()[:16],
        )

    def live_off(self) -> str | None:
        """Why the live tiles cannot continue this sweep (None: they can)."""
        if self.spec["steps"] > params.STEPS_MAX:
            return (
                f"the stored map only: its {self.spec['steps']} steps per run are over the "
                f"live limit of {params.STEPS_MAX}, so no live tiles, measures or paths"
            )
        return None

    def combination(self, q: dict) -> int:
        """The index of the combination the query picks: each axis by the index of its value
        (`lr=3`: the 4th value of the lr axis; default 0); anything else is refused."""
        no_others(q, set(self.axes), "a stored sweep's map")
        a = 0
        for name, values in self.axes.items():
            a = a * len(values) + integer(q, name, 0, 0, len(values) - 1)
        return a

    def png(self, a: int) -> bytes:
        """The basin labels of combination `a` over the grid, one pixel per start (row 0 at the
        top), in `plotting`'s basin colours."""
        if not 0 <= a < self.labels_SxA.shape[1]:
            raise BadRequest(f"combination {a} is not in the sweep")
        return tiles.render_basins(self.labels_SxA[:, a].reshape(self.h, self.w), len(self.minima))

    def fractions(self, a: int) -> dict:
        return tiles.fractions(self.labels_SxA[:, a], len(self.minima))

    def info(self) -> dict:
        """What the page needs: the grid, the image's extent (the starts are the centres of
        its pixels, both ends of the box included), the axes, the settings to go on live."""
        dx = (self.box[0, 1] - self.box[0, 0]) / max(self.w - 1, 1)
        dy = (self.box[1, 1] - self.box[1, 0]) / max(self.h - 1, 1)
        s = self.spec
        return {
            "folder": str(self.folder),
            "landscape": s["landscape"],
            "optimizer": s["optimizer"],
            "steps": s["steps"],
            "tol": s.get("tol"),
            "dtype": s["dtype"],
            "basin_tol": s["basin_tol"],
            "bound": s["bound"],
            "live_off": self.live_off(),
            "hyper": s["hyper"],
            "axes": {k: v.tolist() for k, v in self.axes.items()},
            "grid": [self.h, self.w],
            "box": self.box.tolist(),
            "extent": [
                [self.box[0, 0] - dx / 2, self.box[0, 1] + dx / 2],
                [self.box[1, 0] - dy / 2, self.box[1, 1] + dy / 2],
            ],
            "pixel": [dx, dy],
            "minima": self.minima.tolist(),
            "colours": ["#" + bytes(c).hex() for c in tiles.basin_table(len(self.minima))],
        }
