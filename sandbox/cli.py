"""The command line every study shares and its compute-save-plot driver.

`study_main` builds a study's `main`: `parse` turns every field of its Config into a flag
named after the field (tyro: the dataclass is the parser, each field's comment its help), on
top of the preset that --quick or --scale paper chose, beside the common options (--quick,
--out, --plot-only, --store) and the study's own; `sandbox.config` checks the result and
names the flag as typed. `run_study` computes (unless --plot-only), saves, reloads and draws
into a run folder that lands as a whole (`results.RunFolder`); `command` wraps a study's
`main` so that bad input is one line on stderr and exit status 2.
"""

import argparse
import contextlib
import dataclasses
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from sandbox import config, results


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2, no usage dump)."""

    def error(self, message: str):  # one line, exit status 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def study_parser(name: str, doc: str | None = None, quick_help: str = "small sizes (seconds)"):
    """An argparse command line with the common options (--quick, --out, --seed, --plot-only,
    --store) for scripts whose config is not given field by field (tests' tiny studies); the
    studies use `study_main`, where every Config field is a flag."""
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


SEED_MAX = config.SEED_MAX


def _seed(text: str) -> int:
    """`--seed`: one rule for every study, an integer in [0, 2^32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {text!r}")
    return value


def parse(
    name: str,
    doc: str | None,
    presets: dict[str, Any],
    argv: Sequence[str] | None = None,
    *,
    options: type | None = None,
    quick_help: str = "small sizes (seconds)",
    paper_help: str | None = None,
    aliases: dict[str, str] | None = None,
) -> tuple[argparse.Namespace, Any]:
    """A study's command line: (args, cfg).

    `presets` maps "default", "quick" and (for studies with a paper-sized run) "paper" to
    Configs; every field of the chosen one can be set by a flag named after it (`--num-runs`
    or `--num_runs`; tuples as `--escape-lrs 0.05 0.1`, or comma-separated). `options` is a
    dataclass of the study's flags that are not config fields (--data-dir, --no-progress).
    `aliases` maps another spelling of a field's flag to it (`{"--lrs": "--gd-lrs"}`). `args`
    holds the common options, the study's own, `typed` ({field: flag as typed}), `flags`
    ({field: its flag}) and `preset`. Bad input: one line naming the flag as typed, exit
    status 2; a value outside a field's constraint: ValueError naming the flag (`command`
    prints it, exit status 2).
    """
    import tyro

    given = list(sys.argv[1:] if argv is None else argv)  # errors name the flags as typed
    argv = _expand(given, presets["default"], aliases)
    quick = "--quick" in argv
    scale = _value_of(argv, "--scale") if "paper" in presets else None
    if quick and scale == "paper":
        raise ValueError("give `--quick` or `--scale paper`, not both")
    preset = presets["quick" if quick else "paper" if scale == "paper" else "default"]
    cls = _arguments(type(preset), preset, options, quick_help, paper_help)
    prog = f"python -m studies.{name}"
    description = (doc or "").strip().splitlines()[0] if doc else None
    with config.deferred(), _one_line_errors(prog, given, aliases):
        parsed = tyro.cli(cls, args=argv, prog=prog, description=description)
    cfg = parsed.config
    typed = _typed(given, cfg, aliases)
    flags = {f.name: typed.get(f.name, config.flag(f.name)) for f in _fields(cfg)}
    config.check(cfg, flags=flags)
    values = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(parsed)}
    values.pop("config")
    values.setdefault("scale", "default")
    args = argparse.Namespace(**values, seed=None, typed=typed, flags=flags, preset=preset)
    return args, cfg


def _fields(cfg: Any) -> tuple:
    return dataclasses.fields(cfg)


def _value_of(argv: list[str], option: str) -> str | None:
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def _tuple_fields(cfg: Any) -> set[str]:
    hints = typing.get_type_hints(type(cfg))
    return {n for n, t in hints.items() if typing.get_origin(t) is tuple}


def _expand(argv: list[str], cfg: Any, aliases: dict[str, str] | None) -> list[str]:
    """argv with aliases replaced by the fields' flags and comma-separated values of tuple
    fields split (`--escape-lrs 0.05,0.1` = `--escape-lrs=0.05,0.1` = `--escape-lrs 0.05
    0.1`)."""
    tuples = {config.flag(n) for n in _tuple_fields(cfg)} | {"--" + n for n in _tuple_fields(cfg)}
    out: list[str] = []
    in_tuple = False
    for a in argv:
        if a.startswith("--"):
            a, eq, value = a.partition("=")
            a = (aliases or {}).get(a, a)
            in_tuple = a in tuples
            out.append(a)
            if eq and in_tuple:  # `--escape-lrs=0.05,0.1`
                out.extend(t for t in value.split(",") if t)
            elif eq:
                out[-1] = f"{a}={value}"
        elif in_tuple and "," in a:
            out.extend(t for t in a.split(",") if t)
        else:
            out.append(a)
    return out


def _typed(argv: list[str], cfg: Any, aliases: dict[str, str] | None) -> dict[str, str]:
    """{field: the flag as typed} for every config field given on `argv` (as typed: an
    alias is named as itself)."""
    spelled = {}
    for f in _fields(cfg):
        for s in (config.flag(f.name), "--" + f.name):
            spelled[s] = f.name
            spelled["--no-" + s[2:]] = f.name
            spelled["--no_" + s[2:]] = f.name
    spelled.update({a: spelled[t] for a, t in (aliases or {}).items() if t in spelled})
    typed = {}
    for a in argv:
        key = a.split("=", 1)[0]
        if key in spelled:
            typed[spelled[key]] = key
    return typed


def _arguments(
    cls: type, preset: Any, options: type | None, quick_help: str, paper_help: str | None
) -> type:
    """The dataclass tyro turns into the command line: the common options, the study's own
    and the config's fields (flags without a prefix)."""
    import tyro

    def flag(tp, help, **kw):
        return Annotated[tp, tyro.conf.arg(help=help, **kw), tyro.conf.FlagCreatePairsOff]

    fields: list = [
        # Each field's default below is the chosen preset's: `--quick --help` shows its sizes.
        (
            "quick",
            flag(bool, f"{quick_help}; `--quick --help` shows its values"),
            dataclasses.field(default=False),
        ),
        ("out", flag(Path | None, "output folder", metavar="DIR"), dataclasses.field(default=None)),
        (
            "plot_only",
            flag(bool, "redraw figures from the saved arrays and config"),
            dataclasses.field(default=False),
        ),
        (
            "store",
            flag(
                Path | None,
                "keep the finished chunks of every batched computation in DIR: a run stopped "
                "and started again with the same DIR computes only what is missing",
                metavar="DIR",
            ),
            dataclasses.field(default=None),
        ),
    ]
    if paper_help is not None:
        fields.append(
            (
                "scale",
                flag(
                    Literal["default", "paper"],
                    f"{paper_help}; `--scale paper --help` shows its values",
                ),
                dataclasses.field(default="default"),
            )
        )
    for f in dataclasses.fields(options) if options is not None else ():
        fields.append((f.name, _option_type(options, f), dataclasses.field(default=f.default)))
    fields.append(
        ("config", Annotated[cls, tyro.conf.arg(name="")], dataclasses.field(default=preset))
    )
    return dataclasses.make_dataclass("Arguments", fields, frozen=True)


def _option_type(options: type, f: dataclasses.Field) -> Any:
    import tyro

    tp = typing.get_type_hints(options, include_extras=True)[f.name]
    arg = {k: f.metadata[k] for k in ("help", "metavar") if k in f.metadata}
    marks = [tyro.conf.FlagCreatePairsOff] + ([tyro.conf.arg(**arg)] if arg else [])
    return Annotated[(tp, *marks)]


class _one_line_errors:
    """tyro's parse errors as one line, `prog: error: ...` naming the flag as typed, exit
    status 2 (tyro's own are boxes of several lines)."""

    def __init__(self, prog: str, argv: list[str], aliases: dict[str, str] | None):
        self.prog, self.argv, self.aliases = prog, argv, aliases or {}

    def __enter__(self) -> None:
        import contextlib

        try:  # tyro's parse-error hook (tyro >= 1.0; pinned < 1.1)
            from tyro._errors import on_parse_error
        except ImportError:  # tyro's own errors (boxes of several lines), exit status 2
            on_parse_error = lambda hook: contextlib.nullcontext()  # noqa: E731
        self._cm = on_parse_error(self._hook)
        self._cm.__enter__()

    def __exit__(self, *exc) -> None:
        self._cm.__exit__(*exc)

    def _flag(self, event) -> str:
        arg = getattr(event, "argument", None)
        field = getattr(getattr(arg, "field", None), "intern_name", None)
        if field is None:
            return "the command line"
        typed = {config.flag(field), "--" + field}
        typed |= {a for a, t in self.aliases.items() if t in typed}
        for a in self.argv:  # as typed
            key = a.split("=", 1)[0]
            if key in typed:
                return f"`{key}`"
        return f"`{config.flag(field)}`"

    def _hook(self, event) -> None:
        kind = type(event).__name__
        if kind == "UnrecognizedArgs":
            message = f"unrecognized arguments: {' '.join(event.tokens)}"
        elif kind == "InvalidChoice":
            message = (
                f"{self._flag(event)} must be one of {', '.join(event.choices)}, "
                f"got {event.value!r}"
            )
        elif kind == "InstantiationFailure":
            message = f"{self._flag(event)}: {event.message}"
        elif kind == "BadValue":
            message = f"{self._flag(event)}: expected a value, got {event.offending_value!r}"
            if event.offending_value is None:
                message = f"{self._flag(event)}: too few values"
        else:
            message = f"invalid command line ({kind}); see {self.prog} --help"
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


@dataclasses.dataclass(frozen=True)
class Progress:
    """The own option of the studies that train networks: --no-progress."""

    no_progress: bool = dataclasses.field(default=False, metadata={"help": "no progress bars"})


@dataclasses.dataclass(frozen=True)
class DataOptions(Progress):
    """--no-progress and --data-dir, for the studies that load a data set."""

    data_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "CIFAR-10 folder (else $CIFAR10_DIR)", "metavar": "DIR"}
    )


def check_data_dir(cfg: Any, args: argparse.Namespace) -> Any:
    """`--data-dir` (`DataOptions`) is the CIFAR-10 folder: refused, in one line naming both
    flags, with any other data set (the digits and the synthetic set are built in, so a
    folder given with them would be ignored). A study's `prepare`, for every study with
    --data and --data-dir."""
    if args.data_dir is not None and cfg.data != "cifar10":
        given = args.typed.get("data")
        here = f", not `{given} {cfg.data}`" if given else f" (the data set here is {cfg.data})"
        raise ValueError(f"`--data-dir` is the CIFAR-10 folder, for `--data cifar10` only{here}")
    return cfg


def refuse_other_config(out: Path, saved: Any, cfg: Any, typed: dict[str, str]) -> None:
    """--plot-only redraws the saved run: a flag asking for another value of a config field
    than the saved one is refused, in one line naming the fields."""
    differ = [n for n in typed if getattr(saved, n) != getattr(cfg, n)]
    if differ:
        saved_text = ", ".join(f"{n} = {getattr(saved, n)!r}" for n in differ)
        flags = ", ".join(f"{typed[n]} {getattr(cfg, n)!r}" for n in differ)
        raise ValueError(
            f"{str(out)!r} holds a run with {saved_text}, not {flags}: --plot-only redraws "
            "the saved run (run without --plot-only to compute, or drop those flags)"
        )


def run_dir(out: Path | None, name: str, quick: bool) -> Path:
    """The study's folder: `--out` as given, else results/<name> (results/<name>-quick); made
    (and checked) by `RunFolder` once nothing refuses the run."""
    if out is None:
        out = results.RESULTS_ROOT / (f"{name}-quick" if quick else name)
    return Path(out)


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

    if getattr(args, "seed", None) is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    if out is None:
        out = run_dir(args.out, name, args.quick)
    if args.plot_only and not Path(out).is_dir():  # before any folder is made
        raise ValueError(f"`--out` {str(out)!r} holds no run to redraw (no such folder)")
    if args.plot_only and getattr(args, "typed", None):  # before the folder is touched
        saved, *_ = results.load(out, type(cfg), study=name)
        refuse_other_config(out, saved, cfg, args.typed)
    # A --store that cannot be used is refused on entry, before the run folder is made.
    with contextlib.ExitStack() as stack:
        stack.enter_context(_stores_in(None if args.plot_only else getattr(args, "store", None)))
        rf = results.RunFolder(out, new_run=not args.plot_only)
        stage = stack.enter_context(rf)
        if args.plot_only:
            # Read under the folder's lock (one clear line if the saved run is unusable); the
            # stage then holds these very files.
            cfg, arrays, summary = results.load(out, type(cfg), study=name)
            rf.link_data()
        else:
            start = time.perf_counter()
            arrays, summary = compute(cfg)
            results.save(stage, cfg, arrays, summary, time.perf_counter() - start, study=name)
            cfg, arrays, summary = results.load(stage, type(cfg), study=name)
        for fig_name, fig in plot(arrays, cfg, summary).items():
            plotting.save(fig, stage / f"{fig_name}.png")
        if artifacts is not None:
            artifacts(arrays, cfg, summary, stage)
        rf.commit()
    return Path(out), cfg, arrays, summary


def _stores_in(root: str | None):
    """`engine.stores_in(root)`: JAX is imported here only when --store was given."""
    if root is None:
        return contextlib.nullcontext()
    from sandbox import engine

    return engine.stores_in(root)


def command(main: Callable[[Sequence[str] | None], Any]) -> Callable:
    """Wraps a study's `main`: every CPU core in use (`devices.use_all_cores`); bad input, a
    path this user may not access and a full disk become one line on stderr and exit status
    2; a Ctrl-C becomes one line saying what became of the run folder ("interrupted;
    results/NAME unchanged" or "... landed whole", never a mix: `results.RunFolder`) and exit
    status 130."""

    def wrapped(argv: Sequence[str] | None = None):
        from sandbox import devices

        devices.use_all_cores()  # before the study's first computation starts JAX's backend
        opened = len(results.OPENED)
        with _interrupts() as interrupted:
            try:
                value = main(argv)
            except KeyboardInterrupt:
                interrupted.append(True)
            except ValueError as e:
                print(f"error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            except PermissionError as e:  # a folder given that this user may not read or write
                print(f"error: {e.filename or 'a file'}: {e.strerror}", file=sys.stderr)
                raise SystemExit(2) from None
            except OSError as e:  # a full disk outside a run folder (a run folder says itself)
                if e.errno not in results.DISK_FULL:
                    raise
                print(f"error: {results.disk_full_message(e)}", file=sys.stderr)
                raise SystemExit(2) from None
        runs = results.OPENED[opened:]
        fate = "nothing written"
        if runs:
            fate = f"{runs[-1].given} {'landed whole' if runs[-1].landed else 'unchanged'}"
        if interrupted:
            print(f"interrupted; {fate}", file=sys.stderr)
            raise SystemExit(130)
        if argv is None:  # the command line: a Ctrl-C while the interpreter shuts down
            _on_interrupt_exit(f"interrupted; {fate}")
        return value

    wrapped.__doc__ = main.__doc__
    wrapped.__wrapped__ = main
    return wrapped


def _on_interrupt_exit(line: str) -> None:
    """From now on a Ctrl-C prints `line` and ends the process with status 130 at once (for
    the second or so JAX takes to shut down after a study has finished)."""
    import os
    import signal
    import threading

    def interrupted(signum, frame):
        print(line, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)

    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, interrupted)


class _interrupts:
    """Notes every Ctrl-C of the block in the list it gives, also one that code inside
    swallowed (a KeyboardInterrupt raised in a finalizer or callback is reported as
    "Exception ignored" and the run goes on); such reports are not printed."""

    def __enter__(self) -> list:
        import signal
        import threading

        self.caught: list = []
        # Not where Ctrl-C is ignored (a background job of a shell without job control).
        self._active = threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        )
        if self._active:
            self._handler = signal.signal(signal.SIGINT, self._interrupt)
            self._hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self.caught

    def _interrupt(self, signum, frame):
        self.caught.append(True)
        raise KeyboardInterrupt

    def _unraisable(self, report) -> None:
        if not isinstance(report.exc_value, KeyboardInterrupt):
            self._hook(report)

    def __exit__(self, *exc) -> None:
        import signal

        if self._active:
            signal.signal(signal.SIGINT, self._handler or signal.SIG_DFL)
            sys.unraisablehook = self._hook


def study_main(
    module: str,
    compute: Callable[..., tuple[dict, dict]],
    plot: Callable[[dict, Any, dict], dict],
    *,
    artifacts: Callable[[dict, Any, dict, Path], None] | None = None,
    options: type | None = None,
    quick_help: str = "small sizes (seconds)",
    paper_help: str | None = None,
    aliases: dict[str, str] | None = None,
    prepare: Callable[[Any, argparse.Namespace], Any] | None = None,
    folder: Callable[[Any, argparse.Namespace], str] | None = None,
    report: Callable[[Any, dict], Sequence[str]] | None = None,
) -> Callable:
    """The `main(argv=None)` of the study module named `module` (its `__name__`), wrapped by
    `command`: `parse` (every field of the module's `Config` a flag, on top of its `QUICK`
    under --quick, its `PAPER`, where it has one, under --scale paper, else `Config()`), then
    `run_study` into results/`NAME`. `main.parse(argv)` gives its (args, cfg) without running.

    A study module defines, before calling this, `NAME`, a docstring (the `--help` text), the
    dataclass `Config`, the preset `QUICK` and optionally `PAPER`.

    Args:
      compute: `compute(cfg)`; with `options` (a dataclass of the study's own flags, see
        `parse`), `compute(cfg, out, args)`, for studies that read their options or keep
        files in their folder.
      prepare: `prepare(cfg, args)`, the config the study's own options imply (checked).
      folder: `folder(cfg, args)`, the default folder's name under results/ (`NAME`; with
        --quick, `-quick` is added).
      report: `report(cfg, summary)`, lines printed after the run.
    """
    study = sys.modules[module]
    name, doc, paper = study.NAME, study.__doc__, getattr(study, "PAPER", None)
    presets = {"default": study.Config(), "quick": study.QUICK}
    presets |= {"paper": paper} if paper is not None else {}
    if paper is not None and paper_help is None:
        paper_help = "paper-sized run"

    def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Any]:
        args, cfg = parse(
            name,
            doc,
            presets,
            argv,
            options=options,
            quick_help=quick_help,
            paper_help=paper_help,
            aliases=aliases,
        )
        if prepare is not None:
            cfg = config.check(prepare(cfg, args), flags=args.flags)
        return args, cfg

    def main(argv: Sequence[str] | None = None) -> None:
        args, cfg = parse_args(argv)
        out = run_dir(args.out, folder(cfg, args) if folder else name, args.quick)
        run = (lambda c: compute(c, out, args)) if options is not None else compute
        out, cfg, _, summary = run_study(name, args, cfg, run, plot, out=out, artifacts=artifacts)
        for line in report(cfg, summary) if report is not None else ():
            print(f"{name}: {line}")
        print(f"{name}: results in {out}")

    main.__doc__ = f"Runs the {name} study (`python -m studies.{name} --help`)."
    wrapped = command(main)
    wrapped.parse = parse_args
    return wrapped
