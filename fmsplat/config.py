"""Typed, documented settings for every configurable part of fmsplat (3DGS training, MCMC, each field
method); torch-free and below everything else.

A settings class is a dataclass deriving from `Settings` whose fields are `setting(default, doc, range)`:
construction converts every field to its declared type and checks its range, naming the field and what
it accepts in a one-line `ConfigError`; `resume_free` marks the fields a run may resume with another
value; `parse_pairs` reads `KEY=VALUE` text by the declared types; `settings_lines` lists them for help.
"""

from __future__ import annotations

import functools
import json
import math
import types
import typing
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import ClassVar, Literal

from fmsplat.errors import FmsplatError


class ConfigError(FmsplatError, ValueError):
    """A setting that does not parse, is unknown, or lies outside its allowed values."""


def setting(default, doc: str, *, ge=None, gt=None, le=None, lt=None, resume_free: bool = False):
    """A settings field: default, docstring, allowed range (ge/gt/le/lt), and whether a run may resume
    with another value (one that does not change the result: checkpoint cadence, threads, reporting)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "resume_free": resume_free}
    if isinstance(default, dict):
        return field(default_factory=lambda d=default: dict(d), metadata=meta)
    return field(default=default, metadata=meta)


class _Bad(Exception):
    """Why a value does not fit a field (turned into a ConfigError naming the field)."""


def _convert(value, tp, from_text: bool, sep: str = ","):
    """`value` (a Python value, or text from the command line when from_text) as type `tp`, or _Bad(why).
    Text of a tuple is `sep`-separated; tuples inside it are ':'-separated."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType) and type(None) in args:  # X | None
        if value is None or (from_text and isinstance(value, str) and value.lower() in ("none", "auto", "")):
            return None
        return _convert(value, next(a for a in args if a is not type(None)), from_text, sep)
    if origin is Literal:
        if value not in args:
            raise _Bad(f"must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if tp is bool:
        if from_text and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise _Bad(f"must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        what = "an integer" if tp is int else "a finite number"
        try:
            value = tp(value) if from_text else value
        except ValueError:
            raise _Bad(f"must be {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float) if tp is float else int) \
                or not math.isfinite(value):
            raise _Bad(f"must be {what}, got {value!r}")
        return tp(value)
    if tp is str:
        return str(value)
    if origin is dict:  # dict[str, V]; text (or a str value): "key=V,key=V"
        if isinstance(value, str):
            pairs = [item.strip() for item in value.split(",") if item.strip()]
            value = {}
            for item in pairs:
                key, eq, v = item.partition("=")
                if not eq or not key.strip():
                    raise _Bad(f"entry '{item}' is not MODEL={args[1].__name__}")
                value[key.strip()] = _convert(v, args[1], True)
            return value
        if not isinstance(value, dict):
            raise _Bad(f"must be a table MODEL=VALUE,..., got {value!r}")
        return {str(k): _convert(v, args[1], False) for k, v in value.items()}
    if origin is tuple:
        text = isinstance(value, str)
        items = [part.strip() for part in value.split(sep) if part.strip()] if text else value
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...], e.g. FMGS grids "12:16:128,12:128:512"
            if not isinstance(items, (list, tuple)):
                raise _Bad(f"must be a list, got {value!r}")
            return tuple(_convert(v, args[0], text, ":") for v in items)
        if not isinstance(items, (list, tuple)) or len(items) != len(args):  # a fixed tuple, e.g. an RGB triple
            raise _Bad(f"must be {len(args)}-tuples ({sep.join(['N'] * len(args))},...), got {value!r}"
                       if sep == ":" else f"must be {len(args)} values ({','.join(['N'] * len(args))}), got {value!r}")
        return tuple(_convert(v, a, isinstance(v, str)) for v, a in zip(items, args))
    return value


def _in_range(value, meta) -> str | None:
    ge, gt, le, lt = meta["ge"], meta["gt"], meta["le"], meta.get("lt")
    lo = f"[{ge}" if ge is not None else (f"({gt}" if gt is not None else "(-inf")
    hi = f"{le}]" if le is not None else (f"{lt})" if lt is not None else "inf)")
    for v in (value.values() if isinstance(value, dict) else [value]):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if (ge is not None and v < ge) or (gt is not None and v <= gt) or (le is not None and v > le) \
                or (lt is not None and v >= lt):
            return f"must lie in {lo}, {hi}, got {v}"
    return None


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


@dataclass
class Settings:
    """Base of every settings class: typed, range-checked fields (see `setting`); `label` names the
    class in errors ("train config: steps must lie in [1, inf), got 0")."""

    label: ClassVar[str] = "config"
    error: ClassVar[type[Exception]] = ConfigError

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in fields(self):
            try:
                value = _convert(getattr(self, f.name), hints[f.name], False)
                why = _in_range(value, f.metadata) if f.metadata else None
                if why:
                    raise _Bad(why)
            except _Bad as bad:
                raise self.error(f"{self.label}: {f.name} {bad}") from None
            object.__setattr__(self, f.name, value)
        problems = self.check()
        if problems:
            raise self.error(f"{self.label}: " + "; ".join(problems))

    def check(self) -> list[str]:  # rules between fields (override)
        return []

    @classmethod
    def resume_free(cls) -> frozenset[str]:
        """The fields a run may resume with other values of."""
        return frozenset(f.name for f in fields(cls) if f.metadata.get("resume_free"))

    def resume_identity(self) -> dict:
        """The settings a checkpoint must share with the run that resumes it (JSON types)."""
        free = self.resume_free()
        return {k: v for k, v in self.to_json().items() if k not in free}

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def type_name(tp) -> str:
    """A field type as help and errors show it (int, 3dgs|mcmc, MODEL=float,..., ...)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return "|".join(type_name(a) for a in args if a is not type(None)) + "|auto"
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is dict:
        return f"MODEL={args[1].__name__},..."
    if origin is tuple:
        return "L:MIN:MAX,..." if args[-1] is Ellipsis else ",".join(type_name(a) for a in args)
    return getattr(tp, "__name__", str(tp))


def field_type(cls, name: str):
    """The declared type of field `name` of settings class `cls`."""
    return _hints(cls)[name]


def default_of(f: Field):
    return f.default if f.default is not MISSING else f.default_factory()


def parse_value(cls, name: str, text: str, flag: str):
    """Command-line text for field `name` of `cls`, read by its declared type; a ConfigError naming
    `flag` and what it accepts otherwise (ranges are checked when the settings are built)."""
    tp = _hints(cls)[name]
    try:
        return _convert(text.strip(), tp, True)
    except _Bad as bad:
        raise cls.error(f"{flag} ({type_name(tp)}): {bad}") from None


def parse_pairs(cls, pairs: list[str], flag: str = "--opt", owner: str | None = None) -> dict:
    """KEY=VALUE pairs -> {field: value} read by each field's declared type; a pair that is not
    KEY=VALUE, an unknown field or a value that does not parse is a ConfigError naming the field."""
    known = [f.name for f in fields(cls)]
    out = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        key = key.strip()
        if not eq:
            raise cls.error(f"{flag} '{pair}' is not KEY=VALUE")
        if key not in known:
            raise cls.error(f"{flag} {key}: {owner or cls.label} has no such setting; known: {', '.join(known)}")
        out[key] = parse_value(cls, key, text, f"{flag} {key}")
    return out


def shown(value) -> str:
    """A default as the command line would write it."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, tuple):
        return ",".join(":".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in value)
    return str(value)


def settings_lines(cls, other_defaults: dict | None = None, other_name: str = "") -> list[str]:
    """One help line per field: NAME (type; default[, `other_name` default]): doc."""
    lines = []
    for f in fields(cls):
        extra = f", {other_name} {shown(other_defaults[f.name])}" if other_defaults and f.name in other_defaults else ""
        lines.append(f"  {f.name} ({type_name(_hints(cls)[f.name])}; {shown(default_of(f))}{extra}): {f.metadata['doc']}")
    return lines


__all__ = ["ConfigError", "Settings", "default_of", "field_type", "parse_pairs", "parse_value", "setting",
           "settings_lines", "shown", "type_name"]
