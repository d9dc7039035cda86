"""sandbox.config and the studies' command line: every Config field a flag, its constraint
declared where it is defined and checked in one place, errors in one line naming the flag."""

import contextlib
import dataclasses
import importlib
import io
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Annotated, Literal

import pytest

from sandbox import cli, config

ROOT = Path(__file__).parents[1]
STUDIES = sorted(p.stem for p in (ROOT / "studies").glob("*.py") if p.stem != "__init__")


@dataclasses.dataclass(frozen=True)
class Toy(config.Checked):
    seed: int = config.seed()  # the seed
    steps: int = config.count(10, 1000)  # updates
    lr: float = config.field(0.1, gt=0, lt=1)  # the step size
    name: Literal["a", "b"] = "a"  # which one
    lrs: tuple[float, ...] = config.field((0.1, 0.2), gt=0, increasing=True)  # a sweep
    pair: tuple[Annotated[int, config.bounds(1, 9)], float] = (1, 0.5)  # mixed bounds
    size: int | None = config.field(None, 1, 100)  # None: all
    lo: float = 0.0  # the lower end
    hi: float = 1.0  # the upper end

    RELATIONS = (config.relation("lo < hi", lambda c: c.lo < c.hi),)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "`steps` must be an integer in [1, 1000], got 0"),
        ({"steps": 1001}, "`steps` must be an integer in [1, 1000], got 1001"),
        ({"steps": 2.0}, "`steps` must be an integer in [1, 1000], got 2.0"),
        ({"steps": True}, "`steps` must be an integer"),
        ({"lr": 1.0}, "`lr` must be a finite number in (0, 1), got 1.0"),
        ({"lr": float("nan")}, "`lr` must be a finite number in (0, 1), got nan"),
        ({"name": "c"}, "`name` must be one of a, b, got 'c'"),
        ({"lrs": ()}, "`lrs` must be a non-empty list, increasing, each a finite number > 0"),
        ({"lrs": (0.2, 0.1)}, "`lrs` must be a non-empty list, increasing"),
        ({"pair": (10, 0.5)}, "`pair` must be 2 values (an integer in [1, 9]; a finite number)"),
        ({"size": 0}, "`size` must be an integer in [1, 100] or None, got 0"),
        ({"seed": -1}, "`seed` must be an integer in [0, 4294967295], got -1"),
        ({"lo": 2.0}, "`lo`, `hi`: must satisfy lo < hi, got lo = 2.0, hi = 1.0"),
    ],
)
def test_each_constraint_is_one_error_naming_the_field(kwargs, message):
    with pytest.raises(ValueError) as e:
        Toy(**kwargs)
    assert str(e.value).startswith(message), str(e.value)


def test_valid_values_pass_and_deferred_configs_are_checked_later():
    assert Toy(steps=1000, lr=0.5, name="b", lrs=(1.0,), pair=(9, -3.0), size=100).steps == 1000
    with config.deferred():
        bad = Toy(steps=0)  # built unchecked: the command line checks it naming the flag
    with pytest.raises(ValueError, match="`--steps` must be"):
        config.check(bad, flags={"steps": "--steps"})


def _config_types(cls):
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _ints_unbounded(tp, b) -> bool:
    """Whether an integer somewhere in `tp` lacks an upper bound."""
    if typing.get_origin(tp) is Annotated:
        base, *extra = typing.get_args(tp)
        own = [e for e in extra if isinstance(e, config.Bounds)]
        return _ints_unbounded(base, own[0] if own else b)
    if tp is int:
        return b.le is None and b.lt is None
    return any(_ints_unbounded(a, b) for a in typing.get_args(tp) if a is not Ellipsis)


@pytest.mark.parametrize("name", STUDIES)
def test_every_count_has_an_upper_bound_a_run_can_reach(name):
    cls = importlib.import_module(f"studies.{name}").Config
    for f, tp in _config_types(cls):
        b = f.metadata.get("sandbox.config", config.Bounds())
        assert not _ints_unbounded(tp, b), f"{name}.{f.name} has no upper bound"


def _help(name: str, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")  # one help line per flag
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        importlib.import_module(f"studies.{name}").main([*argv, "--help"])
    assert e.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "argv", "preset"),
    [
        ("momentum", (), "Config"),
        ("momentum", ("--quick",), "QUICK"),
        ("fractal", ("--scale", "paper"), "PAPER"),
    ],
)
def test_help_shows_the_defaults_of_the_chosen_preset(name, argv, preset, monkeypatch):
    study = importlib.import_module(f"studies.{name}")
    cfg = study.Config() if preset == "Config" else getattr(study, preset)
    field = {"momentum": "rate_num_lrs", "fractal": "grid_n"}[name]
    assert getattr(cfg, field) != getattr(study.Config() if argv else study.QUICK, field)
    text = _help(name, monkeypatch, *argv)
    line = next(ln for ln in text.splitlines() if ln.startswith(f"  {config.flag(field)} "))
    assert line.rstrip().endswith(f"(default: {getattr(cfg, field)})"), line
    assert "`--quick --help` shows its values" in text


@pytest.mark.parametrize("name", STUDIES)
def test_help_lists_every_field_with_its_type_default_and_meaning(name, monkeypatch):
    text = _help(name, monkeypatch)
    study = importlib.import_module(f"studies.{name}")
    for f in dataclasses.fields(study.Config):
        flag = config.flag(f.name)
        # The flag with its type, then its help (beside it or below): a meaning, the default.
        m = re.search(rf"^  {re.escape(flag)}[ ,\n]", text, re.M)
        assert m is not None, f"{name}: {flag} is not in --help"
        entry = text[m.start() : text.index("(default: ", m.start())]
        split = entry.split("\n", 1) if "\n" in entry else re.split(" {2,}", entry, maxsplit=1)
        meaning = split[1] if len(split) == 2 else ""
        assert len(meaning.strip()) >= 3, f"{name}: {flag} has no meaning in --help"
    for common in ("--quick", "--out", "--plot-only", "--store"):
        assert f"  {common}" in text, common


def _readme_overrides() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    return {m[0]: m[1].split() for m in re.findall(r'`make (\w+)`<br>`ARGS="([^"]*)"`', text)}


@pytest.mark.parametrize("name", STUDIES)
def test_the_readme_override_of_each_study_is_a_valid_command_line(name):
    overrides = _readme_overrides()
    assert name in overrides, f"README's study table has no override for {name}"
    study = importlib.import_module(f"studies.{name}")
    args, cfg = study.main.parse(overrides[name])
    assert args.typed and all(getattr(cfg, f) != getattr(args.preset, f) for f in args.typed)


@pytest.mark.parametrize("flag", ["--gd-lrs", "--lrs"])  # the field's flag, its alias
@pytest.mark.parametrize("value", ["0", "fast"])  # out of its bounds, not a number
def test_an_error_names_the_flag_as_typed_alias_or_not(flag, value, tmp_path, capsys):
    eos = importlib.import_module("studies.edge_of_stability")
    with pytest.raises(SystemExit) as e:
        eos.main(["--quick", "--out", str(tmp_path), flag, value, "0.1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"`{flag}`" in err, err
    other = {"--gd-lrs": "--lrs", "--lrs": "--gd-lrs"}[flag]
    assert f"`{other}`" not in err and not any(tmp_path.iterdir())


@pytest.mark.parametrize("args", [["--lr", "1e-200"], ["--radius", "1e200"]])
def test_a_relation_that_cannot_be_evaluated_is_not_satisfied(args):
    # saddle's escape-time relation divides by lr^2 and exponentiates the radius: a
    # ZeroDivisionError or OverflowError there is the relation failing, in one line.
    saddle = importlib.import_module("studies.saddle")
    with pytest.raises(ValueError, match=rf"`{args[0]}`.*: must satisfy 2 <= median") as e:
        saddle.main.parse(["--quick", *args])
    assert "\n" not in str(e.value)


def test_flags_set_fields_over_the_chosen_preset():
    saddle = importlib.import_module("studies.saddle")
    argv = ["--quick", "--lr", "0.05", "--num_runs", "4096", "--escape-lrs", "0.05", "0.1"]
    args, cfg = saddle.main.parse(argv)
    assert cfg == dataclasses.replace(saddle.QUICK, lr=0.05, num_runs=4096, escape_lrs=(0.05, 0.1))
    assert args.typed == {"lr": "--lr", "num_runs": "--num_runs", "escape_lrs": "--escape-lrs"}
    # The same with `=`, a tuple comma-separated.
    argv = ["--quick", "--lr=0.05", "--num_runs=4096", "--escape-lrs=0.05,0.1"]
    assert saddle.main.parse(argv) == (args, cfg)
    _, cfg = saddle.main.parse(["--escape-lrs", "0.05,0.1"])  # comma-separated too
    assert cfg == dataclasses.replace(saddle.Config(), escape_lrs=(0.05, 0.1))
    fractal = importlib.import_module("studies.fractal")
    args, cfg = fractal.main.parse(["--scale", "paper", "--width", "12"])
    assert cfg == dataclasses.replace(fractal.PAPER, width=12) and args.scale == "paper"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_runs", "0"], "error: `--num_runs` must be an integer in [1, 16777216], got 0"),
        (["--lr", "0.3"], "error: `--lr` must be a finite number in (0, 0.25), got 0.3"),
        (["--lr", "abc"], "error: `--lr`: could not convert string to float: 'abc'"),
        (["--escape-lrs", "0.1,0.6"], "error: `--escape-lrs` must be a non-empty list"),
        (["--eps-min", "0.2"], "must satisfy eps_min < eps_max"),
        (["--bogus", "1"], "error: unrecognized arguments: --bogus 1"),
        (["--scale", "paper"], "error: unrecognized arguments: --scale paper"),
    ],
)
def test_bad_flags_are_one_line_exit_status_2_and_nothing_written(argv, message, tmp_path, capsys):
    saddle = importlib.import_module("studies.saddle")
    with pytest.raises(SystemExit) as e:
        saddle.main(["--quick", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_bad_choice_names_the_flag_as_typed(capsys):
    study = importlib.import_module("studies.train_resnet")
    with pytest.raises(SystemExit) as e:
        study.main(["--quick", "--shortcut", "C"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.endswith("error: `--shortcut` must be one of A, B, none, got 'C'")


def test_bad_flag_from_the_shell_is_one_line_without_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "studies.gradient", "--quick", "--grid_n", "1"]
        + ["--out", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: `--grid_n` must be an integer in [2, 8192], got 1"
    assert not (tmp_path / "run").exists()


def test_parse_alone_gives_the_common_options(tmp_path):
    gradient = importlib.import_module("studies.gradient")
    presets = {"default": gradient.Config(), "quick": gradient.QUICK}
    args, cfg = cli.parse("gradient", None, presets, ["--quick", "--out", str(tmp_path)])
    assert (args.quick, args.out, args.plot_only, args.store) == (True, tmp_path, False, None)
    assert cfg == gradient.QUICK and args.typed == {}
