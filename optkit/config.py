"""Typed, frozen option sets shared by passes and backends: ``option(...)`` fields, validation, description.

Neutral ground: passes (``optkit.passes``) and backends (``optkit.backends``) both build their configs from here,
so neither imports the other.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import RecipeError


def option(default: Any, doc: str, choices: tuple | None = None, **kw) -> Any:
    """A config field with a one-line description and optional allowed values."""
    meta = {"doc": doc}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class PassConfig:
    """Base for pass configs. Subclasses are frozen dataclasses built with ``option(...)``."""

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "") -> "PassConfig":
        data = dict(data or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        for key in data:
            if key not in fields:
                raise RecipeError(f"{where}unknown option {key!r}",
                                  f"allowed options: {', '.join(sorted(fields)) or '(none)'}")
        values = {}
        for name, value in data.items():
            values[name] = _coerce(value, hints[name], f"{where}option {name!r}", fields[name].metadata.get("choices"))
        cfg = cls(**values)
        problem = cfg.check()
        if problem:
            raise RecipeError(f"{where}{problem}", "fix the value in the recipe")
        return cfg

    def check(self) -> str | None:
        """Cross-field or range checks; return what is wrong (one line) or None."""
        return None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> list[dict]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append({"name": f.name, "type": _type_name(hints[f.name]), "default": default,
                        "choices": list(f.metadata.get("choices", ())), "doc": f.metadata.get("doc", "")})
        return out


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where: str, choices):
    """Check ``value`` against the annotation (bool/int/float/str/list/dict/Optional/Union)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, choices)
            except RecipeError as e:
                errors.append(e)
        raise RecipeError(f"{where} must be {_type_name(tp)}, got {value!r}",
                          f"allowed values: {', '.join(map(str, choices))}" if choices else "fix the value")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where} must be a list, got {value!r}", "write it as [a, b, ...]")
        return tuple(_coerce(v, args[0], where, None) for v in value) if origin is tuple else \
            [_coerce(v, args[0], where, None) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where} must be a mapping, got {value!r}", "write it as {key: value}")
        return {_coerce(k, args[0], where, None): _coerce(v, args[1], where, None) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, got {value!r}", "use true or false")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, got {value!r}", "use a whole number")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{where} must be a number, got {value!r}", "use a number")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, got {value!r}",
                              f"allowed values: {', '.join(map(str, choices))}" if choices else "quote the value")
    if choices is not None and value not in choices:
        raise RecipeError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}",
                          "pick an allowed value")
    return value
