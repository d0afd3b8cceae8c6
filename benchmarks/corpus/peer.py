"""The plain peer: onnxruntime.quantization with library defaults, run in a child process so a crash is recorded.

    python -m benchmarks.corpus.peer static|dynamic SRC.onnx DST.onnx [CALIB.npz]
"""
from __future__ import annotations

import sys

import numpy as np


def unstack(path) -> list[dict]:
    with np.load(path) as z:
        arrs = {k: z[k] for k in z.files if k != "labels"}
    n = len(next(iter(arrs.values())))
    return [{k: np.asarray(v[i]) for k, v in arrs.items()} for i in range(n)]  # a stacked rank-0 input stays a 0-d array


def main(argv=None) -> int:
    mode, src, dst, *rest = argv if argv is not None else sys.argv[1:]
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    if mode == "dynamic":
        quantize_dynamic(src, dst)
        return 0
    feeds = unstack(rest[0])

    class Reader:
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader())  # QDQ, MinMax, per-tensor: the library defaults
    return 0


if __name__ == "__main__":
    sys.exit(main())
