"""The result of optkit.torch.quantize (optkit.torch.quant): the converted model, its info, and its QDQ ONNX export with
an ONNX Runtime parity check."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from optkit.errors import ExportError

from ._inc import _init_inc_logger, _Quiet


class QuantResult:
    """A quantized model: ``model`` (converted torch GraphModule with quantize/dequantize ops, callable) and ``info``
    (approach, inc_version, config, trials, calib_batches, seconds, ...). ``to_onnx`` writes its QDQ ONNX."""

    def __init__(self, model, info: dict, example_inputs: tuple, dynamic_shapes=None):
        self.model = model
        self.info = info
        self._example_inputs = example_inputs
        self._dynamic_shapes = dynamic_shapes

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __repr__(self) -> str:
        cfg = self.info.get("config")
        cfg = {k: v for k, v in cfg.items() if k != "name"} if isinstance(cfg, dict) else cfg
        return f"QuantResult(approach={self.info.get('approach')!r}, config={cfg})"

    def to_onnx(self, path, *, opset: int | None = None, input_names=None, output_names=None) -> Path:
        """``torch.onnx.export(dynamo=True)`` of the quantized model (dynamic batch dim when quantized with
        ``dynamic_batch=True``) to one .onnx file. The graph has QuantizeLinear/DequantizeLinear around Conv/Gemm;
        the file passes ``onnx.checker``. Raises :class:`optkit.errors.ExportError` when the export fails."""
        import onnx
        import torch

        if opset is not None and (not isinstance(opset, int) or opset < 18):
            raise ValueError(f"to_onnx writes ONNX opset 18 or newer (torch's dynamo exporter; the TorchScript "
                             f"exporter cannot trace PT2E models), got opset={opset!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        nbytes = sum(t.numel() * t.element_size() for t in list(self.model.parameters()) + list(self.model.buffers()))
        kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "external_data": nbytes > 1_800_000_000}
        if opset is not None:
            kwargs["opset_version"] = opset
        if input_names is not None:
            kwargs["input_names"] = list(input_names)
        if output_names is not None:
            kwargs["output_names"] = list(output_names)
        if self._dynamic_shapes is not None:
            kwargs["dynamic_shapes"] = self._dynamic_shapes
        _init_inc_logger()
        with _Quiet():
            try:
                torch.onnx.export(self.model, self._example_inputs, str(path), **kwargs)
            except Exception as e:
                raise ExportError(f"torch.onnx.export of the quantized model failed: "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                                  "try another opset, or export the float model and quantize the ONNX with optkit"
                                  ) from e
        proto = onnx.load(str(path), load_external_data=False)
        ops = {n.op_type for n in proto.graph.node}
        if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
            raise ExportError(f"the ONNX export of the quantized model has no QuantizeLinear/DequantizeLinear nodes "
                              f"({path})", "the quantization was lost in the export; check torch/onnxscript versions")
        onnx.checker.check_model(str(path))
        self.info["onnx"] = {"path": str(path), "opset": next((o.version for o in proto.opset_import
                                                               if o.domain in ("", "ai.onnx")), None),
                             "inputs": [i.name for i in proto.graph.input],
                             "outputs": [o.name for o in proto.graph.output],
                             "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in proto.graph.node),
                             "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in proto.graph.node),
                             "parity": self._ort_parity(path)}
        return path

    def _ort_parity(self, path: Path) -> dict:
        """The export run by ORT vs the torch model on the example inputs, like with like: ORT with Q/DQ as float ops
        is the program torch ran (the export's correctness); ORT's fused integer kernels are what a default session
        serves, and on CPUs without VNNI their U8S8 products saturate, so that deviation is measured and said apart."""
        import numpy as np
        import torch

        from ..backends.ort import OrtSession
        from ..hw import isa_label, ort_int8_kernels

        with torch.no_grad():
            want = self.model(*self._example_inputs)
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        want = [np.asarray(w.detach().numpy(), np.float64) for w in want]
        out: dict = {"feed": "the example inputs"}
        for key, fake, what in (("fake_quant", True, "ORT with Q/DQ run as float (session.disable_quant_qdq=1): the "
                                 "program torch ran"),
                                ("int8_kernels", False, "ORT default session: Q/DQ fused into integer kernels")):
            with OrtSession(path, fake_quant=fake) as s:
                feed = {spec.name: np.asarray(x.detach().numpy()) for spec, x in zip(s.inputs, self._example_inputs)}
                got = [np.asarray(v, np.float64) for v in s.run(feed).values()]
            out[key] = {"reference": what, "max_abs": max(float(np.abs(g - w).max()) for g, w in zip(got, want)),
                        "scale": max(float(np.abs(w).max()) for w in want)}
        kern = ort_int8_kernels()
        out["int8_kernels"].update({"isa": isa_label(), "u8s8_saturates": kern["u8s8_saturates"]})
        if kern["u8s8_saturates"]:
            out["int8_kernels"]["note"] = ("this CPU has no VNNI: ORT's U8S8 kernels saturate 16-bit pair sums, so the "
                                           "integer path can differ from torch by more than quantization rounding")
        return out
