"""Typed, deep-frozen option sets shared by passes and backends: ``option(...)`` fields, validation, description.

Neutral ground: passes (``optkit.passes``) and backends (``optkit.backends``) both build their configs from here,
so neither imports the other.

A config is immutable all the way down: list values become tuples, mappings become ``FrozenDict`` (so
``cfg.skip.append`` fails and ``hash(cfg)`` works), whether it is built by ``from_dict`` (a recipe) or directly.
Ranges are declared once, in ``option(..., min=, max=, gt=, lt=)``: ``from_dict`` and direct construction both
check them, and ``describe()`` (``optkit passes``) shows them. ``check()`` is left for checks across fields.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import RecipeError


class FrozenDict(dict):
    """A read-only, hashable dict: the mapping-valued options (per-layer ratios, profiles, shapes)."""

    def _readonly(self, *args, **kwargs):
        raise TypeError("config options are read-only: build a new config (dataclasses.replace) instead")

    __setitem__ = __delitem__ = __ior__ = _readonly  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: repr(kv[0]))))

    def __reduce__(self):
        return (FrozenDict, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def freeze(value: Any) -> Any:
    """Lists and tuples -> tuples, dicts -> FrozenDict, recursively; anything else unchanged."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    return value


def thaw(value: Any) -> Any:
    """The plain JSON/YAML form of a frozen value: tuples -> lists, FrozenDict -> dict."""
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    return value


def option(default: Any, doc: str, choices: tuple | None = None, *, min: float | None = None,  # noqa: A002
           max: float | None = None, gt: float | None = None, lt: float | None = None, **kw) -> Any:  # noqa: A002
    """A config field with a one-line description, optional allowed values and an optional range: ``min``/``max``
    inclusive, ``gt``/``lt`` exclusive. For a list or mapping option the range applies to each item / value."""
    meta: dict = {"doc": doc}
    if choices is not None:
        meta["choices"] = tuple(choices)
    bounds = {k: v for k, v in (("min", min), ("max", max), ("gt", gt), ("lt", lt)) if v is not None}
    if bounds:
        meta["range"] = bounds
    if isinstance(default, dict):
        return field(default_factory=lambda d=default: freeze(d), metadata=meta, **kw)
    return field(default=freeze(default), metadata=meta, **kw)


def range_text(bounds: dict) -> str:
    """'[0, 1)', '>= 1', '(0, 100]': the range as optkit passes prints it ('' without one)."""
    lo = ("[", bounds["min"]) if "min" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    hi = (bounds["max"], "]") if "max" in bounds else (bounds["lt"], ")") if "lt" in bounds else None
    if lo and hi:
        return f"{lo[0]}{lo[1]:g}, {hi[0]:g}{hi[1]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]:g}"
    if hi:
        return f"{'<=' if hi[1] == ']' else '<'} {hi[0]:g}"
    return ""


def _out_of_range(value, bounds: dict) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and math.isnan(value):
        return True
    return (("min" in bounds and value < bounds["min"]) or ("max" in bounds and value > bounds["max"])
            or ("gt" in bounds and value <= bounds["gt"]) or ("lt" in bounds and value >= bounds["lt"]))


def _range_problem(name: str, value, bounds: dict) -> str | None:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, tuple) else None
    if items is None:
        if _out_of_range(value, bounds):
            return f"option {name!r} must be {_range_words(bounds)}, got {value!r}"
        return None
    bad = {k: v for k, v in items if _out_of_range(v, bounds)}
    if bad:
        shown = bad if isinstance(value, dict) else list(bad.values())
        return f"option {name!r} needs values {_range_words(bounds)}, got {shown!r}"
    return None


def _range_words(bounds: dict) -> str:
    text = range_text(bounds)
    return text if text.startswith((">", "<")) else f"in {text}"


@dataclass(frozen=True)
class PassConfig:
    """Base for pass and backend configs. Subclasses are frozen dataclasses built with ``option(...)``."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            frozen = freeze(value)
            if frozen is not value:
                object.__setattr__(self, f.name, frozen)
            bounds = f.metadata.get("range")
            if bounds:
                problem = _range_problem(f.name, frozen, bounds)
                if problem:
                    raise RecipeError(problem, "fix the value in the recipe")

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
        try:
            cfg = cls(**values)
        except RecipeError as e:
            raise RecipeError(f"{where}{e.what}", e.hint) from None
        problem = cfg.check()
        if problem:
            raise RecipeError(f"{where}{problem}", "fix the value in the recipe")
        return cfg

    def check(self) -> str | None:
        """Checks across fields (ranges belong in ``option(min=, max=, gt=, lt=)``); return what is wrong or None."""
        return None

    def to_dict(self) -> dict:
        """Plain JSON/YAML values (lists and dicts), field by field."""
        return {f.name: thaw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def describe(cls) -> list[dict]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            bounds = dict(f.metadata.get("range", {}))
            out.append({"name": f.name, "type": _type_name(hints[f.name]), "default": thaw(default),
                        "choices": list(f.metadata.get("choices", ())), "doc": f.metadata.get("doc", ""),
                        "range": range_text(bounds), "bounds": bounds})
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
        return tuple(_coerce(v, args[0], where, None) for v in value)
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
