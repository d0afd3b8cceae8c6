"""``--data`` read from disk per feed, on demand: the arrays' headers are read up front, the values when a feed is used.

- ``ArrayRef``: one array in a ``.npy`` file or a member of a ``.npz``. A ``.npy`` is read with
  ``np.load(mmap_mode="r")``; an uncompressed ``.npz`` member (``numpy.savez``) is memory-mapped at its offset inside
  the zip; a compressed one (``numpy.savez_compressed``) cannot be read per row, so it is decompressed once and kept
  while feeds come from that file (one file's compressed arrays at a time, see ``_LAST``): save big stacks with
  ``numpy.savez`` or ``numpy.save`` to stream them. A feed is copied out of the map and the map
  is dropped, so the pages read do not stay mapped.
- ``DiskFeeds``: a read-only sequence of feeds (``dict`` input name -> array) over segments (one file each: one feed,
  or a stack of feeds along an extra leading axis). Slicing returns another ``DiskFeeds`` (nothing is read), so
  ``feeds[:32]`` then iterating reads 32 feeds and holds one at a time.
"""
from __future__ import annotations

import bisect
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

_LAST: dict = {}  # path -> {member: decompressed array}: the compressed members of the one file read last
FINITE_CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class ArrayRef:
    """Where one array lies: ``path`` (.npy or .npz), ``member`` (the .npz key, None for a .npy), its header, and the
    byte ``offset`` of its data in ``path`` (None for a compressed .npz member)."""

    path: str
    member: str | None
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int | None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _mapped(self):
        if self.member is None:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        if self.offset is not None:
            return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape,
                             order="F" if self.fortran else "C")
        held = _LAST.get(self.path)
        if held is None:
            _LAST.clear()
            held = _LAST[self.path] = {}
        if self.member not in held:
            with np.load(self.path, allow_pickle=False) as z:
                held[self.member] = z[self.member]
        return held[self.member]

    def read(self, row: int | None = None, stop: int | None = None) -> np.ndarray:
        """The whole array (``row`` None), row ``row`` of its leading axis, or rows ``row:stop``; always a copy in
        memory (never a view of the file)."""
        if self.size == 0:
            return np.empty(self.shape if row is None else self.shape[1:], self.dtype)
        a = self._mapped()
        part = a if row is None else (a[row] if stop is None else a[row:stop])
        return np.array(part, copy=True)


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(version)
    if read is None:  # (3, 0): utf8 field names; same layout as 2.0
        read = fmt.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if dtype.hasobject:
        raise ValueError("object arrays need pickle")
    return tuple(shape), bool(fortran), dtype


def scan(path: Path, verify: bool = True) -> dict[str, ArrayRef]:
    """name -> ArrayRef for every array in a .npz (or the one array of a .npy, named ''), from the headers. A header
    whose shape needs more bytes than the file holds is refused; with ``verify`` every .npz member is read through
    once (8 MB at a time, nothing kept) so zipfile checks its CRC-32, as ``np.load`` did when it read everything."""
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            shape, fortran, dtype = _npy_header(f)
            ref = ArrayRef(str(path), None, shape, dtype, fortran, f.tell())
        _check_length(ref, path.stat().st_size - ref.offset)
        return {"": ref}
    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            with z.open(info) as f:
                shape, fortran, dtype = _npy_header(f)
                header_len = f.tell()
                if verify:
                    while f.read(8 << 20):
                        pass
            offset = None
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                local = raw.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ValueError("bad zip local header")
                n_name, n_extra = struct.unpack("<HH", local[26:30])
                offset = info.header_offset + 30 + n_name + n_extra + header_len
            out[name] = ArrayRef(str(path), name, shape, dtype, fortran, offset)
            _check_length(out[name], info.file_size - header_len)
    return out


def _check_length(ref: ArrayRef, have: int) -> None:
    if ref.size * ref.dtype.itemsize > have:
        raise ValueError(f"{ref.member or 'the array'}: its header says {list(ref.shape)} {ref.dtype}, "
                         f"{ref.size * ref.dtype.itemsize} bytes, the file holds {have}")


def count_non_finite(ref: ArrayRef, stacked: bool) -> int:
    """NaN/Inf values in a float array, read a bounded block of rows at a time."""
    if ref.dtype.kind not in "fc" or ref.size == 0:
        return 0
    if not stacked or ref.ndim == 0:
        a = ref.read()
        return int(a.size - np.count_nonzero(np.isfinite(a)))
    row_bytes = max(1, ref.size // max(1, ref.shape[0]) * ref.dtype.itemsize)
    step = max(1, FINITE_CHUNK_BYTES // row_bytes)
    bad = 0
    for i in range(0, ref.shape[0], step):
        a = ref.read(i, min(i + step, ref.shape[0]))
        bad += int(a.size - np.count_nonzero(np.isfinite(a)))
    return bad


@dataclass(frozen=True)
class Segment:
    """One file's feeds: ``refs`` input name -> ArrayRef; ``count`` feeds (stacked along axis 0) or one (unstacked);
    ``scalars``: inputs read as rank 0 (a scalar saved as shape (1,) beside unstacked arrays)."""

    refs: dict
    count: int
    stacked: bool
    dtypes: dict
    scalars: frozenset = frozenset()

    def feed(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        for k, ref in self.refs.items():
            a = ref.read(i) if self.stacked else ref.read()
            if k in self.scalars:
                a = a.reshape(())
            a = np.asarray(a, self.dtypes[k])
            out[k] = a if a.flags.c_contiguous else np.ascontiguousarray(a)
        return out

    def row_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: (() if k in self.scalars else (r.shape[1:] if self.stacked else r.shape)) for k, r in self.refs.items()}


class DiskFeeds(Sequence):
    """Feeds read from disk when indexed or iterated; slices are views (see the module docstring)."""

    def __init__(self, segments: list[Segment], index: range | None = None):
        self.segments = segments
        self._starts = []
        total = 0
        for s in segments:
            self._starts.append(total)
            total += s.count
        self.index = index if index is not None else range(total)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return DiskFeeds(self.segments, self.index[i])
        g = self.index[i]  # IndexError past the end, negative indices from the end
        s = bisect.bisect_right(self._starts, g) - 1
        return self.segments[s].feed(g - self._starts[s])

    def __iter__(self):
        for g in self.index:
            s = bisect.bisect_right(self._starts, g) - 1
            yield self.segments[s].feed(g - self._starts[s])

    def row_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """Each feed's shapes, from the headers (nothing read)."""
        out = []
        for g in self.index:
            s = bisect.bisect_right(self._starts, g) - 1
            out.append(self.segments[s].row_shapes())
        return out

    def __repr__(self) -> str:
        return f"DiskFeeds({len(self)} feeds from {len(self.segments)} file(s))"


def bad_file(f: Path, e: Exception) -> InputError:
    return InputError(f"cannot read --data file {f}: {type(e).__name__}",
                      "write it with numpy.savez(path, input_name=array, ...)")


def row_counts(feeds, names: list[str]) -> list[int] | None:
    """Each feed's leading-axis length (from the headers for DiskFeeds), or None when the inputs named disagree."""
    shapes = feeds.row_shapes() if isinstance(feeds, DiskFeeds) else [{k: np.shape(f[k]) for k in names} for f in feeds]
    counts = []
    for sh in shapes:
        rows = {sh[k][0] for k in names}
        if len(rows) != 1:
            return None
        counts.append(rows.pop())
    return counts


class BatchedFeeds(Sequence):
    """Feeds of ``batch`` rows cut from the concatenation of ``feeds`` along axis 0 (repeated ``reps`` times when
    shorter than one batch), built when indexed: feed j reads only the source feeds its rows come from."""

    def __init__(self, feeds, names: list[str], scalars: dict, counts: list[int], batch: int, reps: int):
        self.feeds, self.names, self.scalars, self.batch = feeds, names, scalars, batch
        self.starts = list(np.cumsum([0] + counts[:-1])) if counts else []
        self.total = int(sum(counts))
        self.n = self.total * reps // batch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(self.n))]
        if j < 0:
            j += self.n
        if not 0 <= j < self.n:
            raise IndexError(j)
        parts: dict[str, list] = {k: [] for k in self.names}
        g, end, cached = j * self.batch, (j + 1) * self.batch, (None, None)
        while g < end:
            r = g % self.total
            i = bisect.bisect_right(self.starts, r) - 1
            lo = r - self.starts[i]
            if cached[0] != i:
                cached = (i, self.feeds[i])
            take = min(end - g, len(cached[1][self.names[0]]) - lo)
            for k in self.names:
                parts[k].append(cached[1][k][lo:lo + take])
            g += take
        return {**{k: np.concatenate(v, axis=0) for k, v in parts.items()}, **self.scalars}
