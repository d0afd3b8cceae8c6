"""INC plumbing for optkit.torch.quantize (optkit.torch.quant): keeping Intel Neural Compressor / torch quiet, importing
INC, calibration items as model arguments, the dynamic-batch export spec, and PT2E GraphModule helpers."""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings

from optkit.errors import InputError

_INC_HINT = "pip install 'optkit[inc]'"

_CFG_FIELDS = ("w_dtype", "w_sym", "w_granularity", "w_algo", "act_dtype", "act_sym", "act_granularity", "act_algo")


# ---------------------------------------------------------------------------------------------------------------
# keeping INC / torch quiet
# ---------------------------------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Keeps INC's WARNING+ messages (to explain a failure) instead of printing them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(f"{record.levelname}: {record.getMessage()}")
        except Exception:  # pragma: no cover - a malformed record must not break the call
            pass

    def last_error(self) -> str | None:
        errors = [m for m in self.messages if m.startswith(("ERROR", "CRITICAL"))]
        return errors[-1].split(": ", 1)[1] if errors else None


class _Quiet:
    """Context manager: INC's logger captured, torch/torchao/onnxscript loggers and Python warnings muted, Python-level
    stdout/stderr swallowed. ``loud()`` gives user callbacks their stdout/stderr back."""

    _MUTED = ("torch", "torchao", "onnxscript", "onnx_ir")

    def __enter__(self):
        self.capture = _Capture()
        inc = logging.getLogger("neural_compressor")
        self._inc = (inc, inc.level, list(inc.handlers), inc.propagate)
        inc.handlers = [self.capture]
        inc.setLevel(logging.WARNING)
        inc.propagate = False
        self._levels = []
        names = set(self._MUTED) | {n for n in logging.root.manager.loggerDict if n.startswith(("torch.", "torchao."))}
        for name in names:
            lg = logging.getLogger(name)
            if name in self._MUTED or lg.level:  # children without their own level follow the muted parent
                self._levels.append((lg, lg.level))
                lg.setLevel(logging.CRITICAL)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self._redirect.enter_context(contextlib.redirect_stderr(io.StringIO()))  # torch.export prints failures there
        return self

    def __exit__(self, *exc):
        self._redirect.close()
        self._warn.__exit__(*exc)
        for lg, level in reversed(self._levels):
            lg.setLevel(level)
        inc, level, handlers, propagate = self._inc
        inc.handlers = handlers
        inc.setLevel(level)
        inc.propagate = propagate
        return False

    @contextlib.contextmanager
    def loud(self):
        with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stderr):
            yield


def _import_inc():
    """(export, prepare, convert, autotune, TuningConfig, INT8StaticQuantConfig, version); call inside _Quiet."""
    try:
        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import (INT8StaticQuantConfig, TuningConfig, autotune, convert,
                                                          prepare)
    except ImportError as e:
        raise InputError(f"optkit.torch.quantize needs Intel Neural Compressor for PyTorch (neural_compressor.torch), "
                         f"which cannot be imported here ({e})", _INC_HINT) from e
    try:
        from neural_compressor.common.version import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    return export, prepare, convert, autotune, TuningConfig, INT8StaticQuantConfig, version


def _init_inc_logger():
    """INC configures its logger (INFO, a stderr handler) the first time its logger module is imported; do that
    before muting, so the setup does not undo the muting."""
    try:
        import neural_compressor.common.utils.logger  # noqa: F401
    except ImportError as e:
        raise InputError(f"optkit.torch.quantize needs Intel Neural Compressor (neural-compressor-pt), "
                         f"which cannot be imported here ({e})", _INC_HINT) from e


# ---------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------


def _to_tensor(v):
    import numpy as np
    import torch

    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    return v


def _as_args(item, n_inputs: int, what: str) -> tuple:
    """One calibration item (tensor, array, tuple/list of them) as positional args for the model."""
    import numpy as np
    import torch

    if isinstance(item, (torch.Tensor, np.ndarray)):
        args = (item,)
    elif isinstance(item, (tuple, list)):
        args = tuple(item)
    else:
        raise ValueError(f"{what}: expected a tensor or a tuple of tensors, got {type(item).__name__}")
    if len(args) < n_inputs:
        raise ValueError(f"{what}: has {len(args)} tensor(s) but the model takes {n_inputs} input(s)")
    # extra trailing items (labels from an (x, y) DataLoader) are dropped
    return tuple(_to_tensor(a) for a in args[:n_inputs])


def _batch_spec(example_inputs: tuple, dynamic_batch: bool):
    """(example inputs for torch.export, dynamic_shapes or None). A batch-1 example is repeated to batch 2: torch.export
    specializes a size-1 dim and then refuses to make it dynamic."""
    import torch

    if not dynamic_batch:
        return example_inputs, None
    batch = torch.export.Dim("batch")
    ex, shapes = [], []
    for a in example_inputs:
        if isinstance(a, torch.Tensor) and a.dim() >= 1:
            ex.append(torch.cat([a, a]) if a.shape[0] == 1 else a)
            shapes.append({0: batch})
        else:
            ex.append(a)
            shapes.append(None)
    return tuple(ex), tuple(shapes)


def _config_dict(cfg) -> dict:
    d = {"name": getattr(cfg, "name", type(cfg).__name__)}
    for k in _CFG_FIELDS:
        if hasattr(cfg, k):
            d[k] = getattr(cfg, k)
    return d


def _allow_train_eval(gm):
    """torch.export'ed / PT2E GraphModules raise NotImplementedError on ``.eval()`` / ``.train()``. The graphs here
    were captured in eval mode (INC's export calls ``model.eval()``), so make ``.eval()`` / ``.train(False)`` a no-op
    that returns the model (the usual first line of an eval_fn or calib_fn) and ``.train()`` a clear error.
    (torchao's ``move_exported_model_to_eval`` is not used: its dropout rewrite crashes on converted graphs.)"""
    import types

    def _train(self, mode: bool = True):
        if mode:
            raise NotImplementedError("this PT2E (torch.export) graph was captured in eval mode for post-training "
                                      "quantization; it cannot be switched to training mode")
        return self

    def _eval(self):
        return self

    gm.train = types.MethodType(_train, gm)
    gm.eval = types.MethodType(_eval, gm)
    gm._exported_training = False  # torchao's flag (export_utils._EXPORTED_TRAINING_ATTR): already in eval mode
    return gm


def _qconfig_of(model):
    """The INC config a converted model was quantized with (INC sets ``model.qconfig`` = {algo: config})."""
    mapping = getattr(model, "qconfig", None)
    if isinstance(mapping, dict) and mapping:
        return next(iter(mapping.values()))
    return None
