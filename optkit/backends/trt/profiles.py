"""Optimization profiles: min/opt/max shapes per input, from backend option ``profiles``, ``--shape`` or the model
(see the package docstring for the rules)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...data import parse_dims
from ...errors import InputError, RecipeError
from ...model import TensorSpec

@dataclass(frozen=True)
class Profile:
    """min/opt/max shape of one input; ``dynamic_axes``: the axes that are symbolic in the ONNX."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dynamic_axes: tuple[int, ...] = ()

    @property
    def dynamic(self) -> bool:
        return bool(self.dynamic_axes)

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max), "dynamic_axes": list(self.dynamic_axes)}


def _dims(d) -> str:
    return "x".join(str(int(v)) for v in d)


def parse_shape(text: str, where: str = "shape") -> tuple[int, ...]:
    """``'1x3x224x224'`` -> (1, 3, 224, 224): ``optkit.data.parse_dims`` (dims separated by 'x' only; ',' separates
    MIN,OPT,MAX), a bad shape being a RecipeError (it comes from the backend options)."""
    return parse_dims(text, where, RecipeError)


def parse_profile(spec, name: str = "input") -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``'1x3x8x8,4x3x8x8,8x3x8x8'`` -> (min, opt, max); one shape -> (s, s, s). Ranks must agree, min <= opt <= max."""
    where = f"profiles[{name!r}]"
    parts = [str(p).strip() for p in spec] if isinstance(spec, (list, tuple)) else [p.strip() for p in str(spec).split(",")]
    if len(parts) == 1:
        s = parse_shape(parts[0], where)
        return s, s, s
    if len(parts) != 3:
        raise RecipeError(f"{where}: {spec!r} has {len(parts)} shapes, expected one shape or MIN,OPT,MAX",
                          "write e.g. '1x3x224x224,8x3x224x224,32x3x224x224'")
    mn, opt, mx = (parse_shape(p, where) for p in parts)
    if not len(mn) == len(opt) == len(mx):
        raise RecipeError(f"{where}: MIN,OPT,MAX have different ranks ({_dims(mn)}, {_dims(opt)}, {_dims(mx)})",
                          "give the same number of dims in all three shapes")
    for i, (a, b, c) in enumerate(zip(mn, opt, mx)):
        if not a <= b <= c:
            raise RecipeError(f"{where}: axis {i} needs min <= opt <= max, got {a}, {b}, {c}",
                              "order the shapes MIN,OPT,MAX")
    return mn, opt, mx


def derive_profiles(inputs: list[TensorSpec], shapes: dict | None = None, profiles: dict | None = None,
                    max_batch_multiple: int = 4) -> dict[str, Profile]:
    """One Profile per graph input (see the module doc for the rules). Errors name the input and what to write."""
    from ...data import resolve_shapes

    shapes = {k: tuple(int(x) for x in v) for k, v in (shapes or {}).items()}
    profiles = dict(profiles or {})
    names = [s.name for s in inputs]
    for label, given in (("backend option profiles", profiles), ("--shape", shapes)):
        for n in given:
            if n not in names:
                raise InputError(f"{label} names unknown input {n!r}", f"the model's inputs are {names}")
    out: dict[str, Profile] = {}
    for s in inputs:
        dyn = tuple(i for i, d in enumerate(s.shape) if not isinstance(d, int))
        model_dims = "[" + ", ".join(str(d) for d in s.shape) + "]"
        if s.name in profiles:
            mn, opt, mx = parse_profile(profiles[s.name], s.name)
            if len(opt) != len(s.shape):
                raise InputError(f"profiles[{s.name!r}] has rank {len(opt)}, the model's input is {model_dims}",
                                 "give one value per dimension")
            for i, d in enumerate(s.shape):
                if isinstance(d, int) and not mn[i] == opt[i] == mx[i] == d:
                    raise InputError(f"profiles[{s.name!r}] varies axis {i}, which the model fixes to {d} {model_dims}",
                                     f"keep axis {i} at {d} in MIN, OPT and MAX")
            out[s.name] = Profile(s.name, mn, opt, mx, dyn)
            continue
        opt = resolve_shapes([s], {s.name: shapes[s.name]} if s.name in shapes else None)[s.name]
        mn = tuple(1 if i in dyn else v for i, v in enumerate(opt))
        mx = tuple(v * max_batch_multiple if (i in dyn and i == 0) else v for i, v in enumerate(opt))
        out[s.name] = Profile(s.name, mn, tuple(opt), mx, dyn)
    return out


def _profiles_from_json(data: dict) -> dict[str, Profile]:
    return {n: Profile(n, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]), tuple(p.get("dynamic_axes", ())))
            for n, p in data.items()}


def _as_profiles(profiles) -> dict[str, Profile]:
    """Profile objects from {name: Profile | (min, opt, max) | 'MIN,OPT,MAX' | {'min':..}} (for build_engine/build_command)."""
    out = {}
    for n, p in (profiles or {}).items():
        if isinstance(p, Profile):
            out[n] = p
        elif isinstance(p, dict):
            out[n] = _profiles_from_json({n: p})[n]
        else:
            if isinstance(p, (list, tuple)) and len(p) == 3 and not isinstance(p[0], (int, np.integer)):
                mn, opt, mx = (parse_shape(x, f"profiles[{n!r}]") if isinstance(x, str) else tuple(int(v) for v in x)
                               for x in p)
            else:
                mn, opt, mx = parse_profile(p, n)
            dyn = tuple(i for i, (a, c) in enumerate(zip(mn, mx)) if a != c)
            out[n] = Profile(n, mn, opt, mx, dyn)
    return out
