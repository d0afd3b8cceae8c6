"""optkit inside a PyTorch training pipeline: distillation, structured pruning / low-rank factorization of
torch modules (the same rules as the ONNX passes), and quantization through Intel Neural Compressor.

    from optkit.torch import Distiller, prune, lowrank, quantize
    student, rep = prune(model, ratio=0.5, example_inputs=(x,))
    distiller = Distiller(teacher, student, T=4.0, alpha=0.7)
    loss = distiller.loss(batch_x, batch_y)        # inside your own loop
    q = quantize(student, calib_data=calib_batches, example_inputs=(x,))   # INC PT2E static INT8
    q.to_onnx("student_int8.onnx")                                         # QDQ ONNX, runs INT8 on ORT
    art = optkit.optimize(student, "int8-ort", example_inputs=(x,))        # or let optkit quantize the export

Needs torch (``pip install 'optkit[torch]'``); quantize needs neural-compressor-pt (``'optkit[inc]'``).
"""
from __future__ import annotations

_LAZY = {
    "Distiller": ("optkit.torch.distill", "Distiller"),
    "distill_loss": ("optkit.torch.distill", "distill_loss"),
    "fit": ("optkit.torch.distill", "fit"),
    "prune": ("optkit.torch.compress", "prune"),
    "lowrank": ("optkit.torch.compress", "lowrank"),
    "count_flops": ("optkit.torch.compress", "count_flops"),
    "quantize": ("optkit.torch.quant", "quantize"),
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'optkit.torch' has no attribute {name!r}")
