"""Seeded fuzzing of what optkit reads: ONNX models, npz feeds, recipe YAML and artifacts (bit flips, truncation, wrong
dtypes/shapes, NaN, huge dims, deep nesting, YAML tags, tampered and garbled artifact files).

For every case: the exit code is a documented one (never 1, the internal-error code), a failure is one line on
stderr without a traceback and leaves no artifact directory behind, a success leaves an artifact that verifies, and
the input files are byte-for-byte unchanged. Most cases call the CLI in-process (a few ms each); a handful go
through the real subprocess CLI to check that the two agree. Bounded: 200 in-process cases + 4 subprocesses.
"""
from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import nonblank_lines, run_cli, sha256, tiny_cnn
from onnx import TensorProto, helper, numpy_helper
from trust_helpers import DOCUMENTED, assert_clean_failure, run_inproc

from optkit.artifact import verify

SEED = 14
N_ONNX, N_NPZ, N_YAML, N_ART = 70, 50, 45, 35  # 200 cases
RECIPE = "name: fuzz\ndescription: fuzzing base\nbackend: ort\npasses: []\nbackend_options:\n  saved_level: basic\n"


# ---------------------------------------------------------------------------------------------- mutators
def _bitflip(b: bytes, rng: random.Random) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _truncate(b: bytes, rng: random.Random) -> bytes:
    return b[:rng.randrange(len(b))]


def _mutate_onnx(src: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["bitflip", "bitflip", "bitflip", "truncate", "garbage", "empty", "opset", "ir", "elem_type",
                       "huge_dim", "zero_dim", "drop_init", "bad_op", "nan_weight", "dup_output", "dims_mismatch",
                       "domain", "nested_if"])
    if kind == "bitflip":
        return kind, _bitflip(src, rng)
    if kind == "truncate":
        return kind, _truncate(src, rng)
    if kind == "garbage":
        return kind, src + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    if kind == "empty":
        return kind, b""
    m = onnx.load_from_string(src)
    g = m.graph
    if kind == "opset":
        m.opset_import[0].version = rng.choice([0, 1, 5, 99, 10**6])
    elif kind == "ir":
        m.ir_version = rng.choice([0, 1, 3, 99, 2**40])
    elif kind == "elem_type":
        g.input[0].type.tensor_type.elem_type = rng.choice([TensorProto.STRING, TensorProto.BOOL, TensorProto.INT8,
                                                            TensorProto.FLOAT16, TensorProto.DOUBLE, 0, 999])
    elif kind == "huge_dim":
        d = g.input[0].type.tensor_type.shape.dim[rng.randrange(4)]
        d.Clear()
        d.dim_value = rng.choice([2**31, 2**40, 2**62])
    elif kind == "zero_dim":
        d = g.input[0].type.tensor_type.shape.dim[rng.randrange(4)]
        d.Clear()
        d.dim_value = rng.choice([0, -1])
    elif kind == "drop_init":
        del g.initializer[rng.randrange(len(g.initializer))]
    elif kind == "bad_op":
        g.node[rng.randrange(len(g.node))].op_type = rng.choice(["NoSuchOp", "", "conv"])
    elif kind == "nan_weight":
        t = g.initializer[rng.randrange(len(g.initializer))]
        a = numpy_helper.to_array(t).copy()
        a.flat[rng.randrange(a.size)] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    elif kind == "dup_output":
        g.node[1].output[0] = g.node[0].output[0]
    elif kind == "dims_mismatch":
        t = g.initializer[rng.randrange(len(g.initializer))]
        t.dims[0] = t.dims[0] * 2 + 1
    elif kind == "domain":
        g.node[rng.randrange(len(g.node))].domain = rng.choice(["com.evil", "ai.onnx.ml", "com.microsoft"])
    elif kind == "nested_if":  # a deep chain of If subgraphs around an Identity
        depth = rng.choice([4, 12, 25])  # protobuf itself refuses to build much deeper messages
        leaf = helper.make_graph([helper.make_node("Identity", ["logits"], ["o0"])], "b0", [],
                                 [helper.make_tensor_value_info("o0", TensorProto.FLOAT, None)])
        body = leaf
        for i in range(1, depth):  # each level nests the previous one once (the else branch is the leaf): linear size
            node = helper.make_node("If", ["cond"], [f"o{i}"], then_branch=body, else_branch=leaf)
            body = helper.make_graph([node], f"b{i}", [], [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, None)])
        g.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
        g.node.append(helper.make_node("If", ["cond"], ["nested"], then_branch=body, else_branch=leaf))
        g.output.append(helper.make_tensor_value_info("nested", TensorProto.FLOAT, None))
    return kind, m.SerializeToString()


def _npy_header_only(shape, dtype="<f4") -> bytes:
    """An .npy whose header claims ``shape`` but holds no data (a 'huge dims' file that is tiny on disk)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _mutate_npz(path: Path, base: dict, rng: random.Random) -> str:
    kind = rng.choice(["bitflip", "truncate", "dtype", "dtype", "shape", "rank", "nan", "inf", "missing", "extra",
                       "labels_len", "labels_nan", "zero_feeds", "zero_batch", "object", "huge_header", "scalar",
                       "string", "big_values"])
    arrays = {k: v.copy() for k, v in base.items()}
    x = arrays["input"]
    if kind in ("bitflip", "truncate"):
        np.savez(path, **arrays)
        b = path.read_bytes()
        path.write_bytes(_bitflip(b, rng) if kind == "bitflip" else _truncate(b, rng))
        return kind
    if kind == "huge_header":
        import zipfile

        with zipfile.ZipFile(path, "w") as z:
            z.writestr("input.npy", _npy_header_only(rng.choice([(2**40,), (2, 1, 3, 2**31, 8), (2**20, 1, 3, 8, 8)])))
        return kind
    if kind == "dtype":
        arrays["input"] = x.astype(rng.choice([np.int32, np.uint8, np.float16, np.float64, np.complex64, np.bool_]))
    elif kind == "shape":
        arrays["input"] = np.zeros(rng.choice([(2, 1, 3, 9, 8), (2, 2, 4, 8, 8), (2, 1, 3, 8)]), np.float32)
    elif kind == "rank":
        arrays["input"] = np.zeros((1,) * rng.choice([0, 1, 2, 7]), np.float32)
    elif kind in ("nan", "inf"):
        x.flat[rng.randrange(x.size)] = np.nan if kind == "nan" else -np.inf
    elif kind == "missing":
        arrays = {"other": x}
    elif kind == "extra":
        arrays["extra"] = x
    elif kind == "labels_len":
        arrays["labels"] = np.zeros((rng.choice([0, 1, 5]), 1), np.int64)
    elif kind == "labels_nan":
        arrays["labels"] = np.full((x.shape[0], 1), np.nan)
    elif kind == "zero_feeds":
        arrays = {"input": np.zeros((0, 1, 3, 8, 8), np.float32)}
    elif kind == "zero_batch":
        arrays = {"input": np.zeros((0, 3, 8, 8), np.float32)}
    elif kind == "object":
        arrays["input"] = np.array([{"a": 1}, None], dtype=object)  # np.savez pickles it; np.load must refuse
    elif kind == "scalar":
        arrays["input"] = np.float32(1.0)
    elif kind == "string":
        arrays["input"] = np.array(["a", "b"])
    elif kind == "big_values":
        with np.errstate(over="ignore"):
            x *= 1e38
    np.savez(path, **arrays)
    return kind


def _mutate_yaml(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["bitflip", "truncate", "tag", "tag", "deep_list", "deep_map", "aliases", "wrong_type",
                       "unknown_key", "unknown_pass", "pass_option", "non_utf8", "empty", "scalar", "huge_number",
                       "dup_key", "backend"])
    text = RECIPE
    if kind == "bitflip":
        return kind, _bitflip(text.encode(), rng)
    if kind == "truncate":
        return kind, _truncate(text.encode(), rng)
    if kind == "tag":
        tag = rng.choice(["!!python/object/apply:os.system ['echo FUZZ-PWNED']", "!!python/name:os.system",
                          "!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2001-12-14", "!custom x"])
        return kind, text.replace("name: fuzz", f"name: {tag}").encode()
    if kind == "deep_list":
        n = rng.choice([50, 1000, 20000])
        return kind, (text + "extra: " + "[" * n + "]" * n + "\n").encode()
    if kind == "deep_map":
        n = rng.choice([50, 1000, 20000])
        return kind, (text + "deep: " + "{a: " * n + "1" + "}" * n + "\n").encode()
    if kind == "aliases":  # a small 'billion laughs': references, not copies
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
        return kind, ("\n".join(lines) + "\n" + text.replace("passes: []", "passes: *a11")).encode()
    if kind == "wrong_type":
        key, val = rng.choice([("passes", "5"), ("name", "[1, 2]"), ("backend", "{a: 1}"), ("passes", "{fuse: 1}"),
                               ("backend_options", "[1]"), ("description", "{x: [1]}")])
        lines = [ln for ln in text.splitlines() if not ln.startswith(key) and not ln.startswith("  saved_level")]
        return kind, ("\n".join(lines) + f"\n{key}: {val}\n").encode()
    if kind == "unknown_key":
        return kind, (text + "passess: [fuse]\n").encode()
    if kind == "unknown_pass":
        return kind, text.replace("passes: []", "passes: [no-such-pass]").encode()
    if kind == "pass_option":
        opt = rng.choice(["{int8-dynamic: {per_channel: maybe}}", "{int8-dynamic: {nope: 1}}", "{prune: {ratio: -5}}",
                          "{prune: {ratio: .nan}}", "{int8-static: {calibration: [1, 2]}}"])
        return kind, text.replace("passes: []", f"passes: [{opt}]").encode()
    if kind == "non_utf8":
        return kind, b"name: \xff\xfe\x00fuzz\nbackend: ort\npasses: []\n"
    if kind == "empty":
        return kind, b""
    if kind == "scalar":
        return kind, rng.choice([b"42\n", b"null\n", b"- a\n- b\n", b"'just a string'\n"])
    if kind == "huge_number":
        return kind, text.replace("saved_level: basic", "saved_level: " + "9" * 5000).encode()
    if kind == "dup_key":
        return kind, (text + "backend: tvm\nbackend: ort\n").encode()
    return kind, text.replace("backend: ort", f"backend: {rng.choice(['nope', '', '../ort', 'ORT'])}").encode()


def _mutate_artifact(art: Path, rng: random.Random) -> str:
    kind = rng.choice(["flip_model", "flip_compiled", "flip_manifest", "truncate_manifest", "manifest_types",
                       "delete_file", "unexpected", "garbled_bench", "bench_types", "manifest_paths", "empty_manifest",
                       "truncate_model"])
    man_p = art / "manifest.json"
    man = json.loads(man_p.read_text())
    if kind == "flip_model":
        (art / "model.onnx").write_bytes(_bitflip((art / "model.onnx").read_bytes(), rng))
    elif kind == "truncate_model":
        (art / "model.onnx").write_bytes(_truncate((art / "model.onnx").read_bytes(), rng))
    elif kind == "flip_compiled":
        p = art / "compiled" / "model.ort.onnx"
        p.write_bytes(_bitflip(p.read_bytes(), rng))
    elif kind == "flip_manifest":
        man_p.write_bytes(_bitflip(man_p.read_bytes(), rng))
    elif kind == "truncate_manifest":
        man_p.write_bytes(_truncate(man_p.read_bytes(), rng))
    elif kind == "empty_manifest":
        man_p.write_text(rng.choice(["{}", "[]", "", "null", '"x"']))
    elif kind == "manifest_types":
        key = rng.choice(["output", "recipe", "input", "files", "data", "shapes", "backend", "user_shapes"])
        man[key] = rng.choice([None, 5, "x", [], {"path": 3}])
        man_p.write_text(json.dumps(man))
    elif kind == "manifest_paths":
        target = rng.choice(["../../../etc/passwd", "/etc/passwd", "compiled/../../x", "", "nope.onnx"])
        if rng.random() < 0.5:
            man["output"]["path"] = target
        else:
            man["files"] = {target: {"sha256": "0" * 64, "bytes": 1}}
        man_p.write_text(json.dumps(man))
    elif kind == "delete_file":
        rng.choice([art / "model.onnx", art / "compiled" / "model.ort.onnx", man_p]).unlink()
    elif kind == "unexpected":
        p = art / "compiled" / rng.choice(["evil.so", "x.onnx", "sub/deep.bin"])
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"\x7fELF")
    elif kind == "garbled_bench":
        (art / "bench").mkdir(exist_ok=True)
        (art / "bench" / "1.json").write_bytes(rng.choice([b"{", b"\xff\xfe", b"[1, 2", b""]))
    elif kind == "bench_types":
        (art / "bench").mkdir(exist_ok=True)
        (art / "bench" / "1.json").write_text(rng.choice(["[]", "5", '{"latency": 5}', '{"rows": {"a": 1}}', "null"]))
    return kind


# ---------------------------------------------------------------------------------------------- the matrix
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    model = tiny_cnn(d / "m.onnx")
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((2, 1, 3, 8, 8)).astype(np.float32), "labels": np.zeros((2, 1), np.int64)}
    np.savez(d / "d.npz", **feeds)
    (d / "r.yaml").write_text(RECIPE)
    r = run_inproc("optimize", model, "-r", d / "r.yaml", "--data", d / "d.npz", "-o", d / "built", "--force",
                   "--format", "json")
    assert r.returncode == 0, r.stderr
    return {"dir": d, "model": model, "data": d / "d.npz", "feeds": feeds, "recipe": d / "r.yaml",
            "artifact": Path(json.loads(r.stdout)["artifact"])}


def _cases(seeds, work: Path):
    """(label, argv, inputs that must stay unchanged, the --output dir or None, artifact dir or None) per case."""
    rng = random.Random(SEED)
    src = seeds["model"].read_bytes()
    for i in range(N_ONNX):
        kind, data = _mutate_onnx(src, rng)
        p = work / f"onnx{i}" / "m.onnx"
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        cmd = "inspect" if i % 5 == 4 else "optimize"
        argv = ["inspect", p] if cmd == "inspect" else \
            ["optimize", p, "-r", seeds["recipe"], "--data", seeds["data"], "-o", p.parent / "out", "--force"]
        yield (f"onnx{i}:{kind}:{cmd}", argv, [p, seeds["data"], seeds["recipe"]],
               p.parent / "out" if cmd == "optimize" else None, None)
    for i in range(N_NPZ):
        p = work / f"npz{i}" / "d.npz"
        p.parent.mkdir(parents=True)
        kind = _mutate_npz(p, seeds["feeds"], rng)
        if i % 5 == 4:
            argv = ["bench", seeds["model"], "--data", p, "--rounds", "1", "--round-time", "0.005"]
            out = None
        else:
            argv = ["optimize", seeds["model"], "-r", seeds["recipe"], "--data", p, "-o", p.parent / "out", "--force"]
            out = p.parent / "out"
        yield f"npz{i}:{kind}:{argv[0]}", argv, [p, seeds["model"]], out, None
    for i in range(N_YAML):
        kind, data = _mutate_yaml(rng)
        p = work / f"yaml{i}" / "r.yaml"
        p.parent.mkdir(parents=True)
        p.write_bytes(data)
        argv = ["optimize", seeds["model"], "-r", p, "--data", seeds["data"], "-o", p.parent / "out", "--force"]
        yield f"yaml{i}:{kind}", argv, [p, seeds["model"], seeds["data"]], p.parent / "out", None
    for i in range(N_ART):
        art = work / f"art{i}" / "m" / "1"
        shutil.copytree(seeds["artifact"], art)
        kind = _mutate_artifact(art, rng)
        cmd = rng.choice(["bench", "verify", "report", "bench"])
        argv = [cmd, art] + (["--rounds", "1", "--round-time", "0.005"] if cmd == "bench" else [])
        watched = [p for p in art.rglob("*") if p.is_file() and "bench" not in p.parts and not p.name.startswith("report")]
        yield f"art{i}:{kind}:{cmd}", argv, watched, None, art


def _check(label, r, watched, before, out, art):
    assert r.returncode in DOCUMENTED and r.returncode != 1, (label, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout, (label, r.stderr[-3000:])
    assert "FUZZ-PWNED" not in r.stdout + r.stderr, label
    if r.returncode != 0:
        assert_clean_failure(r, out, label)
        if art is not None and r.argv0 == "bench":
            n = len(list((art / "bench").glob("*.json"))) if (art / "bench").is_dir() else 0
            assert n == r.bench_before, (label, "bench saved a result and failed")
    elif out is not None:
        arts = [p for p in out.glob("*/*") if p.name.isdigit()]
        assert len(arts) == 1 and verify(arts[0])["ok"], (label, arts)
    for p, digest in before.items():
        assert p.is_file() and sha256(p) == digest, (label, f"{p.name} changed")


def test_fuzz_inputs(tmp_path, seeds):
    import time

    t0 = time.perf_counter()
    codes: dict[int, int] = {}
    failures: list[str] = []
    n = 0
    for label, argv, watched, out, art in _cases(seeds, tmp_path):
        before = {p: sha256(p) for p in watched}
        bench_before = len(list((art / "bench").glob("*.json"))) if art is not None and (art / "bench").is_dir() else 0
        r = run_inproc(*argv)
        r.argv0, r.bench_before = argv[0], bench_before
        try:
            _check(label, r, watched, before, out, art)
        except AssertionError as e:
            failures.append(str(e)[:600])
        codes[r.returncode] = codes.get(r.returncode, 0) + 1
        n += 1
    assert not failures, f"{len(failures)} of {n} fuzz cases broke the contract:\n" + "\n".join(failures)
    assert n == N_ONNX + N_NPZ + N_YAML + N_ART == 200
    assert codes.get(0, 0) > 0 and codes.get(2, 0) > 50 and codes.get(7, 0) > 0, codes
    print(f"fuzz: {n} cases in {time.perf_counter() - t0:.1f} s, exit codes {dict(sorted(codes.items()))}")


def test_fuzz_subprocess_agrees(tmp_path, seeds):
    """A handful of the same kind of cases through the real CLI: same exit code, one line, no traceback."""
    rng = random.Random(SEED + 1)
    cases = []
    p = tmp_path / "trunc.onnx"
    p.write_bytes(_truncate(seeds["model"].read_bytes(), rng))
    cases.append((["optimize", p, "-r", seeds["recipe"], "-o", tmp_path / "o1", "--force"], tmp_path / "o1"))
    q = tmp_path / "nan.npz"
    f = {k: v.copy() for k, v in seeds["feeds"].items()}
    f["input"][0, 0, 0, 0, 0] = np.nan
    np.savez(q, **f)
    cases.append((["optimize", seeds["model"], "-r", seeds["recipe"], "--data", q, "-o", tmp_path / "o2"], tmp_path / "o2"))
    y = tmp_path / "deep.yaml"
    y.write_text(RECIPE + "deep: " + "[" * 20000 + "]" * 20000 + "\n")
    cases.append((["optimize", seeds["model"], "-r", y, "-o", tmp_path / "o3"], tmp_path / "o3"))
    art = tmp_path / "a" / "m" / "1"
    shutil.copytree(seeds["artifact"], art)
    (art / "compiled" / "evil.so").write_bytes(b"\x7fELF")
    cases.append((["bench", art, "--rounds", "1"], None))
    for argv, out in cases:
        inproc = run_inproc(*argv)
        sub = run_cli(*argv)
        assert sub.returncode == inproc.returncode and sub.returncode in (2, 7), (argv, sub.returncode, sub.stderr)
        assert_clean_failure(sub, out, str(argv))
        assert len(nonblank_lines(sub.stderr)) == 1, sub.stderr
