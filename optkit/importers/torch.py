"""PyTorch → ONNX: an nn.Module, a TorchScript file, a pickled full model, a state_dict plus ``--module`` factory,
or a ``torch.export`` program (.pt2).

Exporters: ``dynamo`` (torch.export + onnxscript, opset >= 18) and ``torchscript`` (the tracing exporter, run with
the MultiheadAttention fast path off: its fused kernel has no ONNX symbolic, which is what breaks
``nn.TransformerEncoderLayer``). ``import_model`` tries them in ``exporters`` order and keeps the first whose
ONNX passes the parity check.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
import zipfile
from pathlib import Path

from ..errors import InputError
from ._torch_source import TorchSource, _first, _flatten, _quiet  # noqa: F401  (re-exported)

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
        return _load_torchscript(path)
    if path.suffix.lower() == ".pt2" or _is_exported_program(path):
        return _load_exported(path, trust_pickle)
    obj = _unpickle(path, trust_pickle)
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
    return TorchSource(_build_with_state_dict(path, sd, module).eval(), f"state_dict {path} into {module}", "module")


def _load_torchscript(path: Path) -> "TorchSource":
    import torch

    try:
        mod = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InputError(f"{path} looks like TorchScript but does not load ({type(e).__name__}: {_first(e)})",
                         "save it again with torch.jit.save") from e
    return TorchSource(mod.eval(), f"TorchScript file {path}", "torchscript")


def _load_exported(path: Path, trust_pickle: bool) -> "TorchSource":
    import torch

    if not trust_pickle:  # torch.export.load unpickles weights and constants with weights_only=False
        raise _refuse(path, "is a torch.export program (torch.export.load unpickles its weights and constants)")
    try:
        ep = torch.export.load(str(path))
    except Exception as e:
        raise InputError(f"{path} is not a loadable torch.export program ({type(e).__name__}: {_first(e)})",
                         "save it with torch.export.save") from e
    return TorchSource(ep, f"torch.export program {path}", "exported")


def _unpickle(path: Path, trust_pickle: bool):
    """torch.load of the file: tensors only (weights_only) unless it needs more and ``trust_pickle`` allows that."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        glob = _unsafe_global(e, path)
        if glob is None:
            why = "not a pickle or a torch zip archive" if "Weights only load failed" in str(e) else _first(e)
            raise InputError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {why})",
                             "pass a TorchScript file, a torch.save'd model or state_dict, or a .pt2 program") from e
        if not trust_pickle:
            raise _refuse(path, f"needs full unpickling (it references {glob}, not only tensors)") from None
    # the user opted in (--trust-pickle): unpickling runs code from the file, as torch.load(weights_only=False) does
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as e:
        raise InputError(f"{path} is a pickled model whose class cannot be imported ({_first(e)})",
                         "run from the directory that holds the model's code, or save a state_dict and pass --module") from e
    except Exception as e:
        raise InputError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {_first(e)})",
                         "pass a TorchScript file, a torch.save'd model or state_dict, or a .pt2 program") from e


def _build_with_state_dict(path: Path, sd: dict, module: str):
    """The model the ``module`` factory builds, with the state_dict loaded; InputError when the weights do not fit."""
    import torch

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
    return model


def from_object(obj) -> "TorchSource":
    import torch

    if isinstance(obj, torch.jit.ScriptModule):
        return TorchSource(obj.eval(), f"TorchScript module {obj.original_name}", "torchscript")
    if isinstance(obj, torch.export.ExportedProgram):
        return TorchSource(obj, "torch.export program", "exported")
    return TorchSource(obj.eval(), f"nn.Module {type(obj).__name__}", "module")
