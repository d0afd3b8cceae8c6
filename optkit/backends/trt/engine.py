"""Engine build through the TensorRT Python API: ONNX parser, strongly typed network, one optimization profile,
workspace pool, timing caches."""
from __future__ import annotations

import os
import time
from pathlib import Path

import onnx

from ...qdq_layout import model_precision
from . import gpu
from .options import TIMING_CACHE_FILE, TrtError
from .profiles import _as_profiles


def _logger(trt):
    class _Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(f"{str(severity).split('.')[-1]}: {msg}")

    return _Log()


def _parse_errors(parser, model: onnx.ModelProto | None) -> list[str]:
    nodes = list(model.graph.node) if model is not None else []
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        idx = e.node() if hasattr(e, "node") else -1
        name = e.node_name() if hasattr(e, "node_name") else ""  # TensorRT 10+
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        if (not name or not op) and 0 <= idx < len(nodes):
            name, op = name or nodes[idx].name, op or nodes[idx].op_type
        where = f"node '{name}' ({op}, #{idx})" if name or op else (f"node #{idx}" if idx >= 0 else "the model")
        out.append(f"{where}: {str(e.desc()).strip()}")
    return out


def _parse(trt, builder, log, onnx_path: Path, proto: onnx.ModelProto):
    """A strongly typed network parsed from ``onnx_path`` (TrtError naming the nodes the parser rejects)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))  # no flag: strongly typed is the only mode
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errs = _parse_errors(parser, proto)
        raise TrtError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errs[:5])
                       + (f"; and {len(errs) - 5} more" if len(errs) > 5 else ""),
                       "fix or exclude the named node (optkit inspect shows the graph)")
    return network, parser


def _add_profile(builder, network, config, profs: dict) -> dict:
    """One optimization profile for the inputs with dynamic dims: -> {input: dims} of those inputs."""
    dynamic = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(int(d) < 0 for d in t.shape):
            dynamic[t.name] = tuple(int(d) for d in t.shape)
    missing = sorted(set(dynamic) - set(profs))
    if missing:
        raise TrtError(f"inputs {missing} have dynamic dims {[list(dynamic[m]) for m in missing]} and no profile",
                       "give profiles {name: 'MIN,OPT,MAX'}")
    if dynamic:
        profile = builder.create_optimization_profile()
        for name in dynamic:
            p = profs[name]
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    return dynamic


def _load_timing_cache(config, cache_files: list[Path]) -> dict | None:
    """The first non-empty cache file as the builder's timing cache (one from another device or TensorRT version
    is dropped for a fresh one)."""
    if not cache_files:
        return None
    blob, source = b"", None
    for f in cache_files:
        if f.is_file() and f.stat().st_size:
            blob, source = f.read_bytes(), f
            break
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):
        cache, source = config.create_timing_cache(b""), None
        config.set_timing_cache(cache, False)
    return {"reused": str(source) if source else None, "files": [str(f) for f in cache_files]}


def _save(plan, engine_path: Path, config, cache_files: list[Path]) -> None:
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(plan)
    os.replace(tmp, engine_path)
    if not cache_files:
        return
    data = bytes(memoryview(config.get_timing_cache().serialize()))
    for f in cache_files:
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            ftmp = f.with_name(f.name + f".{os.getpid()}.tmp")
            ftmp.write_bytes(data)
            os.replace(ftmp, f)
        except OSError:
            pass  # a read-only shared cache must not fail the build


def build_engine(onnx_path, engine_path, profiles=None, *, precision: str | None = None, workspace_mb: int = 1024,
                 timing_cache=TIMING_CACHE_FILE, shared_cache=None, builder_optimization_level: int = 3,
                 tf32: bool = False) -> dict:
    """Build and serialize a TensorRT engine from an ONNX file (strongly typed network, one optimization profile).

    ``profiles``: {input: Profile | (min, opt, max) | 'MIN,OPT,MAX'} for inputs with symbolic dims (required
    for them). ``timing_cache``: a file read before and written after the build (None: no cache);
    ``shared_cache``: a second file (device/version keyed, see ``shared_timing_cache``) read first and updated.
    ``precision`` is only checked against the ONNX. Raises TrtError with the parser's errors (node names) or the
    builder's log; BackendUnavailable where TensorRT or a GPU is missing."""
    st = gpu._require_runtime()
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    profs = _as_profiles(profiles)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    if precision is not None and precision != model_precision(proto):
        raise TrtError(f"{onnx_path.name} holds {model_precision(proto)} compute, not {precision}",
                       "a strongly typed engine takes its precision from the ONNX: run the matching -trt recipe")
    log = _logger(trt)
    t0 = time.perf_counter()
    builder = trt.Builder(log)
    network, _parser = _parse(trt, builder, log, onnx_path, proto)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(builder_optimization_level)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None and not tf32:
        config.clear_flag(tf32_flag)
    dynamic = _add_profile(builder, network, config, profs)
    cache_files = [Path(p) for p in (shared_cache, timing_cache) if p]
    cache_info = _load_timing_cache(config, cache_files)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errs = [m for m in log.messages if m.startswith(("ERROR", "INTERNAL_ERROR"))] or log.messages[-5:]
        raise TrtError(f"TensorRT failed to build the engine for {onnx_path.name}: " + " | ".join(errs[:5]),
                       "see the messages; more workspace_mb or a lower builder_optimization_level can help")
    _save(plan, engine_path, config, cache_files)
    return {"engine": str(engine_path), "engine_bytes": engine_path.stat().st_size,
            "build_seconds": round(time.perf_counter() - t0, 3), "tensorrt": trt.__version__, "gpu": st["gpu"],
            "strongly_typed": True, "timing_cache": cache_info,
            "profiles": {n: p.to_dict() for n, p in profs.items() if n in dynamic},
            "warnings": [m for m in log.messages if m.startswith("WARNING")][:20]}
