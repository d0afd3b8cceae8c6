"""The artifact manifest as typed data: ``Manifest`` (what ``optimize`` writes into ``manifest.json``) and its JSON
schema, generated from the dataclasses here (``python -m optkit.manifest --write-schema`` writes
``optkit/schemas/manifest.schema.json``; a test keeps the committed file equal to the generated one).

Sections whose inner layout belongs to another module (a pass-log entry, a backend's compile record, the environment)
stay ``dict`` here and are described where they are produced.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.json"


@dataclass
class EvalData:
    source: str
    feeds: int
    labels: bool
    path: Optional[str] = None


@dataclass
class DataInfo:
    """The calibration data (``--data``) and the data the gate judged on (``eval``)."""

    source: str
    synthetic: bool
    feeds: int
    labels: bool
    eval: EvalData
    path: Optional[str] = None


@dataclass
class ToleranceInfo:
    """The accuracy gate: its criterion, whether the result met it, and the validations it took."""

    criterion: str
    metric: str
    default_gate: bool
    passed: bool
    missed_by: list[str]
    judged_on: str
    trials: int


@dataclass
class GuardInfo:
    """The performance guard: on or off, and its final comparison with the input model (None: nothing to compare)."""

    enabled: bool
    final: Optional[dict] = None


@dataclass
class Manifest:
    """Everything ``optkit optimize`` records about one artifact version (``manifest.json``)."""

    schema: int
    created: str
    input: dict  # path/sha256 of an imported input, and model_info of the input model
    ingest: dict  # the ingest step's pass-log entry (what was normalized)
    output: dict  # path, sha256 and model_info of model.onnx
    recipe: dict  # the resolved recipe
    shapes: dict[str, list[int]]
    user_shapes: dict[str, list[int]]
    data: DataInfo
    pass_log: list[dict]
    backend: dict  # the primary backend's compile record
    backends: dict[str, dict]
    threads: int
    optimize_seconds: float
    guard: GuardInfo
    evaluator: dict
    environment: dict
    reproduce: dict
    warnings: list[str] = field(default_factory=list)
    import_: Optional[dict] = None  # written as "import": exporter, opset, parity of a framework model
    recipe_source: Optional[str] = None
    accuracy: Optional[dict] = None
    tolerance: Optional[ToleranceInfo] = None
    served_check: Optional[dict] = None
    int8: Optional[dict] = None
    candidates: Optional[list[dict]] = None
    cache: Optional[dict] = None
    files: Optional[dict[str, dict]] = None  # written by the seal: sha256 and bytes of every file

    def to_dict(self) -> dict:
        """The JSON object, keys in the order readers have always seen them."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[_json_name(f.name)] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        if out["files"] is None:
            del out["files"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        """A manifest read back (extra keys such as ``artifact`` are ignored); raises ValueError naming a missing or
        mistyped field."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            key = _json_name(f.name)
            if key not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                    raise ValueError(f"no {key!r}")
                continue
            values[f.name] = _load(hints[f.name], data[key], key)
        return cls(**values)


def _json_name(name: str) -> str:
    return name.rstrip("_")


def _load(tp, value, where: str):
    """``value`` checked against ``tp`` (dataclasses built from their dicts)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        return _load(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where!r} is not an object")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        return tp(**{k: _load(hints[k], v, f"{where}.{k}") for k, v in value.items() if k in names})
    base = origin or tp
    ok = {int: (int,), float: (int, float), str: (str,), bool: (bool,), list: (list,), dict: (dict,)}.get(base)
    if ok is not None and (not isinstance(value, ok) or (base in (int, float) and isinstance(value, bool))):
        raise ValueError(f"{where!r} is a {type(value).__name__}, not {getattr(base, '__name__', base)}")
    return value


def json_schema() -> dict:
    """The JSON schema of ``manifest.json``, generated from ``Manifest``."""
    defs: dict[str, dict] = {}
    _schema(Manifest, defs)
    root = defs.pop("Manifest")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "optkit artifact manifest", **root,
            "$defs": defs}


def _doc(tp) -> str:
    doc = tp.__doc__ or ""
    return "" if doc.startswith(tp.__name__ + "(") else doc.strip().splitlines()[0]


def _schema(tp, defs: dict) -> dict:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return {"anyOf": [_schema(inner[0], defs), {"type": "null"}]}
    if dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            hints = typing.get_type_hints(tp)
            defs[name] = {}  # reserve (no recursion in practice)
            props = {_json_name(f.name): _schema(hints[f.name], defs) for f in dataclasses.fields(tp)}
            required = [_json_name(f.name) for f in dataclasses.fields(tp)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
            defs[name] = {"type": "object", "description": _doc(tp), "properties": props, "required": required}
        return {"$ref": f"#/$defs/{name}"}
    if origin is list:
        return {"type": "array", "items": _schema(args[0], defs) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema(args[1], defs) if args else {}}
    simple = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp is Any:
        return {}
    raise TypeError(f"no JSON schema for {tp!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = json.dumps(json_schema(), indent=1) + "\n"
    if args == ["--write-schema"]:
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
