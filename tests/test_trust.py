"""Issue 14, the trust boundary: no code runs unasked, artifacts are verified on use, every fault leaves a clean tree.

One test (or a few) per row of the issue; each failed on the code before the fix."""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import cnn_data, nonblank_lines, run_cli, sha256, tiny_cnn
from trust_helpers import assert_clean_failure, assert_nothing_under, run_inproc

import optkit
from optkit import artifact as art_mod
from optkit.errors import InputError, IntegrityError

FAST = "name: fast\nbackend: ort\npasses: []\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("trust")
    (d / "fast.yaml").write_text(FAST)
    return {"dir": d, "model": tiny_cnn(d / "m.onnx"), "data": cnn_data(d / "d.npz", n=4), "recipe": d / "fast.yaml"}


def _optimize(base, out, *extra):
    r = run_inproc("optimize", base["model"], "-r", base["recipe"], "--data", base["data"], "-o", out, "--force",
                   "--format", "json", *extra)
    assert r.returncode == 0, r.stderr
    return Path(json.loads(r.stdout)["artifact"])


# ---------------------------------------------------------------------------------------------- 1. pickles
torch = pytest.importorskip("torch")


class _Payload:
    """Unpickling this runs ``os.system`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_without_opt_in(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, tmp_path / "evil.pt")
    before = sha256(tmp_path / "evil.pt")
    r = run_cli("import", tmp_path / "evil.pt", "--out", tmp_path / "x.onnx", "--shape", "input=1x4", cwd=tmp_path)
    line = assert_clean_failure(r, None)
    assert r.returncode == 2
    assert "posix.system" in line and "--trust-pickle" in line and "runs code" in line, line
    assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "x.onnx").exists() and sha256(tmp_path / "evil.pt") == before
    # the same through optimize and the library
    r = run_cli("optimize", tmp_path / "evil.pt", "-r", "fp32-ort", "--shape", "input=1x4", "-o", tmp_path / "o",
                cwd=tmp_path)
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and not marker.exists()
    with pytest.raises(InputError, match="trust-pickle"):
        optkit.export(tmp_path / "evil.pt", shapes={"input": (1, 4)})
    with pytest.raises(InputError, match="trust-pickle"):
        optkit.optimize(tmp_path / "evil.pt", "fp32-ort", shapes={"input": (1, 4)}, output=tmp_path / "o")
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_whole_model_pickle_needs_trust_pickle(tmp_path):
    """A torch.save'd whole model is a pickle of its class: refused by default, imported with trust_pickle."""
    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "tnet.py").write_text("import torch\nclass TNet(torch.nn.Module):\n"
                                          "    def __init__(self):\n        super().__init__()\n"
                                          "        self.l = torch.nn.Linear(4, 3)\n"
                                          "    def forward(self, x):\n        return self.l(x)\n")
        import tnet

        torch.save(tnet.TNet().eval(), tmp_path / "whole.pt")
        with pytest.raises(InputError, match=r"tnet.TNet.*--trust-pickle"):
            optkit.export(tmp_path / "whole.pt", shapes={"input": (1, 4)})
        imp = optkit.export(tmp_path / "whole.pt", shapes={"input": (1, 4)}, exporter="torchscript", trust_pickle=True)
        assert "pickled TNet" in imp.info["source"]
        # the .pt2 format is unpickled by torch.export.load as well
        prog = torch.export.export(tnet.TNet().eval(), (torch.randn(1, 4),))
        torch.export.save(prog, tmp_path / "prog.pt2")
        with pytest.raises(InputError, match="torch.export program.*--trust-pickle"):
            optkit.export(tmp_path / "prog.pt2", shapes={"input": (1, 4)})
        # a state_dict is tensors only: it needs no opt-in
        torch.save(tnet.TNet().state_dict(), tmp_path / "sd.pt")
        imp = optkit.export(tmp_path / "sd.pt", shapes={"input": (1, 4)}, module=f"{tmp_path}/tnet.py:TNet",
                            exporter="torchscript")
        assert "state_dict" in imp.info["source"]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tnet", None)


def test_cli_trust_pickle_flag(tmp_path):
    from optkit.examples.digits import build_cnn

    torch.save(build_cnn().eval(), tmp_path / "digits.pt")
    args = ("import", tmp_path / "digits.pt", "--out", tmp_path / "d.onnx", "--shape", "input=1x1x32x32",
            "--exporter", "torchscript")
    r = run_inproc(*args)
    assert r.returncode == 2 and "--trust-pickle" in r.stderr
    r = run_inproc(*args, "--trust-pickle")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "d.onnx").is_file()


def test_recipes_load_with_safe_yaml(tmp_path, base):
    marker = tmp_path / "YAML_RAN"
    rec = tmp_path / "evil.yaml"
    rec.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nbackend: ort\npasses: []\n")
    r = run_inproc("optimize", base["model"], "-r", rec, "-o", tmp_path / "out")
    line = assert_clean_failure(r, tmp_path / "out")
    assert r.returncode == 2 and "not valid YAML" in line and not marker.exists()


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    from onnx import helper, numpy_helper

    (tmp_path / "sub").mkdir()
    (tmp_path / "secret.bin").write_bytes(np.full((4, 4), 7, np.float32).tobytes())
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", 1, [1, 4])], [helper.make_tensor_value_info("y", 1, [1, 4])],
                          [numpy_helper.from_array(np.ones((4, 4), np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "sub" / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    for loc in ("../secret.bin", str(tmp_path / "secret.bin")):
        mm = onnx.load(str(tmp_path / "sub" / "m.onnx"), load_external_data=False)
        for e in mm.graph.initializer[0].external_data:
            if e.key == "location":
                e.value = loc
        onnx.save(mm, str(tmp_path / "sub" / "evil.onnx"))
        for cmd in (("inspect", tmp_path / "sub" / "evil.onnx"),
                    ("optimize", tmp_path / "sub" / "evil.onnx", "-r", "fp32-ort", "-o", tmp_path / "out"),
                    ("bench", tmp_path / "sub" / "evil.onnx", "--rounds", "1")):
            r = run_inproc(*cmd)
            line = assert_clean_failure(r, tmp_path / "out", str(cmd))
            assert r.returncode == 2 and ("outside" in line or "absolute" in line), line


# ---------------------------------------------------------------------------------------------- 2. integrity
def test_manifest_seals_every_file(tmp_path, base):
    art = _optimize(base, tmp_path / "out")
    man = json.loads((art / "manifest.json").read_text())
    assert man["schema"] == art_mod.MANIFEST_SCHEMA
    files = man["files"]
    assert {"model.onnx", "compiled/model.ort.onnx"} <= set(files)
    for rel, rec in files.items():
        assert rec["sha256"] == sha256(art / rel) and rec["bytes"] == (art / rel).stat().st_size
    assert not any(k.startswith(("report", "bench", "manifest")) for k in files)
    r = run_inproc("verify", art)
    assert r.returncode == 0, r.stderr
    assert "model.onnx" in r.stdout and "compiled/model.ort.onnx" in r.stdout and "2 of 2 file(s) match" in r.stdout


def _flip(path: Path, offset: int = -40) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x01
    path.write_bytes(bytes(b))


def _flip_weight(path: Path) -> None:
    """Flip one bit inside the first weight's bytes: the model still parses, and computes garbage."""
    m = onnx.load(str(path))
    raw = max(m.graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    b = bytearray(path.read_bytes())
    i = bytes(b).index(raw) + len(raw) // 2
    b[i] ^= 0x40
    path.write_bytes(bytes(b))
    onnx.load(str(path))


def test_flipped_weight_is_caught_by_every_reader(tmp_path, base):
    art = _optimize(base, tmp_path / "out")
    _flip_weight(art / "model.onnx")
    for cmd in (("bench", art, "--data", base["data"], "--rounds", "1", "--round-time", "0.01"), ("report", art),
                ("verify", art), ("bench", art.parent, "--rounds", "1")):
        r = run_inproc(*cmd)
        line = assert_clean_failure(r, None, str(cmd))
        assert r.returncode == 7 and "model.onnx" in line and "changed" in line, line
    assert not (art / "bench").exists(), "bench timed a tampered artifact"
    with pytest.raises(IntegrityError, match="model.onnx is changed"):
        optkit.load(art)
    optkit.load(art, verify=False).close()  # the explicit opt-out
    from optkit.serving import _resolve_input

    with pytest.raises(IntegrityError):
        _resolve_input(art, tmp_path / "tune-out", None)


def test_compiled_files_missing_and_unexpected(tmp_path, base):
    art = _optimize(base, tmp_path / "out")
    _flip(art / "compiled" / "model.ort.onnx")
    with pytest.raises(IntegrityError, match="compiled/model.ort.onnx is changed"):
        optkit.load(art)
    art2 = _optimize(base, tmp_path / "out")
    (art2 / "compiled" / "model.ort.onnx").unlink()
    with pytest.raises(IntegrityError, match="compiled/model.ort.onnx is missing"):
        optkit.load(art2)
    art3 = _optimize(base, tmp_path / "out")
    (art3 / "compiled" / "libinjected.so").write_bytes(b"\x7fELF")
    with pytest.raises(IntegrityError, match="libinjected.so is unexpected"):
        optkit.load(art3)
    r = run_inproc("verify", tmp_path / "out" / "m")  # every version of the model
    assert r.returncode == 7 and "(and 2 more)" in r.stderr
    assert "CHANGED" in r.stdout and "MISSING" in r.stdout and "UNEXPECTED" in r.stdout


def test_sealed_file_swapped_for_a_symlink_out_of_the_artifact(tmp_path, base):
    art = _optimize(base, tmp_path / "out")
    same = tmp_path / "elsewhere.onnx"
    same.write_bytes((art / "compiled" / "model.ort.onnx").read_bytes())  # identical bytes, but outside
    (art / "compiled" / "model.ort.onnx").unlink()
    (art / "compiled" / "model.ort.onnx").symlink_to(same)
    with pytest.raises(IntegrityError, match="compiled/model.ort.onnx is outside the artifact"):
        optkit.load(art)


def test_external_data_files_are_sealed(tmp_path, base, monkeypatch):
    from onnx import helper, numpy_helper

    import optkit.model as model_mod

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", 1, ["batch", 64])],
                          [helper.make_tensor_value_info("y", 1, ["batch", 64])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "big.onnx"))
    monkeypatch.setattr(model_mod, "EXTERNAL_DATA_THRESHOLD", 1)
    man = optkit.optimize(tmp_path / "big.onnx", str(base["recipe"]), output=tmp_path / "out", force=True)
    art = Path(man["artifact"])
    assert "model.onnx.data" in man["files"] and (art / "model.onnx.data").is_file(), man["files"]
    monkeypatch.undo()
    optkit.load(art).close()
    _flip(art / "model.onnx.data", 5)
    with pytest.raises(IntegrityError, match="model.onnx.data is changed"):
        optkit.load(art)


def test_bench_and_reports_still_work_on_a_sealed_artifact(tmp_path, base):
    art = _optimize(base, tmp_path / "out")
    r = run_inproc("bench", art, "--rounds", "1", "--round-time", "0.01", "--format", "json")
    assert r.returncode == 0, r.stderr
    r = run_inproc("bench", art, "--rounds", "1", "--round-time", "0.01", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (art / "bench").iterdir()) == ["1.json", "2.json"]
    assert run_inproc("verify", art).returncode == 0  # bench results and reports are not sealed
    with optkit.load(art) as p:
        assert p.run({"input": np.zeros((1, 3, 8, 8), np.float32)})["logits"].shape == (1, 10)


def test_legacy_manifest_without_files_checks_the_model(tmp_path, base):
    art = _optimize(base, tmp_path / "out")
    man = json.loads((art / "manifest.json").read_text())
    del man["files"]
    man["schema"] = 1
    (art / "manifest.json").write_text(json.dumps(man))
    optkit.load(art).close()
    _flip(art / "model.onnx")
    with pytest.raises(IntegrityError, match="model.onnx is changed"):
        optkit.load(art)


def test_integrity_exit_code_is_documented():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert IntegrityError.exit_code == 7
    for code in ("| 1 |", "| 2 |", "| 3 |", "| 4 |", "| 5 |", "| 6 |", "| 7 |", "| 130 |"):
        assert code in readme, code


# ---------------------------------------------------------------------------------------------- 3. names
@pytest.mark.parametrize("name", ["../../escaped", "/abs", "..", ".", "a/b", ".hidden", "a\\b", ""])
def test_name_is_one_path_component(tmp_path, base, name):
    out = tmp_path / "x" / "out"
    r = run_inproc("optimize", base["model"], "-r", base["recipe"], "-o", out, "--name", name, "--force")
    line = assert_clean_failure(r, out, name)
    assert r.returncode == 2 and "name" in line
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not written, written
    assert not Path("/abs").exists()
    with pytest.raises(InputError, match="name"):
        optkit.optimize(base["model"], str(base["recipe"]), output=out, name=name, force=True)
    from optkit.serving import _resolve_input  # optkit tune writes OUTPUT/<name>/tune

    with pytest.raises(InputError, match="name"):
        _resolve_input(base["model"], out, name)


def test_name_symlink_out_of_output_is_refused(tmp_path, base):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "m").symlink_to(elsewhere)
    r = run_inproc("optimize", base["model"], "-r", base["recipe"], "-o", out, "--force")
    assert r.returncode == 2 and "outside" in r.stderr
    assert not any(elsewhere.iterdir())


# ---------------------------------------------------------------------------------------------- 4. staging
def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_staging_of_a_dead_owner_is_cleaned(tmp_path, base):
    base_dir = tmp_path / "out" / "m"
    base_dir.mkdir(parents=True)
    dead = base_dir / f".staging-{_dead_pid()}-12345-abcd"
    (dead / "compiled").mkdir(parents=True)
    (dead / "model.onnx").write_bytes(b"half")
    alive = base_dir / f".staging-{os.getpid()}-{art_mod._start_time(os.getpid())}-beef"
    alive.mkdir()
    reused = base_dir / f".staging-{os.getpid()}-1-cafe"  # this pid, but another process's start time: pid reuse
    reused.mkdir()
    legacy_old, legacy_new = base_dir / ".staging-k2j3h4", base_dir / ".staging-zz9x8c"
    legacy_old.mkdir()
    legacy_new.mkdir()
    os.utime(legacy_old, (0, 0))
    art = _optimize(base, tmp_path / "out")
    assert art == base_dir / "1"
    left = sorted(p.name for p in base_dir.iterdir())
    assert left == sorted(["1", alive.name, legacy_new.name]), left


def test_stale_import_and_json_temporaries_are_cleaned(tmp_path):
    from optkit.api import _write_atomic
    from optkit.artifact import write_json

    dead = _dead_pid()
    (tmp_path / f".optkit-import-{dead}-1-abcd").mkdir()
    (tmp_path / f".optkit-import-{dead}-1-abcd" / "m.onnx").write_bytes(b"half")
    (tmp_path / f".report.json.{dead}-a1b2c3.tmp").write_text("{half")
    _write_atomic(onnx.load(str(tiny_cnn(tmp_path / "src" / "m.onnx"))), tmp_path / "m.onnx")
    write_json(tmp_path / "report.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "report.json", "src"]


def test_staging_name_records_the_owner(tmp_path):
    with art_mod.staged_version(tmp_path / "out", "m") as st:
        assert st.stage.name.startswith(f".staging-{os.getpid()}-")
        (st.stage / "f").write_text("x")
    assert (tmp_path / "out" / "m" / "1" / "f").is_file()


def test_files_and_dirs_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(a, b):
        events.append(("rename", str(a)))
        return real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    with art_mod.staged_version(tmp_path / "out", "m") as st:
        (st.stage / "sub").mkdir()
        (st.stage / "sub" / "a.bin").write_bytes(b"a")
        (st.stage / "b.bin").write_bytes(b"b")
        stage = str(st.stage)
    i = events.index(("rename", stage))
    synced = {p for kind, p in events[:i] if kind == "fsync"}
    assert {f"{stage}/sub/a.bin", f"{stage}/b.bin", f"{stage}/sub", stage} <= synced, events
    assert ("fsync", str(tmp_path / "out" / "m")) in events[i:]  # the parent, after the rename


# ---------------------------------------------------------------------------------------------- 5-7. data, files, options
def test_non_finite_data_is_a_data_problem(tmp_path, base):
    d = dict(np.load(base["data"]))
    d["input"][1, 0, 0, 0, :3] = [np.inf, np.nan, -np.inf]
    np.savez(tmp_path / "bad.npz", **d)
    r = run_inproc("optimize", base["model"], "-r", "fp32-ort", "--data", tmp_path / "bad.npz", "-o", tmp_path / "out")
    line = assert_clean_failure(r, tmp_path / "out")
    assert r.returncode == 2 and "'input'" in line and "3 of" in line and "non-finite" in line and "bad.npz" in line
    r = run_inproc("bench", base["model"], "--data", tmp_path / "bad.npz", "--rounds", "1")
    assert r.returncode == 2 and "non-finite" in r.stderr


def test_empty_stack_bad_manifest_garbled_bench(tmp_path, base):
    np.savez(tmp_path / "empty.npz", input=np.zeros((0, 1, 3, 8, 8), np.float32))
    r = run_inproc("optimize", base["model"], "-r", base["recipe"], "--data", tmp_path / "empty.npz", "-o", tmp_path / "o")
    line = assert_clean_failure(r, tmp_path / "o")
    assert r.returncode == 2 and "empty.npz" in line and "'input' is empty" in line and "no feeds" in line

    art = _optimize(base, tmp_path / "out")
    (art / "bench").mkdir()
    (art / "bench" / "1.json").write_text('{"latency": {"candidate": ')
    r = run_inproc("bench", art, "--rounds", "1", "--round-time", "0.01")
    line = assert_clean_failure(r, None)
    assert r.returncode == 2 and "bench/1.json" in line
    assert sorted(p.name for p in (art / "bench").iterdir()) == ["1.json"], "bench timed and saved before failing"
    r = run_inproc("report", art)
    assert r.returncode == 2 and "bench/1.json" in r.stderr

    for content in ("{}", "[]", "null", '{"output": {"path": "../../etc/passwd"}, "recipe": {"name": "x"}, "input": {}}',
                    "\xff\xfe garbage"):
        (art / "manifest.json").write_text(content, errors="surrogateescape")
        for cmd in (("bench", art, "--rounds", "1"), ("report", art), ("verify", art)):
            r = run_inproc(*cmd)
            line = assert_clean_failure(r, None, f"{cmd} {content!r}")
            assert r.returncode == 2 and "manifest.json" in line, line


@pytest.mark.parametrize("value", ["0", "-3", "100000"])
def test_threads_range(tmp_path, base, value):
    for cmd in (("optimize", base["model"], "-r", base["recipe"], "-o", tmp_path / "out", "--threads", value),
                ("bench", base["model"], "--threads", value, "--rounds", "1")):
        r = run_inproc(*cmd)
        line = assert_clean_failure(r, tmp_path / "out")
        assert r.returncode == 2 and "--threads must be between 1 and" in line, line
    with pytest.raises(InputError, match="between 1 and"):
        optkit.load(base["model"], threads=int(value))


# ---------------------------------------------------------------------------------------------- 8. umask
@pytest.mark.parametrize("umask,want", [(0o022, 0o755), (0o027, 0o750)])
def test_artifact_dirs_follow_the_umask(tmp_path, base, umask, want):
    old = os.umask(umask)
    try:
        art = _optimize(base, tmp_path / "out")
    finally:
        os.umask(old)
    for d in (art, art / "compiled", art.parent):
        assert stat.S_IMODE(d.stat().st_mode) == want, (d, oct(d.stat().st_mode))
    assert stat.S_IMODE((art / "model.onnx").stat().st_mode) == want & 0o666


# ---------------------------------------------------------------------------------------------- 9. versions
def test_same_explicit_version_twice(tmp_path, base):
    _optimize(base, tmp_path / "out", "--version", "5")
    r = run_inproc("optimize", base["model"], "-r", base["recipe"], "-o", tmp_path / "out", "--version", "5", "--force")
    line = assert_clean_failure(r, None)
    assert r.returncode == 2 and "version 5 already exists" in line
    assert sorted(p.name for p in (tmp_path / "out" / "m").iterdir()) == ["5"]


def test_explicit_version_taken_by_a_concurrent_run(tmp_path):
    """Both runs checked before either committed: the loser gets the plain message, not OSError."""
    with pytest.raises(InputError, match="version 5 already exists"):
        with art_mod.staged_version(tmp_path / "out", "m", 5) as st:
            (st.stage / "a").write_text("mine")
            other = tmp_path / "out" / "m" / "5"
            other.mkdir()
            (other / "b").write_text("theirs")
    assert sorted(p.name for p in (tmp_path / "out" / "m").iterdir()) == ["5"]
    assert (tmp_path / "out" / "m" / "5" / "b").is_file()


# ---------------------------------------------------------------------------------------------- 10. messages
def test_opset_too_new(tmp_path):
    m = onnx.load(str(tiny_cnn(tmp_path / "m.onnx")))
    m.opset_import[0].version = 99
    onnx.save(m, str(tmp_path / "m99.onnx"))
    from optkit.checks import ort_max_opset

    for cmd in (("optimize", tmp_path / "m99.onnx", "-r", "fp32-ort", "-o", tmp_path / "out"),
                ("bench", tmp_path / "m99.onnx", "--rounds", "1"), ("inspect", tmp_path / "m99.onnx")):
        r = run_inproc(*cmd)
        line = assert_clean_failure(r, tmp_path / "out")
        assert r.returncode == 2
        assert f"opset 99 of ai.onnx is newer than this onnxruntime supports (max {ort_max_opset()})" in line, line
        assert len(line) < 300 and "::" not in line


def test_recipe_path_is_a_directory(tmp_path, base):
    (tmp_path / "recipes").mkdir()
    r = run_inproc("optimize", base["model"], "-r", tmp_path / "recipes", "-o", tmp_path / "out")
    line = assert_clean_failure(r, tmp_path / "out")
    assert r.returncode == 2 and "is a directory" in line


def test_ctrl_c_exits_130_and_says_nothing_written(tmp_path, base, monkeypatch):
    import optkit.job as job

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "save_model", interrupted)  # Ctrl-C in the middle of writing the artifact
    r = run_inproc("optimize", base["model"], "-r", base["recipe"], "--data", base["data"], "-o", tmp_path / "out",
                   "--force")
    assert r.returncode == 130
    assert nonblank_lines(r.stderr) == ["interrupted, nothing written"]
    assert_nothing_under(tmp_path / "out")
