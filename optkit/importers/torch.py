"""PyTorch → ONNX: an nn.Module, a TorchScript file, a pickled full model, a state_dict plus ``--module`` factory,
or a ``torch.export`` program (.pt2).

Exporters: ``dynamo`` (torch.export + onnxscript, opset >= 18) and ``torchscript`` (the tracing exporter, run with
the MultiheadAttention fast path off: its fused kernel has no ONNX symbolic, which is what breaks
``nn.TransformerEncoderLayer``). ``import_model`` tries them in ``exporters`` order and keeps the first whose
ONNX passes the parity check.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..errors import ExportError, InputError

SUFFIXES = (".pt", ".pth", ".pt2", ".ckpt", ".bin", ".jit", ".torchscript")
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


def available() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"PyTorch is not installed ({e}); pip install 'optkit[torch]'"
    return None


def is_torch_object(obj) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(obj, (torch.nn.Module, torch.jit.ScriptModule, torch.export.ExportedProgram))


def is_torch_path(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SUFFIXES


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def _is_exported_program(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("serialized_exported_program.json") or "/models/" in n for n in z.namelist())


def load_factory(spec: str):
    """``pkg.mod:factory`` or ``path/to/file.py:factory`` -> the callable (a class or a function, called without arguments)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise InputError(f"bad --module {spec!r}", "use --module package.module:factory or --module path/to/file.py:factory")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise InputError(f"--module file not found: {path}", "check the path before the ':'")
            mspec = importlib.util.spec_from_file_location(f"optkit_user_{path.stem}", path)
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[mspec.name] = mod
            mspec.loader.exec_module(mod)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            mod = importlib.import_module(target)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"--module {spec!r}: cannot import {target} ({type(e).__name__}: {_first(e)})",
                         "run from the directory holding that code or give a path to the .py file") from e
    fn = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise InputError(f"--module {spec!r}: {target} has no callable {attr!r}",
                         "name a class or a function that builds the model without arguments")
    return fn


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def _state_dict_of(obj) -> dict | None:
    """The tensors-only dict inside a checkpoint (plain state_dict, or {'state_dict': ...} style), else None."""
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for k in _CHECKPOINT_KEYS:
            inner = obj.get(k)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    return None


TRUST_HINT = ("pass --trust-pickle (API: trust_pickle=True) only if you trust where the file came from; safer: save "
              "model.state_dict() and pass --module pkg.mod:factory, or save TorchScript (torch.jit.save)")


def _refuse(path: Path, what: str) -> InputError:
    return InputError(f"{path} {what}, and unpickling runs code from the file: refused without --trust-pickle", TRUST_HINT)


def _unsafe_global(e: BaseException, path: Path) -> str | None:
    """What a weights_only load refused ('posix.system', '__main__.Net'), or None when the file is not a pickle at all
    (junk, truncated): only a real pickle that needs more than tensors is worth the --trust-pickle question."""
    import re

    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return m.group(1).rstrip(".")
    if "weights_only" not in text and "Unsupported global" not in text and "pickle" not in text.lower():
        return None
    if "Unsupported operand" in text and not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            if fh.read(1) != b"\x80":  # a legacy torch.save starts with a pickle PROTO opcode
                return None
    return "objects outside plain tensors"


def load_source(path: Path, *, module: str | None = None, trust_pickle: bool = False) -> "TorchSource":
    """A TorchSource for a file: TorchScript, torch.export program, full-model pickle, or a state_dict (+ module).

    Only TorchScript and tensors-only pickles (state_dicts, checkpoints) load by default: a whole pickled model and a
    torch.export program are unpickled with code execution, so they need ``trust_pickle``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}", "check the path")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty", "save the model again")
    if _is_torchscript(path):
        try:
            mod = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise InputError(f"{path} looks like TorchScript but does not load ({type(e).__name__}: {_first(e)})",
                             "save it again with torch.jit.save") from e
        return TorchSource(mod.eval(), f"TorchScript file {path}", "torchscript")
    if path.suffix.lower() == ".pt2" or _is_exported_program(path):
        if not trust_pickle:  # torch.export.load unpickles weights and constants with weights_only=False
            raise _refuse(path, "is a torch.export program (torch.export.load unpickles its weights and constants)")
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            raise InputError(f"{path} is not a loadable torch.export program ({type(e).__name__}: {_first(e)})",
                             "save it with torch.export.save") from e
        return TorchSource(ep, f"torch.export program {path}", "exported")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        trusted = True
    except Exception as e:
        glob = _unsafe_global(e, path)
        if glob is None:
            why = "not a pickle or a torch zip archive" if "Weights only load failed" in str(e) else _first(e)
            raise InputError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {why})",
                             "pass a TorchScript file, a torch.save'd model or state_dict, or a .pt2 program") from e
        if not trust_pickle:
            raise _refuse(path, f"needs full unpickling (it references {glob}, not only tensors)") from None
        trusted = False
        obj = None
    if not trusted:
        # the user opted in (--trust-pickle): unpickling runs code from the file, as torch.load(weights_only=False) does
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as e:
            raise InputError(f"{path} is a pickled model whose class cannot be imported ({_first(e)})",
                             "run from the directory that holds the model's code, or save a state_dict and pass --module") from e
        except Exception as e:
            raise InputError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {_first(e)})",
                             "pass a TorchScript file, a torch.save'd model or state_dict, or a .pt2 program") from e
    if isinstance(obj, dict) and not _state_dict_of(obj):
        inner = next((obj[k] for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), torch.nn.Module)), None)
        if inner is not None:
            obj = inner
    if isinstance(obj, torch.nn.Module):
        if module:
            raise InputError(f"{path} holds a whole model ({type(obj).__name__}); --module is only for state_dicts",
                             "drop --module")
        return TorchSource(obj.eval(), f"pickled {type(obj).__name__} from {path}", "module")
    sd = _state_dict_of(obj)
    if sd is None:
        raise InputError(f"{path} holds a {type(obj).__name__}, not a model or a state_dict",
                         "save the model (torch.save(model)), its state_dict, TorchScript or a torch.export program")
    if not module:
        raise InputError(f"{path} is a state_dict ({len(sd)} tensors) with no architecture",
                         "pass --module package.module:factory (or file.py:factory) that builds the model")
    model = load_factory(module)()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--module {module} returned a {type(model).__name__}, not a torch.nn.Module",
                         "the factory must build and return the model")
    try:
        res = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), _first(e))
        raise InputError(f"state_dict {path.name} does not fit --module {module}: {detail}",
                         "check that the factory builds the same architecture (and options) the weights were trained with") from e
    if res.missing_keys or res.unexpected_keys:
        def _few(keys):
            return ", ".join(list(keys)[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        raise InputError(f"state_dict {path.name} does not fit --module {module}: "
                         + (f"missing {_few(res.missing_keys)}" if res.missing_keys else "")
                         + ("; " if res.missing_keys and res.unexpected_keys else "")
                         + (f"unexpected {_few(res.unexpected_keys)}" if res.unexpected_keys else ""),
                         "check that the factory builds the same architecture (and options) the weights were trained with")
    return TorchSource(model.eval(), f"state_dict {path} into {module}", "module")


def from_object(obj) -> "TorchSource":
    import torch

    if isinstance(obj, torch.jit.ScriptModule):
        return TorchSource(obj.eval(), f"TorchScript module {obj.original_name}", "torchscript")
    if isinstance(obj, torch.export.ExportedProgram):
        return TorchSource(obj, "torch.export program", "exported")
    return TorchSource(obj.eval(), f"nn.Module {type(obj).__name__}", "module")


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
