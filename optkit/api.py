"""The library entry points behind the CLI: optimize, inspect, export (optimize's steps live in job.py, bench in
measure.py)."""
from __future__ import annotations

from pathlib import Path

from .artifact import model_name as _model_name  # noqa: F401  (serving names its variants with it)
from .data import resolve_shapes
from .errors import InputError
from .model import load_model, model_files, model_info, save_model, sha256_file, signature
from .recipe import Recipe


def inspect(model: str | Path, shapes: dict | None = None) -> dict:
    """Signature, opsets, op histogram, parameter count, FLOPs and size of an ONNX file."""
    path = Path(model)
    m = load_model(path)
    inputs, _ = signature(m)
    static, unresolved = _flops_shapes(inputs, shapes)
    info = model_info(m, static)
    files = model_files(path)
    info.update({"path": str(path), "file_bytes": sum(f.stat().st_size for f in files if f.exists()),
                 "files": [str(f) for f in files], "sha256": sha256_file(path),
                 "flops_shapes": {k: list(v) for k, v in static.items()}})
    notes = [info["flops"]["note"]] if info["flops"].get("note") else []
    if unresolved:
        notes.insert(0, f"FLOPs use 1 for unresolved symbolic dims ({', '.join(unresolved)}); give --shape for real sizes")
    if notes:
        info["flops"]["note"] = "; ".join(notes)
    return info


def _flops_shapes(inputs, shapes: dict | None) -> tuple[dict, list[str]]:
    """Static input shapes for FLOPs: --shape where given, batch-like leading dims 1, and every other symbolic dim
    set to 1 (named in the returned list) rather than dropped: an encoder's FLOPs at seq=1, never a silent 0."""
    shapes = dict(shapes or {})
    names = {s.name for s in inputs}
    for name in shapes:
        if name not in names:
            raise InputError(f"--shape names unknown input {name!r}", f"the model's inputs are {sorted(names)}")
    static, unresolved = {}, []
    for s in inputs:
        if s.name in shapes:  # a bad --shape is still an error
            static.update(resolve_shapes([s], {s.name: shapes[s.name]}))
            continue
        try:
            static.update(resolve_shapes([s], {}))
        except InputError:
            static[s.name] = tuple(d if isinstance(d, int) else 1 for d in s.shape)
            unresolved += [f"{s.name}[{i}]={d if d is not None else '?'}" for i, d in enumerate(s.shape)
                           if not isinstance(d, int)]
    return static, unresolved


def export(model, example_inputs=None, out: str | Path | None = None, *, data=None, shapes: dict | None = None,
           dtypes: dict | None = None, input_names=None, output_names=None, dynamic=None, opset: int | None = None,
           exporter: str = "auto", module: str | None = None, signature: str | None = None,
           parity_tol: tuple[float, float] = (1e-3, 1e-4), warn=None, trust_pickle: bool = False):
    """Bring a PyTorch/TensorFlow model (object or file) to ONNX, checked against the framework (see
    ``optkit.importers.import_model``). Returns an ``Imported`` (``.model``, ``.info``); with ``out`` the ONNX file is
    also written there atomically (``info['path']``). ``parity_tol`` = (rtol, atol).

    ``trust_pickle``: allow files whose loading runs code from the file (a ``torch.save``d whole model, a
    torch.export .pt2 program, a Keras Lambda layer). Off by default: such a file is refused with an error."""
    from .importers import import_model

    rtol, atol = parity_tol
    imp = import_model(model, example_inputs=example_inputs, data=data, shapes=shapes, dtypes=dtypes,
                       input_names=input_names, output_names=output_names, dynamic=dynamic, opset=opset,
                       exporter=exporter, module=module, signature=signature, rtol=rtol, atol=atol, warn=warn,
                       trust_pickle=trust_pickle)
    if out is not None:
        imp.info["path"] = str(_write_atomic(imp.model, Path(out)))
    return imp


def _write_atomic(model, out: Path) -> Path:
    """Write next to ``out`` under a temporary name, then rename: an interrupted write leaves no half file."""
    import os
    import shutil

    from .artifact import check_writable, clean_stale, make_temp_dir, sync_tree

    if out.suffix.lower() != ".onnx":
        raise InputError(f"--out {out} should end in .onnx", "name the output file model.onnx or similar")
    check_writable(out.parent)
    clean_stale(out.parent, ".optkit-import-")
    tmp = make_temp_dir(out.parent, ".optkit-import-")
    try:
        save_model(model, tmp / out.name)
        sync_tree(tmp)
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == out.name):  # data files first, the .onnx last
            os.replace(f, out.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out




def optimize(model, recipe: str | Path | Recipe, **options) -> dict:
    """Run ``recipe`` on a model and write ``output/<name>/<version>/`` (model.onnx, compiled/, manifest.json).
    ``options`` are the fields of ``optkit.request.OptimizeRequest`` (data, shapes, output, threads, version, name,
    progress, warn, on_pass, tolerance, metric, budget, max_trials, allow_miss, force, eval_data, eval_feeds,
    example_inputs, import_options, backends, serve_isa, cache), validated before any work.

    Returns the manifest (with ``artifact`` = the version directory). Validation happens before anything is
    written; a failure leaves no partial artifact behind and never touches the input file.

    ``tolerance`` ('1%', 'abs:0.005') turns on the accuracy-aware search for quantization/pruning/low-rank passes
    (``metric``: auto|top1|cosine|agreement|max_abs; ``budget`` '10m'; ``max_trials``). When nothing passes, the best
    candidate is still saved and ToleranceMiss is raised unless ``allow_miss``. The performance guard (on unless
    ``force``) reverts a lossy pass that made the model slower and, at the end, keeps the input model if the result
    is slower than it.

    ``eval_data`` (same forms as ``data``): the feeds the numerics checks and the tolerance are judged on (up to
    ``eval_feeds``). Without it they are judged on ``data``, the calibration feeds, which flatters the result.

    ``model`` may be an ONNX file, a PyTorch/TensorFlow file or an in-memory ``nn.Module`` / Keras model: those are
    imported first (``example_inputs``, or shapes from ``data``/``shapes``; ``import_options`` are ``export``'s
    keywords: module, dynamic, opset, exporter, dtypes, input_names, output_names, signature, parity_tol, trust_pickle), the
    imported ONNX is kept in the artifact as ``input.onnx`` and the manifest's ``import`` holds exporter, opset and
    parity.

    ``backends`` ('tvm', 'ort,tvm,trt', 'all', or a list) compiles the result for those backends instead of the
    recipe's: the first into ``compiled/`` (the artifact's backend), the others into ``compiled-<name>/``; a
    backend that cannot compile here is recorded in the manifest's ``backends`` with the reason.

    ``cache``: the pass cache (``optkit.cache``): None = ``OPTKIT_CACHE_DIR`` or ``~/.cache/optkit`` (off when
    ``OPTKIT_NO_CACHE`` is set), False = off, a path = a cache rooted there. A pass answered from it is marked
    ``"cached": true`` in the pass log.
    """
    from .job import run
    from .request import OptimizeRequest

    return run(OptimizeRequest(model, recipe, **options))


def compare_backends(man: dict, warn=None) -> dict | None:
    """After ``optimize`` compiled for several backends (``--backend ort,tvm`` / ``all``): bench them side by side on
    the artifact (the backend matrix of ``optkit bench``). None when there was one backend: nothing to compare."""
    if len(man.get("backends") or {}) <= 1:
        return None
    from .measure import bench

    return bench(man["artifact"], backend=",".join(man["backends"]), rounds=3, round_time=0.3, warn=warn)
