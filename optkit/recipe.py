"""Recipes: YAML -> validated frozen dataclasses. Built-ins live in recipes/ (package optkit.recipes)."""
from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import RecipeError

_KEYS = {"name": "recipe name", "description": "one line shown by `optkit recipes`",
         "backend": "ort | tvm | trt", "passes": "list of pass names or {pass: {options}}",
         "backend_options": "options for the backend",
         "candidates": "name -> list of passes: each is tried after `passes`; the fastest within --tolerance is kept"}


@dataclass(frozen=True)
class PassSpec:
    name: str
    options: dict = field(default_factory=dict)

    def build(self):
        from .passes import get_pass

        return get_pass(self.name)(self.options)


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    backend: str
    passes: tuple[PassSpec, ...]
    backend_options: dict = field(default_factory=dict)
    source: str = ""
    candidates: tuple[tuple[str, tuple[PassSpec, ...]], ...] = ()

    def build_passes(self):
        return [p.build() for p in self.passes]

    def build_candidates(self) -> list[tuple[str, list]]:
        return [(name, [p.build() for p in specs]) for name, specs in self.candidates]

    def backend_config(self):
        from .backends import get_backend

        b = get_backend(self.backend, check=False)
        return b.Options.from_dict(self.backend_options, where=f"recipe {self.name!r} backend_options: ")

    def to_dict(self) -> dict:
        """The resolved recipe: every pass option spelled out (defaults included), as stored in manifests."""
        def resolved(specs):
            return [{p.name: p.build().config.to_dict()} for p in specs]

        out = {"name": self.name, "description": self.description, "backend": self.backend,
               "passes": resolved(self.passes), "backend_options": self.backend_config().to_dict()}
        if self.candidates:
            out["candidates"] = {name: resolved(specs) for name, specs in self.candidates}
        return out


def builtin_dir():
    return importlib.resources.files("optkit.recipes")


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in builtin_dir().iterdir() if p.name.endswith(".yaml"))


def list_recipes() -> list[dict]:
    out = []
    for n in builtin_names():
        r = load_recipe(n)
        row = {"name": r.name, "backend": r.backend, "passes": [p.name for p in r.passes], "description": r.description}
        if r.candidates:
            row["candidates"] = {name: [p.name for p in specs] for name, specs in r.candidates}
        out.append(row)
    return out


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in name (``int8-ort``) or a path to a YAML file."""
    s = str(name_or_path)
    p = Path(s)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in s:
        if p.is_dir():
            raise RecipeError(f"recipe {p} is a directory", "pass a recipe YAML file or a built-in recipe name")
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}", f"built-in recipes: {', '.join(builtin_names())}")
        try:
            text, source = p.read_text(), str(p)
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"cannot read recipe {p} ({getattr(e, 'strerror', None) or type(e).__name__})",
                              "pass a UTF-8 YAML file") from e
    else:
        res = builtin_dir() / f"{s}.yaml"
        if not res.is_file():
            raise RecipeError(f"unknown recipe {s!r}", f"built-in recipes: {', '.join(builtin_names())}; or pass a path to a YAML file")
        text, source = res.read_text(), f"builtin:{s}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {source} is not valid YAML: {str(e).splitlines()[0]}", "fix the YAML syntax") from e
    except RecursionError as e:
        raise RecipeError(f"recipe {source} is nested too deeply", "a recipe is a flat mapping of a few keys") from e
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise RecipeError(f"recipe {source} holds a value YAML cannot convert ({str(e).splitlines()[0][:120]})",
                          "fix the value") from e
    return parse_recipe(data, source, default_name=p.stem if source != f"builtin:{s}" else s)


def parse_recipe(data, source: str = "<dict>", default_name: str = "custom") -> Recipe:
    from .backends import backend_names

    where = f"recipe {source}: "
    if not isinstance(data, dict):
        raise RecipeError(f"{where}top level must be a mapping", f"keys: {', '.join(_KEYS)}")
    for key in data:
        if key not in _KEYS:
            raise RecipeError(f"{where}unknown key {key!r}", f"allowed keys: {', '.join(_KEYS)}")
    name = data.get("name", default_name)
    desc = data.get("description", "")
    backend = data.get("backend", "ort")
    for key, val in (("name", name), ("description", desc), ("backend", backend)):
        if not isinstance(val, str):
            raise RecipeError(f"{where}{key!r} must be a string, got {val!r}", f"{key}: {_KEYS[key]}")
    if backend not in backend_names():
        raise RecipeError(f"{where}backend must be one of {', '.join(backend_names())}; got {backend!r}", "pick an allowed value")
    specs = _parse_passes(data.get("passes", []), where, "passes")
    cands = data.get("candidates", {}) or {}
    if not isinstance(cands, dict) or not all(isinstance(k, str) for k in cands):
        raise RecipeError(f"{where}'candidates' must be a mapping of name -> list of passes", _KEYS["candidates"])
    candidates = tuple((cname, _parse_passes(cpasses, where, f"candidates.{cname}")) for cname, cpasses in cands.items())
    bopts = data.get("backend_options", {}) or {}
    if not isinstance(bopts, dict):
        raise RecipeError(f"{where}'backend_options' must be a mapping", _KEYS["backend_options"])
    recipe = Recipe(name, desc, backend, specs, dict(bopts), source, candidates)
    recipe.backend_config()  # validate backend options
    return recipe


def _parse_passes(raw, where: str, key: str) -> tuple[PassSpec, ...]:
    from .passes import get_pass

    if not isinstance(raw, list):
        raise RecipeError(f"{where}{key!r} must be a list, got {type(raw).__name__}", _KEYS["passes"])
    specs = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            pname, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            pname, opts = next(iter(item.items()))
            opts = {} if opts is None else opts
            if not isinstance(opts, dict):
                raise RecipeError(f"{where}options of pass {pname!r} must be a mapping, got {opts!r}", "write `- pass: {key: value}`")
        else:
            raise RecipeError(f"{where}{key}[{i}] must be a pass name or a one-key mapping, got {item!r}",
                              "write `- simplify` or `- int8-static: {calibration: entropy}`")
        cls = get_pass(pname)
        cls.Config.from_dict(opts, where=f"{where}pass {pname!r}: ")  # validate now, not mid-pipeline
        specs.append(PassSpec(pname, dict(opts)))
    return tuple(specs)
