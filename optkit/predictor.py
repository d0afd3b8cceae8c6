"""``optkit.load``: model directory → predictor, whatever backend the artifact was compiled for.

    p = optkit.load("optkit-out/digits_cnn")        # the latest version, or .../digits_cnn/3, or a .onnx file
                                                      # (an artifact's files are checked against its manifest first)
    p.inputs                                          # [TensorSpec(name, dtype, shape)]
    out = p.run({"input": x})                         # {output name: array}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .artifact import MANIFEST, check, read_manifest, versions
from .errors import InputError


def resolve_artifact(path: str | Path, verify: bool = True) -> tuple[Path, dict | None, Path]:
    """(directory or file, manifest or None, the ONNX model) for an artifact version dir, a model dir holding
    numbered versions (the latest is taken), or a .onnx file. An artifact's files are checked against the sha256 its
    manifest recorded (IntegrityError on a mismatch) unless ``verify`` is False."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} not found", "pass an artifact directory (OUT/<name>/<version>) or a .onnx file")
    if p.is_file():
        return p, None, p
    if not (p / MANIFEST).exists():
        vs = versions(p)
        if not vs:
            raise InputError(f"{p} is neither an optkit artifact (no {MANIFEST}) nor a directory of numbered versions",
                             "pass OUT/<name>/<version> as written by optkit optimize")
        p = p / str(vs[-1])
    man = read_manifest(p)
    if verify:
        check(p, man)
    return p, man, p / man["output"]["path"]


def artifact_backend(man: dict | None) -> str:
    if not man:
        return "ort"
    return (man.get("backend") or {}).get("backend") or man["recipe"].get("backend", "ort")


def backend_options(man: dict | None, backend: str):
    """The recipe's backend options when the artifact was built for ``backend``, else that backend's defaults."""
    from .backends import get_backend

    be = get_backend(backend, check=False)
    if man and artifact_backend(man) == backend and man["recipe"].get("backend_options"):
        return be.Options.from_dict(man["recipe"]["backend_options"], where=f"backend {backend}")
    return be.Options()


def load_path(artifact: Path, man: dict | None, model: Path, backend: str) -> Path:
    """What ``Backend.load`` gets: the compiled directory for an artifact compiled by that backend when the
    backend loads compiled artifacts (TVM), ORT's saved optimized graph (compiled/model.ort.onnx) when the artifact
    has one, else the ONNX model (TensorRT finds compiled/engine.plan itself). optimize checks that what this returns
    gives the outputs the accuracy gate judged."""
    if man is None:
        return model
    if backend == "ort":
        for d in ((artifact / "compiled") if artifact_backend(man) == "ort" else None, artifact / "compiled-ort"):
            if d is not None and (d / "model.ort.onnx").is_file():
                return d / "model.ort.onnx"
        return model
    if backend != "tvm":
        return model
    extra, compiled = artifact / f"compiled-{backend}", artifact / "compiled"
    if extra.is_dir():
        return extra
    if artifact_backend(man) == backend and compiled.is_dir():
        return compiled
    return model


def isa_mismatch(man: dict | None) -> str | None:
    """A warning when the artifact's INT8 types were chosen for a CPU whose ORT kernels accumulate in 32 bits (VNNI)
    and this host's U8S8 kernels saturate: the accuracy the gate measured there does not hold here."""
    rec = (man or {}).get("int8") or {}
    if not rec or rec.get("u8s8_saturates_here"):
        return None
    risky = [u for u in rec.get("passes", []) if str(u.get("activation", "")).startswith("uint8")
             and u.get("weight") == "int8" and not u.get("reduce_range")]
    if not risky:
        return None
    from .hw import isa_label, ort_int8_kernels

    if not ort_int8_kernels().get("u8s8_saturates"):
        return None
    return (f"this artifact's INT8 (U8 activations x S8 weights, 8-bit) was built and judged on {rec.get('built_on_isa')}; "
            f"on this CPU ({isa_label()}) ONNX Runtime's U8S8 kernels saturate, so outputs can differ from what the gate "
            "measured: re-run optimize on this CPU (it picks reduce_range) or bench it here first")


class Predictor:
    """An open model: ``run(feeds) -> {name: array}`` (also callable), ``inputs``/``outputs`` specs, ``backend``,
    ``manifest`` (None for a bare .onnx). Close it (or use ``with``) to free the session."""

    def __init__(self, path: str | Path, backend: str | None = None, threads: int = 1, verify: bool = True):
        from .backends import get_backend
        from .checks import check_threads

        self._session = None
        check_threads(threads)
        self.path, self.manifest, self.model_path = resolve_artifact(path, verify=verify)
        self.backend = backend or artifact_backend(self.manifest)
        be = get_backend(self.backend)
        st = be.status()
        if not st.get("ok"):
            from .errors import BackendUnavailable

            raise BackendUnavailable(f"cannot load {self.path} on backend {self.backend!r}: {st.get('reason')}",
                                     "use another --backend (ort runs everywhere)")
        target = load_path(self.path, self.manifest, self.model_path, self.backend) if self.path.is_dir() else self.model_path
        self.isa_warning = isa_mismatch(self.manifest) if self.backend == "ort" else None
        if self.isa_warning:
            import warnings

            warnings.warn(self.isa_warning, RuntimeWarning, stacklevel=3)
        self._session = be.load(target, threads=threads, options=backend_options(self.manifest, self.backend))
        self.inputs = list(self._session.inputs)
        self.outputs = list(self._session.outputs)

    def run(self, feeds: dict[str, np.ndarray] | list | tuple) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            arrays = list(feeds) if isinstance(feeds, (list, tuple)) else [feeds]
            if len(arrays) != len(self.inputs):
                raise InputError(f"{len(arrays)} input array(s) for {len(self.inputs)} model input(s)",
                                 f"pass a dict keyed by {[s.name for s in self.inputs]}")
            feeds = {s.name: a for s, a in zip(self.inputs, arrays)}
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}", f"the model's inputs are {[s.name for s in self.inputs]}")
        from .data import as_array  # keeps rank-0 (scalar) inputs rank 0

        feeds = {s.name: as_array(feeds[s.name], np.dtype(s.dtype)) for s in self.inputs}
        return self._session.run(feeds)

    __call__ = run

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({str(self.path)!r}, backend={self.backend!r}, inputs={[s.name for s in self.inputs]})"


def load(path: str | Path, backend: str | None = None, threads: int = 1, verify: bool = True) -> Predictor:
    """A Predictor for an artifact (``OUT/<name>/<version>``, or ``OUT/<name>`` for the latest version) or a .onnx file,
    on the backend the artifact was compiled for unless ``backend`` says otherwise.

    An artifact's files (model, external data, compiled files) are checked against the sha256 its manifest recorded
    before anything is loaded: a mismatch raises IntegrityError. ``verify=False`` skips that (you checked it)."""
    return Predictor(path, backend, threads, verify)
