"""Example feeds and shape options for ``optkit import`` (optkit.importers): --dtype and --dynamic parsing, feeds from
example inputs or --data (.npz files), and growing the dynamic axes for the dynamic-shape parity check."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import as_array
from ..errors import InputError
from ..model import TensorSpec

_SEQ_LABELS = ("seq", "sequence", "seq_len", "sequence_length", "tokens")


def parse_dtypes(items) -> dict[str, str]:
    """``["ids=int64"]`` -> {"ids": "int64"}."""
    out = {}
    for item in items or []:
        name, sep, dt = str(item).partition("=")
        try:
            if not sep or not name:
                raise TypeError
            out[name.strip()] = np.dtype(dt.strip()).name
        except TypeError:
            raise InputError(f"bad --dtype {item!r}", "use NAME=DTYPE, e.g. --dtype input_ids=int64") from None
    return out


def parse_dynamic(items, feed: dict[str, np.ndarray]) -> dict[str, dict[int, str]]:
    """``batch`` (axis 0 of every input), ``seq`` (axis 1 of every input of rank >= 2) or ``NAME:AXIS[=label]``;
    comma-separated or repeated."""
    if isinstance(items, str):
        items = [items]
    out: dict[str, dict[int, str]] = {}
    for raw in items or []:
        for item in filter(None, (s.strip() for s in str(raw).split(","))):
            if item.lower() in ("none", "static"):
                continue
            if ":" in item:
                name, _, rest = item.partition(":")
                axis_s, _, label = rest.partition("=")
                if name not in feed:
                    raise InputError(f"--dynamic {item!r} names unknown input {name!r}", f"the inputs are {list(feed)}")
                try:
                    axis = int(axis_s)
                except ValueError:
                    raise InputError(f"bad --dynamic {item!r}", "use batch, seq or NAME:AXIS[=label]") from None
                rank = feed[name].ndim
                if not -rank <= axis < rank:
                    raise InputError(f"--dynamic {item!r}: input {name!r} has rank {rank}", "pick an axis inside the input's rank")
                axis %= rank
                out.setdefault(name, {})[axis] = label or f"{name}_dim{axis}"
            elif item.lower() in ("batch", "n", "batch_size"):
                for name, arr in feed.items():
                    if arr.ndim >= 1:
                        out.setdefault(name, {})[0] = "batch"
            elif item.lower() in _SEQ_LABELS:
                for name, arr in feed.items():
                    if arr.ndim >= 2:
                        out.setdefault(name, {})[1] = "seq"
            else:
                raise InputError(f"bad --dynamic {item!r}", "use batch, seq or NAME:AXIS[=label] (comma-separated)")
    return out


# -- example feeds ---------------------------------------------------------------------------------------------
def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        return np.asarray(x.numpy())
    return np.asarray(x)


def _read_npz_feeds(path: Path, order: list[str] | None, specs: dict[str, TensorSpec] | None,
                    shapes: dict | None, limit: int) -> list[dict[str, np.ndarray]]:
    """Feeds from --data without an ONNX signature. A file is one feed unless its 'labels' has two axes (a stack of
    per-feed labels) or the arrays have one axis more than the signature / --shape says."""
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise InputError(f"--data {path} not found or holds no .npz files", "pass a .npz file or a directory of them")
    feeds = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise InputError(f"cannot read --data file {f}: {type(e).__name__}", "write it with numpy.savez") from e
        from ..checks import check_finite

        check_finite(arrays, f"--data {f}")
        labels = arrays.pop("labels", None)
        names = list(arrays)
        if order:
            missing = [n for n in order if n not in arrays]
            if missing:
                raise InputError(f"--data {f.name} has no array(s) {missing}", f"its arrays are {names}")
            names = list(order)
        ranks = {n: len(specs[n].shape) for n in names if specs and n in specs}
        ranks.update({n: len(s) for n, s in (shapes or {}).items()})
        stacked = (labels is not None and labels.ndim == 2) or any(arrays[n].ndim == r + 1 for n, r in ranks.items() if n in arrays)
        if stacked:
            count = min(arrays[n].shape[0] for n in names)
            feeds += [{n: as_array(arrays[n][i]) for n in names} for i in range(count)]
        else:
            feeds.append({n: as_array(arrays[n]) for n in names})
        if len(feeds) >= limit:
            break
    return feeds[:limit]


def _example_feeds(src, example_inputs, data, shapes, dtypes, input_names, max_feeds, warn):
    """The feeds the export traces with and the parity check runs on: example first."""
    specs = src.input_specs()
    spec_map = {s.name: s for s in specs} if specs else None
    if example_inputs is not None:
        if isinstance(example_inputs, dict):
            feed = {k: _to_numpy(v) for k, v in example_inputs.items()}
        else:
            vals = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            arrays = [_to_numpy(v) for v in vals]
            names = list(input_names or (
                [s.name for s in specs] if specs else src.default_input_names(len(arrays))))
            if len(names) != len(arrays):
                raise InputError(f"{len(arrays)} example input(s) but {len(names)} input name(s) {names}",
                                 "give one name per example input")
            feed = dict(zip(names, arrays))
        feeds = [feed]
        source = "example_inputs"
    elif data is not None:
        feeds = _read_npz_feeds(Path(data), input_names or ([s.name for s in specs] if specs else None), spec_map,
                                shapes, max_feeds)
        source = str(data)
        if not specs and not shapes and len(feeds) == 1:
            feeds = _unstack_if_needed(src, feeds, max_feeds)
    elif shapes or specs:
        from ..data import resolve_shapes

        if specs:
            static = resolve_shapes(specs, shapes)
            types = {s.name: s.dtype for s in specs}
        else:
            static = dict(shapes)
            types = {n: dtypes.get(n, "float32") for n in static}
            unknown = sorted(set(dtypes) - set(static))
            if unknown:
                raise InputError(f"--dtype names input(s) {unknown} that have no --shape", "give a --shape for each input")
        rng = np.random.default_rng(0)
        feeds = []
        for _ in range(max(2, min(max_feeds, 4))):
            feed = {}
            for n, shp in static.items():
                dt = np.dtype(types[n])
                if dt.kind == "f":
                    feed[n] = rng.standard_normal(shp).astype(dt)
                elif dt.kind == "b" or "mask" in n.lower():
                    feed[n] = np.ones(shp, dt)
                else:
                    feed[n] = rng.integers(0, 2, size=shp).astype(dt)
            feeds.append(feed)
        source = "synthetic"
        warn("parity is checked on synthetic random inputs; pass --data with real feeds for a check on the data the "
             "model will see")
    else:
        raise InputError(f"{src.description} has no input signature to build example inputs from",
                         "give --shape NAME=DIMS (and --dtype NAME=int64 for integer inputs) or --data feeds.npz")
    if specs:
        names = {s.name for s in specs}
        if set(feeds[0]) != names:
            raise InputError(f"the example inputs {sorted(feeds[0])} do not match the model's inputs {sorted(names)}",
                             "name the --data arrays / --shape after the model's inputs")
        for f in feeds:
            for s in specs:
                f[s.name] = np.ascontiguousarray(f[s.name], dtype=np.dtype(s.dtype)) \
                    if np.asarray(f[s.name]).dtype.kind == np.dtype(s.dtype).kind else f[s.name]
    elif dtypes:
        for f in feeds:
            for n, dt in dtypes.items():
                if n in f:
                    f[n] = f[n].astype(dt)
    return feeds, source


def _unstack_if_needed(src, feeds, max_feeds):
    """Without a signature or --shape a stacked .npz (feeds x batch x ...) looks like one big feed: when the model
    rejects it but accepts its first row, the file is a stack and each row is a feed."""
    from ..data import split_stacked

    try:
        src.run(feeds[0])
        return feeds
    except InputError as e:
        rows = split_stacked(feeds[0])
        if not rows:
            raise
        try:
            src.run(rows[0])
        except InputError:
            raise e from None
        return rows[:max_feeds]


def _grow(feed: dict[str, np.ndarray], dynamic: dict[str, dict[int, str]]) -> dict[str, np.ndarray]:
    """The feed with every dynamic axis one longer (two when it is 1), by repeating its data; one size per label."""
    sizes: dict[str, int] = {}
    for name, axes in dynamic.items():
        for axis, label in axes.items():
            cur = feed[name].shape[axis]
            sizes.setdefault(label, cur + 1 if cur > 1 else 2)
    out = {}
    for name, arr in feed.items():
        for axis, label in dynamic.get(name, {}).items():
            idx = np.arange(sizes[label]) % arr.shape[axis]
            arr = np.take(arr, idx, axis=axis)
        out[name] = np.ascontiguousarray(arr)
    return out
