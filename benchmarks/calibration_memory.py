"""Peak RSS of int8-static with entropy calibration on a MiniLM-L6-size encoder, 64 vs 512 calibration feeds.

    python -m benchmarks.calibration_memory [--hidden 384 --layers 6 --heads 12 --seq 128] [--feeds 64,512]
                                            [--data-form dir|stacked|memory] [--before-rev REV --before-feeds 64]

The 512 synthetic token feeds are written to disk first (--data-form dir: one .npz per feed, what a `--data DIR`
holds; stacked: one uncompressed .npz with a leading feed axis; memory: no file, the feeds built in the child as a
list, the code path before --data streamed). Each point runs in a fresh child process
(its peak is VmHWM from /proc/self/status: `getrusage().ru_maxrss` of a child starts at the parent's RSS, since Linux
carries the old address space's high-water mark over fork/exec, so it reported the parent's torch export) that loads the encoder, opens the data with
`optkit.data.load_samples(limit=N)` (feeds are read per use, optkit.feedstore) and runs the int8-static pass
(calibration: entropy, max_samples N): feeds reach ORT's calibrator optkit.passes.quantize.CALIB_CHUNK at a time and
the histograms are merged. "before" is --before-rev (off by default), run on in-memory feeds. The load average is
recorded before and after each point. Results: benchmarks/results/calibration_memory-<date>-<isa>[-N].{json,md}.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
from optkit.model import load_model
from optkit.data import Samples, load_samples
# /proc/self/status, not getrusage: a child's ru_maxrss starts at its parent's RSS (Linux carries it over fork/exec)
mb = lambda key: int(next(ln for ln in open("/proc/self/status") if ln.startswith(key + ":")).split()[1]) / 1024
from optkit.passes import Context, get_pass
from optkit.examples.encoder import sample_feeds
model_path, n, seq, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
m = load_model(model_path)
if data == "memory":
    st = sample_feeds(n, seq)
    samples = Samples([{k: v[i] for k, v in st.items()} for i in range(n)], source="synthetic tokens (in memory)")
else:
    samples = load_samples(data, m, limit=n)
    assert len(samples) == n, len(samples)
base, base_peak = mb("VmRSS"), mb("VmHWM")
t0 = time.perf_counter()
res = get_pass("int8-static")({"calibration": "entropy", "max_samples": n}).run(m, Context(samples=samples))
secs = time.perf_counter() - t0
print("RESULT " + json.dumps({"feeds": n, "peak_rss_mb": mb("VmHWM"), "rss_before_pass_mb": base,
                              "peak_rss_before_pass_mb": base_peak, "seconds": round(secs, 1),
                              "feeds_type": type(samples.feeds).__name__, "nodes": len(res.model.graph.node)}))
"""


def _point(src: Path, model: Path, n: int, seq: int, data: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env["OPTKIT_NO_CACHE"] = "1"
    load0 = os.getloadavg()
    p = subprocess.run([sys.executable, "-c", CHILD, str(model), str(n), str(seq), data], capture_output=True,
                       text=True, env=env, cwd=str(src))
    load = {"loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"feeds": n, "error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:] }", **load}
    return {**json.loads(line[7:]), **load}


DATA_CHILD = r"""
import json, sys
import numpy as np
from optkit.data import load_samples
from optkit.model import load_model
mb = lambda key: int(next(ln for ln in open("/proc/self/status") if ln.startswith(key + ":")).split()[1]) / 1024
m = load_model(sys.argv[1])
base = mb("VmRSS")
s = load_samples(sys.argv[2], m)
loaded = mb("VmHWM")
total = 0.0
for f in s.feeds:  # what calibration does: every feed once, in order
    total += float(f["x"].sum())
print("RESULT " + json.dumps({"feeds": len(s), "rss_before_load_mb": base, "rss_after_reading_mb": mb("VmRSS"),
                              "peak_rss_after_load_mb": loaded, "peak_rss_mb": mb("VmHWM"),
                              "feeds_type": type(s.feeds).__name__, "checksum": round(total, 3)}))
"""


def _data_points(work: Path, srcs: dict[str, Path], n: int, shape=(1, 3, 224, 224)) -> list[dict]:
    """Peak RSS of load_samples + reading every feed of a stacked uncompressed .npz of n image feeds (no model run):
    the --data side alone, this tree vs the code before streaming."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *shape[1:]])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id", [x], [y])
    model = work / "identity.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model)
    data = work / f"images-{n}.npz"
    if not data.exists():
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.standard_normal((n, *shape), dtype=np.float32))
    out = []
    for code, src in srcs.items():
        env = dict(os.environ, PYTHONPATH=str(src), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        load0 = os.getloadavg()
        p = subprocess.run([sys.executable, "-c", DATA_CHILD, str(model), str(data)], capture_output=True, text=True,
                           env=env, cwd=str(src))
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        row = json.loads(line[7:]) if line else {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}"}
        out.append({"code": code, "file_mb": round(data.stat().st_size / 2**20), "shape": list(shape), **row,
                    "loadavg_before": [round(v, 2) for v in load0], "loadavg_after": [round(v, 2) for v in os.getloadavg()]})
        print(out[-1], flush=True)
    return out


def _tree(work: Path, rev: str) -> Path:
    d = work / f"src-{rev}"
    if not d.exists():
        d.mkdir()
        arch = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(d)], input=arch, check=True)
    return d


def write_data(work: Path, form: str, n: int, seq: int) -> str:
    """The n token feeds on disk in the given form; 'memory' writes nothing."""
    import numpy as np

    from optkit.examples.encoder import sample_feeds

    if form == "memory":
        return "memory"
    st = sample_feeds(n, seq)
    if form == "stacked":
        path = work / f"feeds-{n}.npz"
        np.savez(path, **st)
        return str(path)
    d = work / f"feeds-{n}"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.savez(d / f"{i:05d}.npz", **{k: v[i] for k, v in st.items()})
    return str(d)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--feeds", default="64,512")
    ap.add_argument("--data-form", choices=("dir", "stacked", "memory"), default="dir")
    ap.add_argument("--before-rev", default="")
    ap.add_argument("--before-feeds", default="64")
    ap.add_argument("--data-feeds", type=int, default=512, help="image feeds for the --data-only points (0: none)")
    ap.add_argument("--data-before-rev", default="5a41ff2", help="the code before --data streamed (load into a list)")
    ap.add_argument("--after-src", type=Path, default=REPO)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from optkit.examples.encoder import main as build
    from optkit.hw import cpu_features, isa_label

    work = a.work or Path(tempfile.mkdtemp(prefix="optkit-bench-calmem-"))
    enc = build(["--out", str(work / "enc"), "--hidden", str(a.hidden), "--layers", str(a.layers), "--heads",
                 str(a.heads), "--seq", str(a.seq), "--samples", "4"])
    ns_asked = [int(x) for x in a.feeds.split(",") if x]
    data = write_data(work, a.data_form, max(ns_asked), a.seq)
    points = []
    for n in ns_asked:
        points.append({"code": "after", "data": a.data_form, **_point(a.after_src, enc, n, a.seq, data)})
        print(points[-1], flush=True)
    data_points = []
    if a.data_feeds:
        srcs = {"after": a.after_src, **({f"before ({a.data_before_rev})": _tree(work, a.data_before_rev)}
                                         if a.data_before_rev else {})}
        data_points = _data_points(work, srcs, a.data_feeds)
    if a.before_rev and a.before_feeds:
        before = _tree(work, a.before_rev)
        for n in [int(x) for x in a.before_feeds.split(",") if x]:
            points.append({"code": f"before ({a.before_rev})", "data": "memory",
                           **_point(before, enc, n, a.seq, "memory")})
            print(points[-1], flush=True)
    cpu = cpu_features()
    after = {p["feeds"]: p for p in points if p["code"] == "after" and "peak_rss_mb" in p}
    ns = sorted(after)
    ratio = after[ns[-1]]["peak_rss_mb"] / after[ns[0]]["peak_rss_mb"] if len(ns) > 1 else None
    res = {"benchmark": "calibration_memory", "date": _dt.date.today().isoformat(), "isa": isa_label(),
           "cpu": cpu.get("model"), "encoder": {"hidden": a.hidden, "layers": a.layers, "heads": a.heads, "seq": a.seq},
           "calibration": "entropy", "data_form": a.data_form, "points": points,
           "data_only_points": data_points, "ratio_max_vs_min_feeds": ratio}
    out_dir = a.results
    stem = f"calibration_memory-{res['date']}-{res['isa'].replace(' ', '_').replace('/', '_')}"
    n, path = 1, out_dir / f"{stem}.json"
    while path.exists() or path.with_suffix(".md").exists():
        n += 1
        path = out_dir / f"{stem}-{n}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# int8-static entropy calibration: peak RSS vs calibration feeds ({res['date']}, {res['isa']}, {res['cpu']})",
             "", f"Encoder h{a.hidden}, {a.layers} layers, seq {a.seq}; --data form: {a.data_form}; one child process "
             "per point; load average (1/5/15 min) before -> after each point.", "",
             "| code | data | feeds | peak RSS MB | RSS before the pass MB | seconds | load avg before -> after |",
             "|---|---|---|---|---|---|---|"]
    for p in points:
        la = "/".join(f"{x:.2f}" for x in p["loadavg_before"]) + " -> " + "/".join(f"{x:.2f}" for x in p["loadavg_after"])
        lines.append(f"| {p['code']} | {p['data']} | {p['feeds']} | {p.get('peak_rss_mb', float('nan')):.0f} | "
                     f"{p.get('rss_before_pass_mb', float('nan')):.0f} | {p.get('seconds', p.get('error'))} | {la} |")
    if ratio:
        lines += ["", f"after: {ns[-1]} feeds / {ns[0]} feeds peak RSS = {ratio:.2f}x"]
    if data_points:
        d0 = data_points[0]
        lines += ["", f"--data alone: `load_samples` on one stacked uncompressed .npz of {d0.get('feeds', '?')} image "
                  f"feeds {d0['shape']} float32 ({d0['file_mb']} MB), then every feed read once (no model run).", "",
                  "| code | feeds type | RSS before load MB | peak RSS after load MB | peak RSS after reading all MB | "
                  "load avg before -> after |", "|---|---|---|---|---|---|"]
        for p in data_points:
            la = "/".join(f"{x:.2f}" for x in p["loadavg_before"]) + " -> " + "/".join(f"{x:.2f}" for x in p["loadavg_after"])
            lines.append(f"| {p['code']} | {p.get('feeds_type', p.get('error'))} | {p.get('rss_before_load_mb', float('nan')):.0f} | "
                         f"{p.get('peak_rss_after_load_mb', float('nan')):.0f} | {p.get('peak_rss_mb', float('nan')):.0f} | {la} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(path)
    return res


if __name__ == "__main__":
    main()
