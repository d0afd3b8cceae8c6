"""What ``optimize`` would do, without doing it (``optkit optimize --dry-run``): passes with their resolved options,
backend(s), the data used for calibration and for judging, the accuracy gate, and what would be written.

Everything here is validation only (recipe, backends, data paths, tolerance/metric/budget syntax): no model is run,
no directory is created.
"""
from __future__ import annotations

from pathlib import Path


def plan(model, recipe, *, data=None, eval_data=None, shapes=None, output="optkit-out", version=None, name=None,
         tolerance=None, metric="auto", budget=None, max_trials=24, force=False, backends=None, threads=1) -> dict:
    from .artifact import versions
    from .backends import get_backend
    from .errors import InputError
    from .fidelity import parse_metric
    from .measure import parse_backends
    from .recipe import Recipe, load_recipe
    from .search import parse_budget, parse_tolerance
    from .verdict import recipe_sha256

    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    targets = parse_backends(",".join(backends) if isinstance(backends, (list, tuple)) else backends, rec.backend)
    get_backend(targets[0])  # a missing primary backend fails here, as optimize would
    parse_metric(metric)
    parse_budget(budget)
    warnings = []
    mpath = Path(model)
    if not mpath.exists():
        raise InputError(f"model {mpath} does not exist", "check the path")
    for flag, p in (("--data", data), ("--eval-data", eval_data)):
        if p is not None and not Path(p).exists():
            raise InputError(f"{flag} {p} does not exist", "check the path")
    resolved = rec.to_dict()
    passes = [{"pass": n, "exact": rec.build_passes()[i].exact, "options": o}
              for i, spec in enumerate(resolved["passes"]) for n, o in spec.items()]
    for cand, specs in (resolved.get("candidates") or {}).items():
        built = dict(rec.build_candidates())[cand]
        passes += [{"pass": n, "exact": built[i].exact, "options": o, "candidate": f"candidate {cand}"}
                   for i, spec in enumerate(specs) for n, o in spec.items()]
    lossy = [p["pass"] for p in passes if not p["exact"]]
    if tolerance is not None:
        parse_tolerance(tolerance)
        gate = f"--tolerance {tolerance} on metric {metric}"
    elif lossy:
        gate = f"default accuracy gate 1% (metric {metric}) on the lossy passes: {', '.join(dict.fromkeys(lossy))}"
    else:
        gate = "none needed: every pass is exact (numerics are still checked after each pass)"
    if data is None:
        calib = "synthetic inputs from the signature (not representative: pass --data)"
        warnings.append("no --data: calibration and checks would run on synthetic inputs")
    else:
        calib = f"{data} (--data)"
    if eval_data is not None:
        judged = f"{eval_data} (--eval-data, held out)"
    else:
        judged = f"the calibration data {data or '(synthetic)'}: pass --eval-data HELD_OUT.npz for an honest judgment"
        if lossy:
            warnings.append("the gate would be judged on the calibration data (no --eval-data)")
    art_name = name or (mpath.stem if mpath.suffix else mpath.name)
    base = Path(output) / art_name
    v = version if version is not None else max(versions(base), default=0) + 1
    art = base / str(v)
    writes = f"{art}/ (model.onnx, compiled/ for {targets[0]}" + "".join(f", compiled-{t}/" for t in targets[1:]) + \
             ", manifest.json, report.json, report.html)"
    return {"model": str(mpath), "recipe": rec.name, "recipe_sha256": recipe_sha256(resolved), "backends": targets,
            "passes": passes, "calibration": calib, "judged_on": judged, "gate": gate,
            "search": (f"on: up to {max_trials} trials" + (f", budget {budget}" if budget else "")) if tolerance is not None
            or rec.candidates else "off (the default gate checks the recipe's configuration, with recovery on a miss)",
            "guard": "off (--force)" if force else "on: a lossy pass that makes the model slower is reverted",
            "threads": threads, "shapes": {k: list(v) for k, v in (shapes or {}).items()}, "writes": writes,
            "warnings": warnings}
