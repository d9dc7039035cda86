"""Study configs as data: each field declares its constraint where it is defined, checked here.

A study's `Config` is a frozen dataclass that derives from `Checked`. Each field states what it
accepts beside its default, and its type says the rest:

    num_runs: int = config.field(8192, 1, 2**24)  # runs per method
    lr: float = config.field(0.1, gt=0, lt=0.25)  # alpha of the paths
    data: Literal["digits", "cifar10"] = "digits"  # choices come from the Literal
    escape_lrs: tuple[float, ...] = config.field((0.05, 0.1), gt=0, lt=0.5)  # each element

Bounds on a tuple apply to each number in it; `Annotated[T, config.bounds(...)]` gives an
element of a mixed tuple bounds of its own. Every integer field has an upper bound that a run
can reach. A relation between fields is declared once, as a `RELATIONS` tuple of
`config.relation(text, predicate)` on the class. `check` (run when a config is built, and by
the command line with the flags as typed) raises one ValueError naming the field and what was
expected.
"""

import contextlib
import contextvars
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

SEED_MAX = 2**32 - 1  # PRNG keys take 32-bit seeds on every backend
_KEY = "sandbox.config"


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a field (or each number in it) accepts beyond its type."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None
    min_len: int = 1  # tuples of any length: at least this many elements
    max_len: int | None = None
    distinct: bool = False  # tuples: no element twice
    increasing: bool = False  # tuples: strictly increasing
    rule: tuple[Callable[[Any], bool], str] | None = None  # (predicate on the value, its text)

    def interval(self) -> str:
        lo = f"[{_num(self.ge)}" if self.ge is not None else None
        lo = f"({_num(self.gt)}" if self.gt is not None else lo
        hi = f"{_num(self.le)}]" if self.le is not None else None
        hi = f"{_num(self.lt)})" if self.lt is not None else hi
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}"
        if hi:
            return f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}"
        return ""

    def holds(self, x: float) -> bool:
        return (
            (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )


def bounds(
    ge: float | None = None,
    le: float | None = None,
    *,
    gt: float | None = None,
    lt: float | None = None,
    **kw: Any,
) -> Bounds:
    """`Bounds` for `Annotated[T, ...]` and `field`: `bounds(1, 100)` is [1, 100]."""
    return Bounds(ge=ge, le=le, gt=gt, lt=lt, **kw)


def field(
    default: Any,
    ge: float | None = None,
    le: float | None = None,
    *,
    gt: float | None = None,
    lt: float | None = None,
    **kw: Any,
) -> Any:
    """A dataclass field with its default and its bounds (see `Bounds`)."""
    b = Bounds(ge=ge, le=le, gt=gt, lt=lt, **kw)
    return dataclasses.field(default=default, metadata={_KEY: b})


def count(default: int, hi: int, lo: int = 1) -> Any:
    """An integer field in [lo, hi]: a count, with an upper bound that a run can reach."""
    return field(default, lo, hi)


def seed(default: int = 0) -> Any:
    """The PRNG seed: an integer in [0, 2^32 - 1]."""
    return field(default, 0, SEED_MAX)


@dataclasses.dataclass(frozen=True)
class Relation:
    """A relation between fields, written once: `text` is what `predicate(config)` checks."""

    text: str
    predicate: Callable[[Any], bool]

    def fields(self, names: Iterator[str] | list[str]) -> list[str]:
        """The fields the predicate reads, in the order of `names`."""
        used = set(self.predicate.__code__.co_names)
        return [n for n in names if n in used]


def relation(text: str, predicate: Callable[[Any], bool]) -> Relation:
    """`config.relation("eps_min < eps_max", lambda c: c.eps_min < c.eps_max)`."""
    return Relation(text, predicate)


_deferred: contextvars.ContextVar[bool] = contextvars.ContextVar("deferred", default=False)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Configs built inside are not checked (the command line checks them after, naming the
    flags as typed)."""
    token = _deferred.set(True)
    try:
        yield
    finally:
        _deferred.reset(token)


class Checked:
    """Base of a study's Config: building one checks every field and relation (`check`)."""

    RELATIONS: tuple[Relation, ...] = ()

    def __post_init__(self) -> None:
        if not _deferred.get():
            check(self)


def flag(name: str) -> str:
    """The command-line flag of field `name`: `num_runs` -> `--num-runs`."""
    return "--" + name.replace("_", "-")


def check(cfg: Any, flags: Mapping[str, str] | None = None) -> Any:
    """Checks every field of `cfg` against its type and bounds, then each relation of its
    class; returns `cfg`. A failure is one ValueError naming the field (as `flags[name]`
    where given: the flag as typed) and what was expected."""
    cls = type(cfg)
    hints = _hints(cls)

    def label(name: str) -> str:
        return f"`{flags.get(name, flag(name))}`" if flags is not None else f"`{name}`"

    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        b = f.metadata.get(_KEY, Bounds())
        expected = _expected(hints[f.name], b)
        if not _ok(hints[f.name], value, b):
            raise ValueError(f"{label(f.name)} must be {expected}, got {_show(value)}")
    names = [f.name for f in dataclasses.fields(cls)]
    for r in getattr(cls, "RELATIONS", ()):
        try:
            holds = r.predicate(cfg)
        except ArithmeticError:  # (overflow, a division by zero): values it cannot relate
            holds = False
        if not holds:
            used = r.fields(names)
            got = ", ".join(f"{n} = {_show(getattr(cfg, n))}" for n in used)
            raise ValueError(
                f"{', '.join(label(n) for n in used)}: must satisfy {r.text}, got {got}"
            )
    return cfg


def describe(cls: type) -> dict[str, str]:
    """{field: what it accepts} for every field of a Config class."""
    hints = _hints(cls)
    return {
        f.name: _expected(hints[f.name], f.metadata.get(_KEY, Bounds()))
        for f in dataclasses.fields(cls)
    }


# ----------------------------------------------------------------------------- internals


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _num(x: float) -> str:
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e7):
        return str(int(x))
    return f"{x:g}"


def _show(v: Any) -> str:
    return repr(v)


def _split(tp: Any, b: Bounds) -> tuple[Any, Bounds]:
    """(the type without Annotated, the bounds that apply to it)."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extra = typing.get_args(tp)
        own = [e for e in extra if isinstance(e, Bounds)]
        return base, own[0] if own else b
    return tp, b


def _optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(
        v, bool | np.bool_
    )


def _ok(tp: Any, v: Any, b: Bounds) -> bool:
    tp, b = _split(tp, b)
    tp, optional = _optional(tp)
    if v is None:
        return optional
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        ok = any(v == c and type(v) is type(c) for c in typing.get_args(tp))
    elif tp is bool:
        ok = isinstance(v, bool | np.bool_)
    elif tp is int:
        ok = _is_int(v) and b.holds(v)
    elif tp is float:
        ok = _is_num(v) and math.isfinite(v) and b.holds(v)
    elif tp is str:
        ok = isinstance(v, str)
    elif origin is tuple:
        ok = _tuple_ok(tp, v, b)
    else:
        ok = isinstance(v, tp)
    return ok and (b.rule is None or origin is tuple or bool(b.rule[0](v)))


def _tuple_ok(tp: Any, v: Any, b: Bounds) -> bool:
    if not isinstance(v, tuple | list):
        return False
    args = typing.get_args(tp)
    inner = Bounds(ge=b.ge, le=b.le, gt=b.gt, lt=b.lt)
    if len(args) == 2 and args[1] is Ellipsis:
        n_ok = len(v) >= b.min_len and (b.max_len is None or len(v) <= b.max_len)
        ok = n_ok and all(_ok(args[0], e, inner) for e in v)
    else:
        ok = len(v) == len(args) and all(_ok(t, e, inner) for t, e in zip(args, v, strict=True))
    if ok and b.distinct:
        ok = len(set(v)) == len(v)
    if ok and b.increasing:
        ok = all(x < y for x, y in zip(v, v[1:], strict=False))
    return ok and (b.rule is None or bool(b.rule[0](v)))


def _expected(tp: Any, b: Bounds) -> str:
    tp, b = _split(tp, b)
    tp, optional = _optional(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        text = "one of " + ", ".join(str(c) for c in typing.get_args(tp))
    elif tp is bool:
        text = "true or false"
    elif tp is int:
        text = " ".join(filter(None, ["an integer", b.interval()]))
    elif tp is float:
        text = " ".join(filter(None, ["a finite number", b.interval()]))
    elif tp is str:
        text = "a string"
    elif origin is tuple:
        text = _tuple_expected(tp, b)
    else:
        text = f"a {getattr(tp, '__name__', tp)}"
    if b.rule is not None and origin is not tuple:
        text = f"{text}, {b.rule[1]}"
    return f"{text} or None" if optional else text


def _tuple_expected(tp: Any, b: Bounds) -> str:
    args = typing.get_args(tp)
    inner = Bounds(ge=b.ge, le=b.le, gt=b.gt, lt=b.lt)
    extra = [w for w, on in (("distinct", b.distinct), ("increasing", b.increasing)) if on]
    if len(args) == 2 and args[1] is Ellipsis:
        if b.max_len is not None and b.max_len == b.min_len:
            size = f"{b.min_len}"
        elif b.max_len is not None:
            size = f"{b.min_len} to {b.max_len}"
        else:
            size = "a non-empty list" if b.min_len == 1 else f"at least {b.min_len}"
        size = size if size.startswith("a ") else f"a list of {size}"
        also = ", " + " and ".join(extra) if extra else ""
        text = f"{size}{also}, each {_expected(args[0], inner)}"
    else:
        parts = "; ".join(_expected(t, inner) for t in args)
        text = f"{len(args)} values ({parts}){', ' + ' and '.join(extra) if extra else ''}"
    if b.rule is not None:
        text = f"{text}, {b.rule[1]}"
    return text
