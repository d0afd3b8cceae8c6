"""The pass contract: ``Pass.run(model, ctx) -> PassResult``, typed frozen configs, and a registry by name.

A pass knows nothing about backends. Heavy libraries are imported inside ``run``.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import onnx

from ..errors import RecipeError


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


@dataclass
class PassResult:
    """What a pass returns: the new model, whether it changed anything, and notes for the pass log."""

    model: onnx.ModelProto
    modified: bool = True
    notes: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


class Progress:
    """A progress sink for long steps (calibration); the CLI passes a rich-backed one."""

    def start(self, description: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Context:
    """Settings every pass may read (TVM's PassContext idea): samples, shapes, host facts, progress."""

    samples: Any = None  # optkit.data.Samples
    shapes: dict = field(default_factory=dict)  # user-given --shape values
    threads: int = 1
    seed: int = 0
    progress: Progress = field(default_factory=Progress)
    cpu: dict = field(default_factory=dict)
    warn: Callable[[str], None] = lambda msg: None
    # runs a model the way the artifact will be served (optkit.evaluate.Evaluator), injected by the pipeline: a pass
    # that needs outputs asks it instead of opening a backend itself
    evaluator: Any = None
    # content-addressed pass cache (optkit.cache.PassCache) or None: the pipeline and the tolerance search run passes
    # through optkit.cache.run_pass, which answers from it when the model, config, samples and versions match
    cache: Any = None


class Pass:
    """Subclass, set ``name``/``Config``/``exact``, implement ``run``; register with ``@register_pass``.

    ``exact`` passes (simplify, fuse) must keep numerics within tolerance, or the pipeline fails them.
    """

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig
    exact: ClassVar[bool] = True
    # How --tolerance searches this pass: "quantization" (configurations + float fallback of sensitive nodes),
    # "layers" (per-layer compression; implement layer_candidates and give the config a `skip` list), or None.
    tuning_kind: ClassVar[str | None] = None
    # whether the output depends on ctx.samples (then the feeds' bytes are part of the pass-cache key)
    reads_samples: ClassVar[bool] = True

    def layer_candidates(self, model: onnx.ModelProto) -> list[str]:
        return []

    def __init__(self, config: PassConfig | dict | None = None):
        if config is None or isinstance(config, dict):
            config = self.Config.from_dict(config, where=f"pass {self.name!r}: ")
        self.config = config

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, type[Pass]] = {}
# Pass modules are imported on first lookup, so `import optkit` stays light.
_MODULES = ("simplify", "fuse", "fp16", "quantize", "lowrank", "prune")


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def get_pass(name: str) -> type[Pass]:
    _load_all()
    if name not in _REGISTRY:
        raise RecipeError(f"unknown pass {name!r}", f"available passes: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_passes() -> list[dict]:
    _load_all()
    return [{"name": n, "doc": c.doc, "exact": c.exact, "options": c.Config.describe()}
            for n, c in sorted(_REGISTRY.items())]
