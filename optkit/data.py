"""Sample inputs: loaded from ``--data`` (.npz file, directory, or stacked .npz) or synthesized from the signature."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from .checks import check_finite
from .errors import InputError
from .feedstore import BatchedFeeds, DiskFeeds, Segment, bad_file, count_non_finite, row_counts, scan
from .model import TensorSpec, signature

LABELS_KEY = "labels"
_BATCH_NAMES = re.compile(r"^(batch|batch_size|n|b|bs|N|unk__\d+)$", re.I)


@dataclass
class Samples:
    """A sequence of feeds (input name -> array), optional labels per feed, and where they came from.

    ``feeds`` is a list, or for ``--data`` a ``feedstore.DiskFeeds`` that reads each feed from disk when indexed or
    iterated (slices read nothing): take the slice you need, then iterate."""

    feeds: Sequence[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None = None
    synthetic: bool = False
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.feeds)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.feeds[0].items()} if self.feeds else {}

    def head(self, n: int) -> "Samples":
        return Samples(self.feeds[:n], self.labels[:n] if self.labels else None, self.synthetic, self.source)

    def batched(self, batch: int) -> "Samples":
        """Regroup feeds into feeds of ``batch`` rows along axis 0 (drops a ragged tail; repeats the rows when there
        are fewer than ``batch``). Scalar (rank-0) inputs have no batch axis: each new feed keeps the first feed's
        value. The new feeds are cut when used (``feedstore.BatchedFeeds``): taking one reads only its rows' feeds."""
        first = self.feeds[0]
        names = [k for k, v in first.items() if np.ndim(v) > 0]
        scalars = {k: v for k, v in first.items() if np.ndim(v) == 0}
        if not names:
            return Samples(self.feeds, self.labels, self.synthetic, self.source)
        counts = row_counts(self.feeds, names)
        if counts is None:
            raise InputError(f"--data {self.source}: the inputs {names} have different batch sizes within a feed",
                             "give every input the same leading (batch) axis")
        rows = sum(counts)
        reps = -(-batch // rows) if rows < batch else 1
        feeds = BatchedFeeds(self.feeds, names, scalars, counts, batch, reps)
        labs = None
        if self.labels:
            labels = np.concatenate(self.labels, axis=0)
            if labels.shape[0] < rows * reps:
                labels = np.concatenate([labels] * (-(-rows * reps // labels.shape[0])), axis=0)
            labs = [labels[i * batch:(i + 1) * batch] for i in range(len(feeds))]
        return Samples(feeds, labs, self.synthetic, self.source)


_DIMS = re.compile(r"[0-9]+(?:x[0-9]+)*")


def parse_dims(text, where: str = "--shape", error: type = InputError) -> tuple[int, ...]:
    """The one shape syntax of optkit (``--shape``, TVM's ``shapes`` option, TensorRT profiles): ``'1x3x224x224'``
    -> (1, 3, 224, 224). Dims are positive integers separated by 'x' only (',' separates MIN,OPT,MAX in a TensorRT
    profile, so it never separates dims); no empty, zero, negative or non-numeric dims. Raises ``error`` naming
    ``where``."""
    t = str(text).strip().lower()
    hint = "write dims separated by 'x', e.g. 1x3x224x224"
    if not _DIMS.fullmatch(t):
        if "," in t and _DIMS.fullmatch(t.replace(",", "x")):
            hint = f"separate dims with 'x' ({t.replace(',', 'x')}); ',' separates MIN,OPT,MAX in TensorRT profiles"
        raise error(f"{where}: bad shape {text!r}", hint)
    dims = tuple(int(p) for p in t.split("x"))
    if min(dims) < 1:
        raise error(f"{where}: bad shape {text!r} (dims must be >= 1)", hint)
    return dims


def parse_shape_args(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["input=1x3x224x224", "ids=1x128"]`` -> {"input": (1, 3, 224, 224), "ids": (1, 128)} (``parse_dims``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        if not sep or not name.strip():
            raise InputError(f"bad --shape {item!r}", "use NAME=DIMS, e.g. --shape input=1x3x224x224")
        shapes[name.strip()] = parse_dims(dims, f"--shape {item!r}")
    return shapes


def resolve_shapes(inputs: list[TensorSpec], shapes: dict[str, tuple[int, ...]] | None,
                   source: str = "--shape") -> dict[str, tuple[int, ...]]:
    """Static shape per input: from ``shapes`` when given, else the model's dims with a batch-like
    leading symbolic dim set to 1. Any other symbolic dim without a given shape is an error.

    ``source`` names where ``shapes`` came from in messages ('--shape', or the sample data); a rank-0 (scalar)
    input has shape ``()``."""
    shapes = dict(shapes or {})
    names = {s.name for s in inputs}
    for name in shapes:
        if name not in names:
            raise InputError(f"{source} names unknown input {name!r}", f"the model's inputs are {sorted(names)}")
    out = {}
    for s in inputs:
        if s.name in shapes:
            given = tuple(shapes[s.name])
            if len(given) != len(s.shape):
                raise InputError(f"{source}: {s.name} has rank {len(given)}, the model expects rank {len(s.shape)} {_fmt(s.shape)}",
                                 "give one value per dimension" + (" (none for a scalar input)" if not s.shape else ""))
            for i, (g, d) in enumerate(zip(given, s.shape)):
                if isinstance(d, int) and d != g:
                    raise InputError(f"{source}: {s.name} sets dim {i} to {g}, but the model fixes it to {d}",
                                     f"use {_fmt(s.shape)} with symbolic dims filled in")
            out[s.name] = tuple(given)
            continue
        dims = []
        for i, d in enumerate(s.shape):
            if isinstance(d, int):
                dims.append(d)
            elif i == 0 and (d is None or _BATCH_NAMES.match(str(d))):
                dims.append(1)
            else:
                raise InputError(
                    f"input {s.name!r} has symbolic dim {d!r} at axis {i} {_fmt(s.shape)} and no value for it",
                    f"give --shape {s.name}={'x'.join(str(x) if isinstance(x, int) else ('1' if j == 0 else 'N') for j, x in enumerate(s.shape))} "
                    "or pass --data")
        out[s.name] = tuple(dims)
    return out


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _gather_vocab(model: onnx.ModelProto, name: str) -> int | None:
    """If an integer input indexes a Gather over an initializer (an embedding), its row count."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == name and n.input[0] in inits:
            return int(inits[n.input[0]].dims[0])
    return None


def synthetic_samples(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None,
                      n: int = 8, seed: int = 0) -> Samples:
    """Random feeds from the signature: floats ~ N(0,1), masks = 1, token types = 0, ids in the embedding range."""
    inputs, _ = signature(model)
    static = resolve_shapes(inputs, shapes)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed = {}
        for s in inputs:
            shape, dt = static[s.name], np.dtype(s.dtype)
            lname = s.name.lower()
            if dt.kind == "f":
                feed[s.name] = np.asarray(rng.standard_normal(shape), dt)
            elif dt.kind == "b":
                feed[s.name] = np.ones(shape, dt)
            elif "mask" in lname:
                feed[s.name] = np.ones(shape, dt)
            elif "type" in lname or "segment" in lname:
                feed[s.name] = np.zeros(shape, dt)
            elif not shape and dt.kind in "iu":  # a scalar count/rate/size: 1 is valid where 0 may not be
                feed[s.name] = np.asarray(1, dt)
            else:
                high = _gather_vocab(model, s.name) or 2
                feed[s.name] = np.asarray(rng.integers(0, high, size=shape), dt)
        feeds.append(feed)
    return Samples(feeds, None, synthetic=True, source="synthetic",
                   warnings=["no --data given: using synthetic random inputs; accuracy numbers are fidelity to "
                             "the FP32 model on noise, and calibration on synthetic data is not representative"])


def load_samples(path: str | Path, model: onnx.ModelProto, limit: int | None = None) -> Samples:
    """Feeds from a .npz (one feed, or a stack with one extra leading axis), a .npy (a one-input model's array, one
    feed or a stack) or a directory of .npz files, read from disk per feed when used (``optkit.feedstore``).

    Every file's names, shapes and dtypes are validated here from the array headers, and float arrays are scanned for
    NaN/Inf a block at a time; no feed is held. An array named ``labels`` holds class labels (per feed, or per stacked
    feed); labels are read here."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--data path not found: {p}", "pass a .npz file or a directory of .npz files")
    files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"--data directory {p} holds no .npz files", "save feeds with numpy.savez(name=array, ...)")
    inputs, _ = signature(model)
    specs = {s.name: s for s in inputs}
    segments, labels, with_labels, total = [], [], 0, 0
    for f in files:
        seg, lab = _segment(f, specs)
        if limit and total + seg.count > limit:
            seg = replace(seg, count=limit - total)
            lab = lab[:seg.count] if lab is not None else None
        segments.append(seg)
        total += seg.count
        if lab is not None:
            labels += lab
            with_labels += 1
        if limit and total >= limit:
            break
    if with_labels and with_labels != len(segments):
        raise InputError(f"--data {p}: '{LABELS_KEY}' is present in some files only", "give labels for every feed or none")
    return Samples(DiskFeeds(segments), labels or None, synthetic=False, source=str(p))


def _segment(f: Path, specs: dict[str, TensorSpec]) -> tuple[Segment, list[np.ndarray] | None]:
    """One --data file's feeds (headers validated, floats checked finite) and its labels."""
    try:
        refs = scan(f)
    except Exception as e:
        raise bad_file(f, e) from e
    if set(refs) == {""}:  # a .npy: the one input's array
        if len(specs) != 1:
            raise InputError(f"--data {f.name} is a .npy file (one array), the model has inputs {sorted(specs)}",
                             "save the inputs to one .npz: numpy.savez(path, input_name=array, ...)")
        refs = {next(iter(specs)): refs[""]}
    # header-only stand-ins (no memory): the checks below read shapes and dtypes, never values
    arrays = {k: np.broadcast_to(np.zeros((), r.dtype), r.shape) for k, r in refs.items()}
    check_finite({k: v for k, v in arrays.items() if v.size == 0}, f"--data {f}")  # empty arrays (a 0-length axis)
    lab_ref = refs.pop(LABELS_KEY, None)
    arrays.pop(LABELS_KEY, None)
    unknown = sorted(set(arrays) - set(specs))
    missing = sorted(set(specs) - set(arrays))
    if unknown or missing:
        raise InputError(
            f"--data {f.name} does not match the model inputs"
            + (f": unknown {unknown}" if unknown else "") + (f", missing {missing}" if missing else ""),
            f"name the arrays after the model inputs {sorted(specs)} (plus optional '{LABELS_KEY}')")
    squeezed = {k: _squeeze_scalar(specs[k], v, arrays, specs) for k, v in arrays.items()}
    scalars = frozenset(k for k in arrays if squeezed[k].ndim != arrays[k].ndim)
    stacked = {k: _is_stacked(specs[k], v) for k, v in squeezed.items()}
    if len(set(stacked.values())) > 1:
        raise InputError(f"--data {f.name}: some arrays are stacked (extra leading axis) and some are not",
                         "stack all inputs the same way")
    for k, v in squeezed.items():
        _check_array(specs[k], v[0] if stacked[k] else v, f.name)
    is_stacked = any(stacked.values())
    count = 1
    if is_stacked:
        counts = {v.shape[0] for v in squeezed.values()}
        if len(counts) != 1:
            raise InputError(f"--data {f.name}: stacked arrays have different counts {sorted(counts)}",
                             "stack the same number of feeds for every input")
        count = counts.pop()
        if lab_ref is not None and (lab_ref.ndim == 0 or lab_ref.shape[0] != count):
            raise InputError(f"--data {f.name}: '{LABELS_KEY}' has {lab_ref.shape[0] if lab_ref.ndim else 1} rows "
                             f"for {count} stacked feeds", "give one row of labels per stacked feed")
    _check_values(f, refs, lab_ref, is_stacked)
    seg = Segment(refs, count, is_stacked, {k: np.dtype(specs[k].dtype) for k in refs}, scalars)
    if lab_ref is None:
        return seg, None
    lab = lab_ref.read()
    return seg, ([np.asarray(lab[i]).reshape(-1) for i in range(count)] if is_stacked else [np.asarray(lab).reshape(-1)])


def _check_values(f: Path, refs: dict, lab_ref, stacked: bool) -> None:
    """NaN/Inf in the float arrays (a data problem, said before any pass runs), a block of rows at a time."""
    every = {**refs, **({LABELS_KEY: lab_ref} if lab_ref is not None else {})}
    try:
        bad = {k: c for k, r in every.items() if (c := count_non_finite(r, stacked and k != LABELS_KEY))}
    except InputError:
        raise
    except Exception as e:
        raise bad_file(f, e) from e
    if bad:
        what = ", ".join(f"'{k}' holds {c} of {every[k].size}" for k, c in bad.items())
        raise InputError(f"--data {f}: non-finite values (NaN/Inf): {what}",
                         "replace or drop those values (numpy.nan_to_num, or remove the feeds) before optimizing "
                         "or benchmarking")


def _is_stacked(spec: TensorSpec, arr: np.ndarray) -> bool:
    return arr.ndim == len(spec.shape) + 1


def _squeeze_scalar(spec: TensorSpec, arr: np.ndarray, arrays: dict[str, np.ndarray],
                    specs: dict[str, TensorSpec]) -> np.ndarray:
    """A scalar input saved as a 1-element array (``np.savez(sr=[16000])``) in an otherwise unstacked file is
    the scalar itself, not a stack of one feed."""
    if spec.shape or arr.shape != (1,):
        return arr
    others = [(specs[k], v) for k, v in arrays.items() if k != spec.name and specs[k].shape]
    return arr.reshape(()) if others and not any(_is_stacked(sp, v) for sp, v in others) else arr


def split_stacked(feed: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]] | None:
    """The feeds of a stacked feed (every array has a leading axis of the same length), or None when the arrays
    cannot be a stack. Used where no signature tells the ranks (a framework model's --data)."""
    if not feed or any(np.ndim(v) == 0 for v in feed.values()):
        return None
    counts = {np.shape(v)[0] for v in feed.values()}
    if len(counts) != 1:
        return None
    count = counts.pop()
    return [{k: as_array(v[i]) for k, v in feed.items()} for i in range(count)] if count else None


def as_array(x, dtype=None) -> np.ndarray:
    """A C-contiguous ndarray that keeps rank 0 (``np.ascontiguousarray`` turns a scalar into shape (1,))."""
    a = np.asarray(x, dtype=dtype)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _check_array(spec: TensorSpec, arr: np.ndarray, fname: str) -> None:
    if arr.ndim != len(spec.shape):
        raise InputError(f"--data {fname}: '{spec.name}' has shape {list(arr.shape)}, the model expects {_fmt(spec.shape)}",
                         "fix the array's rank (add a leading axis to stack several feeds)")
    for i, (a, d) in enumerate(zip(arr.shape, spec.shape)):
        if isinstance(d, int) and a != d:
            raise InputError(f"--data {fname}: '{spec.name}' has shape {list(arr.shape)}, the model expects {_fmt(spec.shape)} (axis {i})",
                             "resize or re-export the data to the model's input shape")
    want = np.dtype(spec.dtype)
    # float64 -> float32 and int32 -> int64 are fine; int -> float is not (un-normalized uint8 images, say)
    same_family = arr.dtype.kind == want.kind or (arr.dtype.kind in "iu" and want.kind in "iu")
    if arr.dtype != want and not same_family:
        raise InputError(f"--data {fname}: '{spec.name}' is {arr.dtype}, the model expects {want}",
                         f"save it as {want}")


def _cast(spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
    return as_array(arr, np.dtype(spec.dtype))


def get_samples(model: onnx.ModelProto, data: str | Path | None, shapes: dict[str, tuple[int, ...]] | None,
                limit: int | None = None, n_synthetic: int = 8) -> Samples:
    """``--data`` when given, else synthetic feeds (with a warning)."""
    if data:
        s = load_samples(data, model, limit)
        if shapes:
            for name, shp in shapes.items():
                got = s.feeds[0].get(name)
                if got is not None and tuple(got.shape) != tuple(shp):
                    raise InputError(f"--shape {name}={'x'.join(map(str, shp))} disagrees with --data ({list(got.shape)})",
                                     "drop --shape or make the data match")
        return s
    return synthetic_samples(model, shapes, n=n_synthetic)


def feeds_digest(samples) -> str:
    """sha256 of the feeds' names, dtypes, shapes and bytes (and labels), in order."""
    if samples is None:
        return "none"
    cached = getattr(samples, "_optkit_digest", None)
    if cached is not None and cached[0] == len(samples.feeds):
        return cached[1]
    h = hashlib.sha256()
    for f in samples.feeds:
        for k in sorted(f):
            a = np.ascontiguousarray(f[k])
            h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.data)
    for lab in samples.labels or []:
        h.update(np.ascontiguousarray(lab).data)
    h.update(f"synthetic={getattr(samples, 'synthetic', False)}".encode())
    d = h.hexdigest()
    try:
        samples._optkit_digest = (len(samples.feeds), d)
    except AttributeError:
        pass
    return d
