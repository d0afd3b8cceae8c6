"""The PyTorch source for ``optkit import`` (optkit.importers.torch): ``TorchSource`` runs a module, TorchScript or
torch.export program on named feeds and exports it with the ``dynamo`` or ``torchscript`` exporter, quietly, turning
exporter failures into one ExportError line with a hint."""
from __future__ import annotations

import contextlib
import inspect
import io
import warnings

import numpy as np

from ..errors import ExportError, InputError


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def _flatten(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    if hasattr(out, "to_tuple"):  # transformers ModelOutput
        return _flatten(out.to_tuple())
    return []


@contextlib.contextmanager
def _quiet():
    """The exporters print progress lines and warnings; keep them off the user's stdout."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging

        loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "torch.fx")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield buf
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


@contextlib.contextmanager
def _no_mha_fastpath():
    import torch

    prev = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(prev)


class TorchSource:
    framework = "torch"

    def __init__(self, module, description: str, kind: str):
        self.module = module
        self.description = description
        self.kind = kind  # module | torchscript | exported
        self.exporters = {"module": ("dynamo", "torchscript"), "torchscript": ("torchscript",),
                          "exported": ("dynamo",)}[kind]
        self._output_names: list[str] | None = None

    # -- signature ---------------------------------------------------------------------------------------------
    def input_specs(self, feed=None):
        return None  # a PyTorch module has no declared signature: shapes/dtypes come from --data or --shape

    def default_input_names(self, n: int) -> list[str]:
        """Names of forward()'s positional parameters when they can be read, else input / input_0, input_1, ..."""
        fn = self.module.module().forward if self.kind == "exported" else getattr(self.module, "forward", None)
        names = []
        try:
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
            names = [p.name for p in params][:n]
        except (TypeError, ValueError):
            pass
        if len(names) != n or any(nm in ("args", "input") and n > 1 for nm in names) or self.kind == "torchscript":
            names = ["input"] if n == 1 else [f"input_{i}" for i in range(n)]
        return names

    def _call(self, feed: dict[str, np.ndarray]):
        import torch

        args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values())
        mod = self.module.module() if self.kind == "exported" else self.module
        with torch.no_grad(), _no_mha_fastpath():
            return mod(*args)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = _flatten(self._call(feed))
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in feed.items()}
            raise InputError(f"the PyTorch model fails on the example inputs {shapes} ({type(e).__name__}: {_first(e)})",
                             "give inputs it accepts: --shape NAME=DIMS (--dtype NAME=int64 for ids) or --data feeds.npz") from e
        if not outs:
            raise ExportError("the PyTorch model returns no tensors", "return a tensor, or a tuple/dict of tensors")
        names = self.output_names(len(outs))
        return {n: o.detach().cpu().numpy() for n, o in zip(names, outs)}

    def output_names(self, n: int) -> list[str]:
        if self._output_names and len(self._output_names) == n:
            return self._output_names
        return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]

    # -- export ------------------------------------------------------------------------------------------------
    def to_onnx(self, example: dict[str, np.ndarray], *, opset: int | None = None,
                dynamic: dict[str, dict[int, str]] | None = None, output_names: list[str] | None = None,
                exporter: str = "dynamo"):
        import torch

        if output_names:
            self._output_names = list(output_names)
        n_out = len(self.run(example))
        out_names = self.output_names(n_out)
        in_names = list(example)
        args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example.values())
        dynamic = dynamic or {}
        info = {"exporter": f"torch.onnx ({exporter})", "exporter_version": torch.__version__,
                "framework_version": torch.__version__, "notes": []}
        if exporter == "dynamo":
            model = self._dynamo(args, in_names, out_names, dynamic, opset, info)
        elif exporter == "torchscript":
            model = self._torchscript(args, in_names, out_names, dynamic, opset, info)
        else:
            raise InputError(f"unknown exporter {exporter!r}", "use auto, dynamo or torchscript")
        return model, info

    def _dynamo(self, args, in_names, out_names, dynamic, opset, info):
        import torch

        dims: dict[str, object] = {}
        dyn_shapes = []
        for name, a in zip(in_names, args):
            spec = {}
            for axis, label in dynamic.get(name, {}).items():
                dims.setdefault(label, torch.export.Dim(_ident(label)))
                spec[axis] = dims[label]
            dyn_shapes.append(spec or None)
        kwargs = {}
        if any(dyn_shapes):
            kwargs["dynamic_shapes"] = tuple(dyn_shapes)
        target = self.module
        try:
            with _quiet() as log, _no_mha_fastpath():
                prog = torch.onnx.export(target, args, input_names=in_names, output_names=out_names,
                                         opset_version=opset or 18, dynamo=True, optimize=True, verbose=False, **kwargs)
        except Exception as e:
            raise ExportError(f"dynamo export failed: {_summarize(e)}", _hint(e)) from e
        if prog is None:
            raise ExportError("dynamo export returned nothing", "try --exporter torchscript")
        model = prog.model_proto
        info["opset"] = _opset(model)
        return model

    def _torchscript(self, args, in_names, out_names, dynamic, opset, info):
        import onnx
        import torch

        axes = {name: {int(a): l for a, l in d.items()} for name, d in dynamic.items()}
        buf = io.BytesIO()
        opset = opset or 17
        try:
            with _quiet(), _no_mha_fastpath():
                torch.onnx.export(self.module, args, buf, input_names=in_names, output_names=out_names,
                                  dynamic_axes=axes or None, opset_version=opset, dynamo=False,
                                  do_constant_folding=True)
        except Exception as e:
            raise ExportError(f"TorchScript export failed: {_summarize(e)}", _hint(e)) from e
        model = onnx.load_from_string(buf.getvalue())
        info["opset"] = _opset(model)
        return model


def _ident(label: str) -> str:
    import re

    s = re.sub(r"\W", "_", label)
    return s if s and not s[0].isdigit() else f"d_{s}"


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _summarize(e: BaseException) -> str:
    """One line out of the exporters' multi-page errors: the operator that failed and the innermost reason."""
    import re

    chain, c = [], e
    while c is not None and len(chain) < 10:
        chain.append(c)
        c = c.__cause__ or c.__context__
    text = "\n".join(str(x) for x in chain)
    innermost = _first(chain[-1])
    m = re.search(r"target=torch\.ops\.([\w.]+)", text)  # dynamo: the FX node that failed to translate
    if m:
        op = m.group(1).removesuffix(".default")
        return f"operator {op} has no ONNX conversion ({innermost})"
    m = re.search(r"No ONNX function found for <?OpOverload\(op='([\w.:]+)'", text) or \
        re.search(r"Exporting the operator '?([\w:.]+)'? to ONNX opset version \d+ is not supported", text) or \
        re.search(r"(aten[:.]{1,2}\w+(?:\.\w+)?)[^\n]*(?:not supported|unsupported|no symbolic)", text)
    if m:
        return f"operator {m.group(1)} has no ONNX conversion"
    return innermost


def _hint(e: BaseException) -> str:
    if "operator" in _summarize(e) and "no ONNX conversion" in _summarize(e):
        return ("rewrite that op with supported ones, export at another --opset, or try the other --exporter "
                "(rerun with --debug for the exporter's full report)")
    return "try the other --exporter (dynamo|torchscript) or another --opset; rerun with --debug for the full error"
