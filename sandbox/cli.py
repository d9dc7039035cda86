"""The command line every study shares and its compute-save-plot driver.

`study_parser` gives the common options (--quick, --out, --seed, --plot-only, --store);
`run_study` computes (unless --plot-only), saves, reloads and draws into a run folder that
lands as a whole (`results.RunFolder`); `command` wraps a study's `main` so that bad input
is one line on stderr and exit status 2.
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sandbox import results


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2, no usage dump)."""

    def error(self, message: str):  # one line, exit status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def study_parser(name: str, doc: str | None = None, quick_help: str = "small sizes (seconds)"):
    """The common command line of every study (--quick, --out, --seed, --plot-only), for
    studies that add options of their own."""
    p = Parser(
        prog=f"python -m studies.{name}",
        description=(doc or "").strip().splitlines()[0] if doc else None,
    )
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", type=Path, default=None, help="output folder")
    p.add_argument("--seed", type=_seed, default=None, help="override the config's seed")
    p.add_argument("--plot-only", action="store_true", help="redraw figures from saved arrays")
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the finished chunks of every batched computation in DIR: a run stopped and "
        "started again with the same DIR computes only what is missing",
    )
    return p


SEED_MAX = 2**32 - 1  # PRNG keys take 32-bit seeds on every backend


def _seed(text: str) -> int:
    """`--seed`: one rule for every study, an integer in [0, 2^32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {text!r}")
    return value


def add_scale(p: argparse.ArgumentParser, paper_help: str) -> None:
    """`--scale default|paper`, for studies whose paper-sized run is one flag away."""
    p.add_argument("--scale", choices=("default", "paper"), default="default", help=paper_help)


def add_precision(p: argparse.ArgumentParser, what: str) -> None:
    """`--precision float32|bfloat16` (sandbox.precision) for studies that evaluate or train
    networks; another value is a one-line error naming the option (exit status 2)."""
    from sandbox import precision

    p.add_argument(
        "--precision",
        choices=precision.NAMES,
        default=None,
        help=f"{what} in float32 (default) or bfloat16 mixed precision",
    )


def chosen_config(args: argparse.Namespace, config: Any, quick: Any, paper: Any) -> Any:
    """The config of --quick, of --scale paper, or the default; both flags: ValueError."""
    if args.scale == "paper" and args.quick:
        raise ValueError("give `--quick` or `--scale paper`, not both")
    return quick if args.quick else paper if args.scale == "paper" else config


def given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """{name: value} for each option of `names` given on the command line (not None): the
    config fields a study's flags override (`dataclasses.replace(cfg, **given(...))`)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def parse_study_args(
    name: str, argv: Sequence[str] | None, doc: str | None = None
) -> argparse.Namespace:
    """The common command line of every study."""
    return study_parser(name, doc).parse_args(argv)


def run_dir(out: Path | None, name: str, quick: bool) -> Path:
    """The study's folder: `--out` as given, else results/<name> (results/<name>-quick)."""
    if out is None:
        out = results.RESULTS_ROOT / (f"{name}-quick" if quick else name)
    return results.check_writable(out)


def run_study(
    name: str,
    args: argparse.Namespace,
    cfg: Any,
    compute: Callable[[Any], tuple[dict, dict]],
    plot: Callable[[dict, Any, dict], dict],
    *,
    out: Path | None = None,
    artifacts: Callable[[dict, Any, dict, Path], None] | None = None,
):
    """The body every study's `main` shares: compute and save (unless --plot-only), reload,
    draw each figure of `plot` to <out>/<figure>.png, and `artifacts(arrays, cfg, summary,
    folder)` for the rest (GIFs, tables), all into a staging folder that lands as a whole
    (`RunFolder`).

    Returns:
      (out, cfg, arrays, summary) as reloaded from the run folder.
    """
    from sandbox import plotting  # matplotlib only where figures are drawn

    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if out is None:
        out = run_dir(args.out, name, args.quick)
    rf = results.RunFolder(out)
    with rf as stage:
        if args.plot_only:
            results.load(out, type(cfg), study=name)  # one clear line if the saved run is unusable
            rf.link_data()
        else:
            from sandbox import engine

            start = time.perf_counter()
            with engine.stores_in(getattr(args, "store", None)):
                arrays, summary = compute(cfg)
            results.save(stage, cfg, arrays, summary, time.perf_counter() - start, study=name)
        cfg, arrays, summary = results.load(stage, type(cfg), study=name)
        for fig_name, fig in plot(arrays, cfg, summary).items():
            plotting.save(fig, stage / f"{fig_name}.png")
        if artifacts is not None:
            artifacts(arrays, cfg, summary, stage)
        rf.commit()
    return Path(out), cfg, arrays, summary


def command(main: Callable[[Sequence[str] | None], Any]) -> Callable:
    """Wraps a study's `main`: every CPU core in use (`devices.use_all_cores`), and bad input
    becomes one line on stderr and exit status 2."""

    def wrapped(argv: Sequence[str] | None = None):
        from sandbox import devices

        devices.use_all_cores()  # before the study's first computation starts JAX's backend
        try:
            return main(argv)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    wrapped.__doc__ = main.__doc__
    wrapped.__wrapped__ = main
    return wrapped


def study_main(
    name: str,
    doc: str | None,
    config: Any,
    quick: Any,
    compute: Callable[[Any], tuple[dict, dict]],
    plot: Callable[[dict, Any, dict], dict],
    *,
    artifacts: Callable[[dict, Any, dict, Path], None] | None = None,
) -> Callable:
    """The `main(argv=None)` of a study with only the common options: `quick` under
    --quick, else `config`, through `run_study`; wrapped by `command`."""

    def main(argv: Sequence[str] | None = None) -> None:
        args = parse_study_args(name, argv, doc)
        cfg = quick if args.quick else config
        out, *_ = run_study(name, args, cfg, compute, plot, artifacts=artifacts)
        print(f"{name}: results in {out}")

    main.__doc__ = f"Runs the {name} study (`python -m studies.{name} --help`)."
    return command(main)
