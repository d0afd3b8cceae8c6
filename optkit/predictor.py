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
    backend loads compiled artifacts (TVM), else the ONNX model (ORT; TensorRT finds compiled/engine.plan itself)."""
    if backend != "tvm" or man is None:
        return model
    extra, compiled = artifact / f"compiled-{backend}", artifact / "compiled"
    if extra.is_dir():
        return extra
    if artifact_backend(man) == backend and compiled.is_dir():
        return compiled
    return model


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
        feeds = {s.name: np.ascontiguousarray(feeds[s.name], dtype=np.dtype(s.dtype)) for s in self.inputs}
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
