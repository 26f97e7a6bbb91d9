"""Typed settings: fields declared once, values normalized and checked with clear errors.

A setting is a dataclass field made by :func:`setting`: its kind ("int", "float", "list[int]",
...), an optional check and a one-line help. :func:`normalize` turns a value into the kind's
canonical form (an int 0 for a float setting becomes 0.0; a list becomes a tuple) or says what
was wrong and what is accepted. The protocol, the run and the notebooks' configs are built
from settings, and the command line's flags are generated from them.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from numbers import Integral, Real
from typing import Any, Callable, Iterable

KINDS = ("str", "int", "float", "bool", "str|None", "int|None", "list[int]", "list[float]", "list[str]")


def setting(default, kind: str, help: str, *, choices: Callable[[], Iterable] | tuple = (),
            check: Callable[[str, Any], None] | None = None, since: int = 1, param: bool = True,
            flag: bool = True):
    """A dataclass field declared as a setting.

    ``choices``: the accepted values (or a function returning them, for registries that grow);
    ``check(name, value)`` raises on a bad value; ``since``: the record schema that introduced
    it (fields added later enter a run id only when they differ from their default, so that the
    ids of older records keep meaning what they meant); ``param``: a notebook parameter;
    ``flag``: a command-line flag.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    meta = {"kind": kind, "help": help, "choices": choices, "check": check, "since": since,
            "param": param, "flag": flag}
    if isinstance(default, list):
        default = tuple(default)
    return field(default=default, metadata=meta)


def settings_of(cls) -> list:
    """The dataclass fields of ``cls`` declared with :func:`setting`, in order."""
    return [f for f in fields(cls) if "kind" in f.metadata]


def choices_of(f) -> tuple:
    c = f.metadata["choices"]
    return tuple(c() if callable(c) else c)


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _number(name: str, value):
    """A finite real number from a number or a numeric string (YAML 1.1, which papermill's
    parameter files use, reads ``1e-3`` as text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise TypeError(f"{name} must be a number, got {value!r} (str)") from None
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be float, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def normalize(name: str, kind: str, value):
    """``value`` in the canonical form of ``kind``; TypeError naming what is accepted."""
    def bad(expected):
        return TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if kind.endswith("|None"):
        return None if value is None else normalize(name, kind[:-5], value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad("str")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("bool (True or False)")
        return value
    if kind == "int":
        if not _is_int(value):
            raise bad("int")
        return int(value)
    if kind == "float":
        return _number(name, value)
    if kind.startswith("list["):
        item = kind[5:-1]
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad(kind)
        try:
            return tuple(normalize(name, item, v) for v in value)
        except (TypeError, ValueError) as exc:  # say the list's kind and the bad item
            raise type(exc)(f"{name} must be {kind}: {exc}") from None
    raise ValueError(f"unknown kind {kind!r}")


def check_settings(obj) -> None:
    """Normalize every setting of the (frozen) dataclass ``obj`` in place, then check it:
    kind, choices, the field's own check. Raises TypeError or ValueError naming the field."""
    for f in settings_of(type(obj)):
        value = normalize(f.name, f.metadata["kind"], getattr(obj, f.name))
        object.__setattr__(obj, f.name, value)
        accepted = choices_of(f)
        items = value if isinstance(value, tuple) else (value,)
        for v in items:
            if accepted and v is not None and v not in accepted:
                what = f.name[:-1] if f.metadata["kind"].startswith("list") else f.name
                raise ValueError(f"unknown {what} {v!r}; valid {plural(what)}: "
                                 f"{', '.join(map(str, accepted))}")
        if f.metadata["check"] is not None:
            f.metadata["check"](f.name, value)


#: Plurals that are not the word + "s".
_PLURALS = {"corpus": "corpora", "phase": "phases", "data set": "data sets"}


def plural(word: str) -> str:
    return _PLURALS.get(word, word + ("es" if word.endswith(("s", "x", "ch")) else "s"))


# checks, for setting(check=...)
def positive(name: str, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def non_negative(name: str, value) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def fraction(name: str, value) -> None:
    """In [0, 1): a momentum, an Adam β."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def distinct(name: str, values) -> None:
    repeated = sorted({v for v in values if list(values).count(v) > 1}, key=str)
    if repeated:
        raise ValueError(f"{name} lists {', '.join(map(str, repeated))} more than once; each "
                         "value may appear once")


def all_of(*checks):
    def check(name, value):
        for c in checks:
            c(name, value)
    return check


def each(check):
    """A check applied to every item of a list setting."""
    def check_items(name, values):
        for v in values:
            check(name, v)
    return check_items


def default_of(f):
    return f.default if f.default is not MISSING else f.default_factory()
