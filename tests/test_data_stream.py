"""``--data`` streamed from disk (optkit.feedstore): headers up front, one feed read per use, same values as numpy."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cnn_data, tiny_cnn

from optkit import feedstore
from optkit import model as M
from optkit.data import Samples, load_samples
from optkit.errors import InputError


@pytest.fixture
def cnn(tmp_path):
    return M.load_model(tiny_cnn(tmp_path / "cnn.onnx"))


@pytest.fixture
def reads(monkeypatch):
    """Every (file, member, row) read through ArrayRef.read."""
    seen = []
    orig = feedstore.ArrayRef.read

    def spy(self, row=None, stop=None):
        seen.append((self.path, self.member, row, stop))
        return orig(self, row, stop)

    monkeypatch.setattr(feedstore.ArrayRef, "read", spy)
    return seen


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_stacked_npz_is_read_per_feed(tmp_path, cnn, reads, save):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 2, 3, 8, 8)).astype(np.float32)
    lab = rng.integers(0, 10, (12, 2))
    save(tmp_path / "s.npz", input=x, labels=lab)
    s = load_samples(tmp_path / "s.npz", cnn)
    assert isinstance(s.feeds, feedstore.DiskFeeds) and len(s) == 12
    assert s.shapes() == {"input": (2, 3, 8, 8)}
    ref = s.feeds.segments[0].refs["input"]
    assert (ref.offset is not None) == (save is np.savez)  # an uncompressed member is memory-mapped in place
    reads.clear()
    view = s.feeds[2:9:3]  # nothing read for a slice
    assert reads == [] and len(view) == 3
    got = list(view)
    assert [r[2] for r in reads] == [2, 5, 8]  # one row per feed, only the rows asked for
    for i, f in zip((2, 5, 8), got):
        np.testing.assert_array_equal(f["input"], x[i])
        assert isinstance(f["input"], np.ndarray) and not isinstance(f["input"], np.memmap) and f["input"].flags.owndata
    np.testing.assert_array_equal(s.feeds[-1]["input"], x[-1])
    assert [lb.tolist() for lb in s.labels] == lab.tolist()
    assert len(s.head(5)) == 5 and isinstance(s.head(5).feeds, feedstore.DiskFeeds)
    with pytest.raises(IndexError):
        s.feeds[12]


def test_npy_one_input_and_casts(tmp_path, cnn, reads):
    x = np.random.default_rng(0).standard_normal((5, 1, 3, 8, 8))  # float64 on disk, float32 in the model
    np.save(tmp_path / "x.npy", x)
    s = load_samples(tmp_path / "x.npy", cnn, limit=4)
    assert len(s) == 4 and s.labels is None
    f = s.feeds[3]
    assert f["input"].dtype == np.float32 and np.allclose(f["input"], x[3])
    assert reads[-1][1] is None  # a .npy: np.load(mmap_mode='r'), row 3 only


def test_npy_needs_a_one_input_model(tmp_path):
    from test_ingest import scalar_input

    m, _ = scalar_input()
    np.save(tmp_path / "x.npy", np.ones((2, 16), np.float32))
    with pytest.raises(InputError, match="is a .npy file"):
        load_samples(tmp_path / "x.npy", m)


def test_directory_limit_and_labels(tmp_path, cnn):
    d = tmp_path / "dir"
    for i in range(3):
        cnn_data(d / f"{i}.npz", n=4, seed=i)  # 3 stacked files of 4 feeds
    s = load_samples(d, cnn, limit=10)
    assert len(s) == 10 and len(s.labels) == 10 and [seg.count for seg in s.feeds.segments] == [4, 4, 2]
    with np.load(d / "2.npz") as z:
        np.testing.assert_array_equal(s.feeds[9]["input"], z["input"][1])
        assert s.labels[9].tolist() == z["labels"][1].tolist()
    np.savez(d / "3.npz", input=np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="present in some files only"):
        load_samples(d, cnn)


def test_non_finite_found_block_by_block(tmp_path, cnn, monkeypatch):
    x = np.zeros((40, 1, 3, 8, 8), np.float32)
    x[33, 0, 1, 2, 3] = np.nan
    x[7, 0, 0, 0, 0] = np.inf
    np.savez(tmp_path / "bad.npz", input=x)
    monkeypatch.setattr(feedstore, "FINITE_CHUNK_BYTES", 3 * 192 * 4)  # 3 feeds per block
    with pytest.raises(InputError, match=r"non-finite values \(NaN/Inf\): 'input' holds 2 of 7680"):
        load_samples(tmp_path / "bad.npz", cnn)
    np.savez(tmp_path / "empty.npz", input=np.zeros((0, 1, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="is empty"):
        load_samples(tmp_path / "empty.npz", cnn)


def test_scalar_saved_as_one_element_array(tmp_path):
    from test_ingest import scalar_input

    m, _ = scalar_input()
    np.savez(tmp_path / "one.npz", x=np.ones((2, 16), np.float32), sr=np.array([8000]))
    f = load_samples(tmp_path / "one.npz", m).feeds[0]
    assert f["sr"].shape == () and f["sr"] == 8000 and f["sr"].dtype == np.int64
    np.savez(tmp_path / "st.npz", x=np.ones((3, 2, 16), np.float32), sr=np.array([8000, 16000, 8000]))
    s = load_samples(tmp_path / "st.npz", m)
    assert [int(f["sr"]) for f in s.feeds] == [8000, 16000, 8000] and s.feeds[1]["sr"].shape == ()


def test_calibration_streams_only_max_samples(tmp_path, cnn, reads):
    """Entropy calibration over feeds read from disk: the same ranges as over the feeds in memory, and only the first
    max_samples feeds are read (one at a time)."""
    from optkit.passes import Progress, get_pass
    from optkit.passes.quantize import calibrate

    data = cnn_data(tmp_path / "c.npz", n=40)
    s = load_samples(data, cnn)
    cfg = get_pass("int8-static")({"calibration": "entropy", "max_samples": 20}).config
    reads.clear()
    calibrate(cnn, cfg, s.feeds[:cfg.max_samples], Progress(), tmp_path / "disk.json")
    assert sorted({r[2] for r in reads}) == list(range(20))
    with np.load(data) as z:
        in_memory = Samples([{"input": z["input"][i]} for i in range(20)])
    calibrate(cnn, cfg, in_memory.feeds, Progress(), tmp_path / "mem.json")
    assert json.loads((tmp_path / "disk.json").read_text()) == json.loads((tmp_path / "mem.json").read_text())


def test_batched_cuts_only_the_feeds_it_needs(tmp_path, cnn, reads):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 2, 3, 8, 8)).astype(np.float32)
    lab = rng.integers(0, 10, (12, 2))
    np.savez(tmp_path / "s.npz", input=x, labels=lab)
    s = load_samples(tmp_path / "s.npz", cnn)
    reads.clear()
    b = s.batched(5)
    assert len(b) == 4 and [r[2] for r in reads] == [0]  # 24 rows -> 4 feeds of 5; only feed 0 read (its names)
    reads.clear()
    f = b.feeds[1]
    np.testing.assert_array_equal(f["input"], x.reshape(24, 3, 8, 8)[5:10])
    assert sorted({r[2] for r in reads}) == [2, 3, 4]  # rows 5..9 live in feeds 2, 3 and 4
    assert b.labels[1].tolist() == lab.reshape(-1)[5:10].tolist()
    small = Samples([{"input": x[i, :1]} for i in range(3)], [lab[i, :1] for i in range(3)]).batched(4)
    assert len(small) == 1  # 3 rows repeated to 6, one feed of 4: rows 0, 1, 2, 0
    np.testing.assert_array_equal(small.feeds[0]["input"], x[[0, 1, 2, 0], 0])
    assert small.labels[0].tolist() == lab[[0, 1, 2, 0], 0].tolist()


def test_compressed_stack_is_decompressed_once_per_file(tmp_path, monkeypatch):
    """Two inputs in one savez_compressed stack: reading feed after feed decompresses each member once, not per feed."""
    from test_ingest import scalar_input

    m, _ = scalar_input()
    x = np.random.default_rng(2).standard_normal((6, 2, 16)).astype(np.float32)
    np.savez_compressed(tmp_path / "z.npz", x=x, sr=np.full(6, 16000, np.int64))
    s = load_samples(tmp_path / "z.npz", m)
    loads = []
    orig = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loads.append(a[0]) or orig(*a, **k))
    feedstore._LAST.clear()
    got = [f["x"] for f in s.feeds]
    assert len(loads) == 2 and np.array_equal(np.stack(got), x)  # one decompression per member, 6 feeds


def test_lying_header_and_corrupt_member_are_refused(tmp_path, cnn):
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 1, 3, 8, 8), np.float32))
    header["shape"] = (2**20, 1, 3, 8, 8)  # 768 MB promised, 0 bytes given
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("input.npy", buf.getvalue())
    with pytest.raises(InputError, match="cannot read --data file"):
        load_samples(tmp_path / "huge.npz", cnn)
    x = np.ones((4, 1, 3, 8, 8), np.float32)
    np.savez(tmp_path / "flip.npz", input=x)
    b = bytearray((tmp_path / "flip.npz").read_bytes())
    b[300] ^= 0x10  # inside the array's bytes: a finite float, caught only by the CRC
    (tmp_path / "flip.npz").write_bytes(bytes(b))
    with pytest.raises(InputError, match="cannot read --data file .*BadZipFile"):
        load_samples(tmp_path / "flip.npz", cnn)
