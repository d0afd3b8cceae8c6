"""The bad-input contract of the CLI (mostly `optkit optimize`), checked through the real CLI in a subprocess:

"Bad input gets one clear line (what is wrong, what to do), a non-zero exit, no traceback unless --debug,
no half-written output, and the input model byte-identical afterwards."
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import cnn_data, nonblank_lines, run_cli, sha256, tiny_cnn, tiny_matmul


@dataclass
class Case:
    args: list                      # CLI arguments, command first, without -o
    model: Path | None              # the input model whose bytes must not change (None: there is none)
    mentions: list[str]             # what the error line must name (case-insensitive)
    exit_code: int | None = None    # the exact exit status, when the contract fixes it
    output: Path | None = None      # -o value (default tmp_path/'out')
    untouched: list[Path] = field(default_factory=list)  # other files that must keep their bytes
    with_output: bool = True        # the command takes -o (optimize); inspect and bench do not


def _recipe(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _build(case_id: str, tmp_path: Path) -> Case:
    """Create the inputs of one bad-input case under tmp_path."""
    cnn = tiny_cnn(tmp_path / "cnn.onnx")
    data = cnn_data(tmp_path / "calib.npz", n=4)
    if case_id == "missing-model":
        return Case(["optimize", tmp_path / "missing.onnx", "-r", "int8-ort", "--data", data], None, ["missing.onnx"], 2)
    if case_id == "not-onnx":
        txt = tmp_path / "notes.txt"
        txt.write_text("this is a text file, not an ONNX model\n" * 20)
        return Case(["optimize", txt, "-r", "int8-ort", "--data", data], txt, ["notes.txt"], 2)
    if case_id == "truncated-onnx":
        blob = cnn.read_bytes()
        trunc = tmp_path / "truncated.onnx"
        trunc.write_bytes(blob[: len(blob) // 2])
        return Case(["optimize", trunc, "-r", "int8-ort", "--data", data], trunc, ["truncated.onnx"], 2)
    if case_id == "unknown-recipe":
        return Case(["optimize", cnn, "-r", "int9-ort", "--data", data], cnn, ["int9-ort"], 2)
    if case_id == "recipe-unknown-key":
        r = _recipe(tmp_path, "unknown_key.yaml", "name: mine\nbackend: ort\npasses: [simplify]\nlevel: 3\n")
        return Case(["optimize", cnn, "-r", r, "--data", data], cnn, ["level", "unknown_key.yaml"], 2)
    if case_id == "recipe-wrong-type-bool":
        r = _recipe(tmp_path, "wrong_bool.yaml", 'name: mine\npasses:\n  - int8-static:\n      per_channel: "yes"\n')
        return Case(["optimize", cnn, "-r", r, "--data", data], cnn, ["per_channel", "wrong_bool.yaml"], 2)
    if case_id == "recipe-wrong-type-str":
        r = _recipe(tmp_path, "wrong_str.yaml", "name: mine\npasses:\n  - int8-static:\n      calibration: 5\n")
        return Case(["optimize", cnn, "-r", r, "--data", data], cnn, ["calibration", "wrong_str.yaml"], 2)
    if case_id == "recipe-wrong-type-passes":
        r = _recipe(tmp_path, "wrong_passes.yaml", "name: mine\npasses: simplify\n")
        return Case(["optimize", cnn, "-r", r, "--data", data], cnn, ["passes", "wrong_passes.yaml"], 2)
    if case_id == "recipe-unknown-pass":
        r = _recipe(tmp_path, "unknown_pass.yaml", "name: mine\npasses:\n  - simplify\n  - shrinkify\n")
        return Case(["optimize", cnn, "-r", r, "--data", data], cnn, ["shrinkify"], 2)
    if case_id == "recipe-unknown-option":
        r = _recipe(tmp_path, "unknown_option.yaml", "name: mine\npasses:\n  - int8-static:\n      bogus_option: 1\n")
        return Case(["optimize", cnn, "-r", r, "--data", data], cnn, ["bogus_option", "int8-static"], 2)
    if case_id == "recipe-missing-file":
        return Case(["optimize", cnn, "-r", tmp_path / "nope.yaml", "--data", data], cnn, ["nope.yaml"], 2)
    if case_id == "data-wrong-name":
        bad = tmp_path / "wrong_name.npz"
        np.savez(bad, image=np.zeros((4, 1, 3, 8, 8), np.float32))
        return Case(["optimize", cnn, "-r", "int8-ort", "--data", bad], cnn, ["wrong_name.npz", "input", "image"], 2,
                    untouched=[bad])
    if case_id == "data-wrong-shape":
        bad = cnn_data(tmp_path / "wrong_shape.npz", n=4, hw=9)  # the model fixes H and W to 8
        return Case(["optimize", cnn, "-r", "int8-ort", "--data", bad], cnn, ["wrong_shape.npz", "'input'"], 2,
                    untouched=[bad])
    if case_id == "data-missing":
        return Case(["optimize", cnn, "-r", "int8-ort", "--data", tmp_path / "nothere.npz"], cnn, ["nothere.npz"], 2)
    if case_id == "data-empty-dir":
        (tmp_path / "feeds").mkdir()
        return Case(["optimize", cnn, "-r", "int8-ort", "--data", tmp_path / "feeds"], cnn, ["feeds", ".npz"], 2)
    if case_id == "data-labels-count":
        bad = tmp_path / "few_labels.npz"
        np.savez(bad, input=np.zeros((4, 1, 3, 8, 8), np.float32), labels=np.zeros((3, 1), np.int64))
        return Case(["optimize", cnn, "-r", "int8-ort", "--data", bad], cnn, ["few_labels.npz", "labels"], 2,
                    untouched=[bad])
    if case_id == "symbolic-dim-no-shape":
        mm = tiny_matmul(tmp_path / "seq_model.onnx")
        return Case(["optimize", mm, "-r", "fp32-ort"], mm, ["'x'", "seq", "--shape"], 2)
    if case_id == "bad-shape-syntax":
        mm = tiny_matmul(tmp_path / "seq_model.onnx")
        return Case(["optimize", mm, "-r", "fp32-ort", "--shape", "x=1xfourx16"], mm, ["--shape", "x=1xfourx16"], 2)
    if case_id == "shape-unknown-input":
        mm = tiny_matmul(tmp_path / "seq_model.onnx")
        return Case(["optimize", mm, "-r", "fp32-ort", "--shape", "tokens=1x4x16"], mm, ["tokens"], 2)
    if case_id == "output-not-writable":
        afile = tmp_path / "afile"  # a regular file: nothing can be created below it, even as root
        afile.write_text("not a directory\n")
        return Case(["optimize", cnn, "-r", "int8-ort", "--data", data], cnn, ["afile"], 2,
                    output=afile / "out", untouched=[afile])
    if case_id == "version-zero":
        return Case(["optimize", cnn, "-r", "int8-ort", "--data", data, "--version", "0"], cnn, ["--version"], 2)
    if case_id == "backend-trt-missing":  # no TensorRT/GPU here: optimize writes the TRT-ready ONNX, bench refuses
        return Case(["bench", cnn, "--data", data, "--backend", "trt", "--rounds", "1", "--round-time", "0.01"], cnn,
                    ["trt"], 4, with_output=False)
    if case_id == "backend-unknown":
        return Case(["bench", cnn, "--data", data, "--backend", "nope", "--rounds", "1"], cnn, ["nope", "ort"], 2,
                    with_output=False)
    if case_id == "inspect-missing-model":
        return Case(["inspect", tmp_path / "missing.onnx"], None, ["missing.onnx"], 2, with_output=False)
    if case_id == "bench-not-an-artifact":
        (tmp_path / "some_dir").mkdir()
        return Case(["bench", tmp_path / "some_dir"], None, ["some_dir", "manifest.json"], 2, with_output=False)
    if case_id == "bench-batch-zero":
        return Case(["bench", cnn, "--data", data, "--batch", "0", "--rounds", "1", "--round-time", "0.01"], cnn,
                    ["--batch"], 2, with_output=False)
    raise AssertionError(case_id)


CASES = [
    "missing-model",
    "not-onnx",
    "truncated-onnx",
    "unknown-recipe",
    "recipe-unknown-key",
    "recipe-wrong-type-bool",
    "recipe-wrong-type-str",
    "recipe-wrong-type-passes",
    "recipe-unknown-pass",
    "recipe-unknown-option",
    "recipe-missing-file",
    "data-wrong-name",
    "data-wrong-shape",
    "data-missing",
    "data-empty-dir",
    "data-labels-count",
    "symbolic-dim-no-shape",
    "bad-shape-syntax",
    "shape-unknown-input",
    "output-not-writable",
    "version-zero",
    "backend-trt-missing",
    "backend-unknown",
    "inspect-missing-model",
    "bench-not-an-artifact",
    "bench-batch-zero",
]


def _rel(args, base: Path) -> list:
    """Paths under ``base`` made relative (the CLI runs in ``base``), so messages do not depend on where tmp is."""
    return [a.relative_to(base) if isinstance(a, Path) and a.is_relative_to(base) else a for a in args]


def assert_no_artifact(out: Path) -> None:
    """No version directory, no staging directory and no file anywhere under ``out`` (absent is fine)."""
    if not out.exists():
        return
    assert out.is_dir(), f"{out} was created as a file"
    left = [p for p in out.rglob("*")
            if p.is_file() or p.is_symlink() or p.name.isdigit() or p.name.startswith((".staging", ".optkit"))]
    assert not left, f"half-written output left behind: {[str(p.relative_to(out)) for p in left]}"


@pytest.mark.parametrize("case_id", CASES)
def test_bad_input_contract(case_id, tmp_path):
    case = _build(case_id, tmp_path)
    out = case.output or tmp_path / "out"
    watched = ([case.model] if case.model else []) + case.untouched
    before = {p: sha256(p) for p in watched}

    args = _rel(case.args, tmp_path) + (["-o", *_rel([out], tmp_path)] if case.with_output else [])
    r = run_cli(*args, cwd=tmp_path)

    assert r.returncode != 0, f"exit 0 for bad input; stderr={r.stderr!r}"
    if case.exit_code is not None:
        assert r.returncode == case.exit_code, r.stderr
    lines = nonblank_lines(r.stderr)
    assert len(lines) == 1, f"expected exactly one stderr line, got {len(lines)}:\n{r.stderr}"
    line = lines[0]
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert line.startswith("error:"), f"not an anticipated, actionable error: {line!r}"
    for thing in case.mentions:
        assert thing.lower() in line.lower(), f"the error line does not mention {thing!r}: {line!r}"
    # "what to do": the one line carries a hint after the description
    assert ";" in line, f"no hint on what to do: {line!r}"
    assert_no_artifact(out)
    for p, digest in before.items():
        assert p.is_file() and sha256(p) == digest, f"{p.name} changed"


def test_symbolic_dim_works_with_shape(tmp_path):
    """The same model that fails without --shape optimizes once the symbolic 'seq' dim is given."""
    mm = tiny_matmul(tmp_path / "seq_model.onnx")
    digest = sha256(mm)
    out = tmp_path / "out"
    r = run_cli("optimize", mm, "-r", "fp32-ort", "--shape", "x=1x4x16", "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    art = out / "seq_model" / "1"
    assert (art / "model.onnx").is_file() and (art / "manifest.json").is_file()
    man = json.loads((art / "manifest.json").read_text())
    assert man["shapes"] == {"x": [1, 4, 16]}
    assert man["user_shapes"] == {"x": [1, 4, 16]}
    assert sha256(mm) == digest


def test_debug_shows_traceback(tmp_path):
    cnn = tiny_cnn(tmp_path / "cnn.onnx")
    digest = sha256(cnn)
    out = tmp_path / "out"
    r = run_cli("optimize", cnn, "-r", "int9-ort", "-o", out, "--debug", cwd=tmp_path)
    assert r.returncode != 0
    assert "Traceback (most recent call last)" in r.stderr
    assert "RecipeError" in r.stderr and "int9-ort" in r.stderr
    assert_no_artifact(out)
    assert sha256(cnn) == digest


@pytest.mark.parametrize("case_id,expected", [
    ("data-wrong-shape", "[batch, 3, 8, 8]"),
    ("symbolic-dim-no-shape", "[batch, seq, 16]"),
    ("backend-trt-missing", "optkit[tensorrt]"),
])
def test_error_line_keeps_bracketed_text(case_id, expected, tmp_path):
    case = _build(case_id, tmp_path)
    r = run_cli(*_rel(case.args, tmp_path), *(["-o", "out"] if case.with_output else []), cwd=tmp_path)
    assert r.returncode != 0
    assert expected in r.stderr, r.stderr


def test_long_error_stays_on_one_line(tmp_path):
    """An error line longer than any terminal (a long file name) must still be one line when piped."""
    name = "a_model_file_with_a_very_long_name_" * 6 + ".onnx"
    r = run_cli("optimize", name, "-r", "fp32-ort", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    lines = nonblank_lines(r.stderr)
    assert len(lines) == 1 and name in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_failing_pass_leaves_nothing_behind(tmp_path):
    """A failure mid-pipeline (after the staging directory exists) removes everything it created."""
    cnn = tiny_cnn(tmp_path / "cnn.onnx")
    data = cnn_data(tmp_path / "calib.npz", n=4)
    digest = sha256(cnn)
    recipe = tmp_path / "fix_unknown.yaml"
    recipe.write_text("name: fix-unknown\npasses:\n  - simplify\n  - fix-shapes:\n      shapes: {foo: [1, 3, 8, 8]}\n")
    r = run_cli("optimize", "cnn.onnx", "-r", "fix_unknown.yaml", "--data", "calib.npz", "-o", "out", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert "error: pass 'fix-shapes' failed" in r.stderr and "foo" in r.stderr and "after: simplify" in r.stderr
    assert not (tmp_path / "out").exists(), [str(p) for p in (tmp_path / "out").rglob("*")]
    assert sha256(cnn) == digest


def test_rejected_version_creates_no_directories(tmp_path):
    tiny_cnn(tmp_path / "cnn.onnx")
    cnn_data(tmp_path / "calib.npz", n=4)
    r = run_cli("optimize", "cnn.onnx", "-r", "fp32-ort", "--data", "calib.npz", "--version", "0", "-o", "out",
                cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "out").exists(), [str(p) for p in (tmp_path / "out").rglob("*")]
