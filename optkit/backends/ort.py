"""ONNX Runtime CPU backend: explicit threads, graph optimization level, optional saved ORT-optimized model."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError
from ..model import EXTERNAL_DATA_THRESHOLD, TensorSpec, save_model, tensor_bytes
from ..config import PassConfig, option
from . import Backend

_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class OrtOptions(PassConfig):
    graph_optimization_level: str = option("all", "ORT graph optimizations applied when a session opens", choices=_LEVELS)
    save_optimized: bool = option(True, "save the ORT-optimized graph as the compiled artifact (compiled/model.ort.onnx)")
    saved_level: str = option("extended", "level for the saved graph; 'all' adds layout changes tied to this CPU",
                              choices=_LEVELS)
    inter_op_threads: int = option(1, "inter-op threads (parallel branches); intra-op threads come from --threads")


def _level(name: str):
    import onnxruntime as ort

    return {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[name]


def session_options(threads: int = 1, level: str = "all", inter_op_threads: int = 1, fake_quant: bool = False):
    """ORT session options. ``fake_quant``: run QuantizeLinear/DequantizeLinear as the float ops they are
    (``session.disable_quant_qdq``), i.e. what the ONNX graph means and what torch/TVM compute, instead of fusing
    them into integer kernels whose results depend on the CPU (U8S8 saturates without VNNI)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = max(1, int(inter_op_threads))
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _level(level)
    so.log_severity_level = 3
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if fake_quant:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    return so


class OrtSession:
    """An ORT InferenceSession on the CPU EP, from a path or an in-memory ModelProto."""

    def __init__(self, model: str | Path | onnx.ModelProto, threads: int = 1, level: str = "all", inter_op_threads: int = 1,
                 fake_quant: bool = False):
        import onnxruntime as ort

        so = session_options(threads, level, inter_op_threads, fake_quant)
        self._tmp = None
        try:
            if isinstance(model, onnx.ModelProto):
                if tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
                    self._tmp = tempfile.TemporaryDirectory(prefix="optkit-ort-")
                    src = save_model(model, Path(self._tmp.name) / "model.onnx")
                    self.sess = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
                else:
                    self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            else:
                self.sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise InputError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:300]}",
                             "check the model with `optkit inspect`, or report it") from e
        self.inputs = [TensorSpec(i.name, _np_type(i.type), tuple(i.shape)) for i in self.sess.get_inputs()]
        self.outputs = [TensorSpec(o.name, _np_type(o.type), tuple(o.shape)) for o in self.sess.get_outputs()]
        self._names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self._names, self.sess.run(self._names, feeds)))

    def close(self) -> None:
        self.sess = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _np_type(ort_type: str) -> str:
    t = ort_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool"}.get(t, t)


class OrtBackend(Backend):
    name = "ort"
    doc = "ONNX Runtime, CPU execution provider"
    Options = OrtOptions

    def check(self) -> None:
        import onnxruntime  # noqa: F401  (a core dependency; always present)

    def compile(self, model_path: Path, out_dir: Path, options: OrtOptions, threads: int = 1,
                shapes: dict | None = None) -> dict:
        import onnxruntime as ort

        info = {"backend": "ort", "onnxruntime": ort.__version__, "graph_optimization_level": options.graph_optimization_level}
        if not options.save_optimized:
            return info
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / "model.ort.onnx"
        so = session_options(threads, options.saved_level, options.inter_op_threads)
        so.optimized_model_filepath = str(dst)
        proto = onnx.load(str(model_path), load_external_data=False)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        # a model with external data gets its own data file beside the saved graph: left alone, ORT writes references
        # to the source's data file, relative to a folder where it is not (found by loading what compile wrote)
        if external or tensor_bytes(proto) >= EXTERNAL_DATA_THRESHOLD or os.path.getsize(model_path) >= EXTERNAL_DATA_THRESHOLD:
            so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.ort.onnx.data")
        ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        try:  # what is written is what optkit.load serves: it must load
            ort.InferenceSession(str(dst), session_options(threads, options.graph_optimization_level),
                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # seen: ORT 1.32 saves fp16 If-subgraphs with duplicate cast names (not SSA)
            for f in (dst, out_dir / "model.ort.onnx.data"):
                f.unlink(missing_ok=True)
            info["saved_optimized"] = {"written": False, "reason": f"ONNX Runtime's saved optimized graph does not "
                                       f"reload ({str(e).strip().splitlines()[0][:200]}); the artifact serves model.onnx"}
            return info
        info.update({"artifact": str(dst.name), "saved_level": options.saved_level})
        return info

    def load(self, path: Path, threads: int = 1, options: OrtOptions | None = None, shapes: dict | None = None) -> OrtSession:
        options = options or OrtOptions()
        return OrtSession(path, threads, options.graph_optimization_level, options.inter_op_threads)
