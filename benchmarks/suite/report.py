"""Headline selection (accuracy at speed), the markdown tables, and the README 'Results' block, all from the
suite's JSON (pure functions of it: the README block can be regenerated from any results file)."""
from __future__ import annotations

import json
import re
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"
TIE_MARGIN = 0.03  # speedups within +-3% of each other are called a tie: the noise of alternating rounds here
PERCENT_METRICS = ("top1", "text_accuracy", "text_agreement", "frame_agreement", "top1_agreement")


def within(acc: float | None, ref: float | None, tolerance: float) -> bool:
    """Relative rule, the same as optkit's --tolerance 1%: acc >= ref * (1 - tolerance)."""
    if acc is None or ref is None:
        return False
    return acc >= ref * (1 - tolerance) - 1e-12


def _pick(rows: list[dict]) -> dict | None:
    return max(rows, key=lambda r: r["speedup_vs_fp32"]) if rows else None


def _brief(r: dict | None) -> dict | None:
    return None if r is None else {"name": r["name"], "speedup_vs_fp32": r["speedup_vs_fp32"], "accuracy": r["accuracy"],
                                   "p50_ms": r["p50_ms"]}


def headline(result: dict, tolerance: float = 0.01, tie_margin: float = TIE_MARGIN) -> dict:
    """The fastest variant within ``tolerance`` of FP32's accuracy, the best optkit and the best plain-library
    variant under the same rule, and the verdict. Marks each row's ``within_tolerance``."""
    rows = result["variants"]
    ref = next(r for r in rows if r["name"] == "fp32")
    ref_acc = ref.get("accuracy")
    ok = []
    for r in rows:
        timed = not r.get("error") and r.get("speedup_vs_fp32") is not None
        r["within_tolerance"] = bool(timed and within(r.get("accuracy"), ref_acc, tolerance))
        if r["within_tolerance"]:
            ok.append(r)
    fastest = _pick(ok)
    best_o = _pick([r for r in ok if r["kind"] == "optkit"])
    best_p = _pick([r for r in ok if r["kind"] == "baseline"])
    if best_o is None and best_p is None:
        verdict, text = "none", "no optimized variant is within tolerance"
    elif best_o is None:
        verdict, text = "plain", f"plain library ahead: no optkit variant within tolerance; {best_p['name']} " \
                                 f"{best_p['speedup_vs_fp32']:.2f}x"
    elif best_p is None:
        verdict, text = "optkit", f"optkit ahead: no plain-library variant within tolerance; {best_o['name']} " \
                                  f"{best_o['speedup_vs_fp32']:.2f}x"
    else:
        ratio = best_o["speedup_vs_fp32"] / best_p["speedup_vs_fp32"]
        pair = f"{best_o['name']} {best_o['speedup_vs_fp32']:.2f}x vs {best_p['name']} {best_p['speedup_vs_fp32']:.2f}x"
        if ratio >= 1 + tie_margin:
            verdict, text = "optkit", f"optkit ahead ({pair})"
        elif ratio <= 1 - tie_margin:
            verdict, text = "plain", f"plain library ahead ({pair})"
        else:
            verdict, text = "tie", f"tie within +-{tie_margin:.0%} ({pair})"
    lfl = like_for_like(result, tie_margin)
    return {"rule": f"fastest variant with {result.get('metric', 'accuracy')} >= FP32's * (1 - {tolerance:g}) on the test data",
            "like_for_like": lfl,
            "tolerance": tolerance, "fp32_accuracy": ref_acc,
            "threshold": None if ref_acc is None else ref_acc * (1 - tolerance),
            "fastest_within_tolerance": _brief(fastest), "best_optkit": _brief(best_o), "best_plain": _brief(best_p),
            "tie_margin": tie_margin, "verdict": verdict, "verdict_text": text}


# optkit's one-shot recipes against the library call they replace (no search on either side)
LIKE_FOR_LIKE = (("optkit fp32-ort", ("ort-opt", "onnxsim")), ("optkit int8-ort", ("ort-static",)),
                 ("optkit int8-dynamic-ort", ("ort-dynamic",)))


def like_for_like(result: dict, tie_margin: float = TIE_MARGIN) -> list[dict]:
    """Each one-shot optkit recipe vs its plain-library counterpart (the faster when there are two), judged like the
    headline: a row outside the tolerance loses to one inside it, else the speedups decide (ties within the margin).
    Needs ``within_tolerance`` on the rows (``headline`` sets it)."""
    rows = {r["name"]: r for r in result["variants"]}
    out = []
    for o_name, plain_names in LIKE_FOR_LIKE:
        o = rows.get(o_name)
        ps = [rows[n] for n in plain_names if n in rows and rows[n].get("speedup_vs_fp32") is not None]
        if o is None or o.get("speedup_vs_fp32") is None or not ps:
            continue
        p = max(ps, key=lambda r: (r.get("within_tolerance", False), r["speedup_vs_fp32"]))
        so, sp = o["speedup_vs_fp32"], p["speedup_vs_fp32"]
        oi, pi = o.get("within_tolerance", False), p.get("within_tolerance", False)
        if oi and not pi:
            v = "optkit"
        elif pi and not oi:
            v = "plain"
        elif not oi and not pi:
            v = "none"
        else:
            v = "optkit" if so >= sp * (1 + tie_margin) else "plain" if so <= sp * (1 - tie_margin) else "tie"
        out.append({"optkit": o_name, "plain": p["name"], "optkit_speedup": so, "plain_speedup": sp,
                    "optkit_within": oi, "plain_within": pi, "verdict": v})
    return out


def _lfl_text(c: dict) -> str:
    word = {"optkit": "beats", "plain": "is behind", "tie": "ties", "none": "and"}[c["verdict"]]
    miss = lambda ok: "" if ok else " (misses 1%)"  # noqa: E731
    return (f"{c['optkit'].removeprefix('optkit ')} {c['optkit_speedup']:.2f}x{miss(c['optkit_within'])} {word} "
            f"{c['plain']} {c['plain_speedup']:.2f}x{miss(c['plain_within'])}")


# ------------------------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------------------------

def fmt_metric(name: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.2%}" if name in PERCENT_METRICS else f"{v:.5f}"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _notes(r: dict) -> str:
    n = []
    o = r.get("optkit") or {}
    if o.get("chosen"):
        n.append(f"chose {o['chosen']}")
    if o.get("reverted"):
        n.append("guard reverted " + ", ".join(o["reverted"]))
    if o.get("skipped"):
        n.append("budget skipped " + ", ".join(o["skipped"]))
    if o.get("kept_input"):
        n.append("guard kept the input model")
    if o.get("tolerance_passed") is False:
        n.append("optkit's tolerance MISSED (allow-miss)")
    if r.get("error"):
        n.append("FAILED: " + r["error"].replace("|", "/"))
    return "; ".join(n)


def model_table(res: dict) -> list[str]:
    m = res["metric"]
    second = "cosine" if m != "cosine" else "max_abs"
    lines = [f"| variant | p50 ms | speedup vs FP32 | {m} | {second} | within 1% | size MB | optimize s | load ms | "
             "precision | GOP/s | % peak measured | % peak computed | notes |",
             "|---|---:|---:|---:|---:|:-:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in res["variants"]:
        met = r.get("metrics") or {}
        rf = r.get("roofline") or {}
        if r.get("p50_ms") is None:
            lines.append(f"| {r['name']} | - | - | - | - | - | - | {r.get('optimize_s') or 0:.1f} | - | - | - | - | - | {_notes(r)} |")
            continue
        lines.append(
            f"| {r['name']} | {r['p50_ms']:.3f} | {r['speedup_vs_fp32']:.2f}x | {fmt_metric(m, met.get(m))} | "
            f"{fmt_metric(second, met.get(second))} | {'yes' if r.get('within_tolerance') else 'NO'} | "
            f"{r['bytes'] / 1e6:.2f} | {r.get('optimize_s') or 0:.1f} | {r.get('load_ms', 0):.0f} | {r['precision']} | "
            f"{rf.get('achieved_gops', 0):.1f} | {_pct(rf.get('fraction_of_measured_peak'))} | "
            f"{_pct(rf.get('fraction_of_computed_peak'))} | {_notes(r)} |")
    return lines


def summary_table(data: dict) -> list[str]:
    lines = ["| model | accuracy metric (test data) | FP32 p50 | FP32 accuracy | fastest within 1% | best optkit | "
             "best plain library | verdict |", "|---|---|---:|---:|---|---|---|---|"]

    def cell(b, metric):
        return "none" if b is None else f"{b['name']} {b['speedup_vs_fp32']:.2f}x ({fmt_metric(metric, b['accuracy'])})"

    for res in data["models"]:
        if res.get("error"):
            lines.append(f"| {res['name']} | - | - | - | - | - | - | not run: {res['error']} |")
            continue
        h, m = res["headline"], res["metric"]
        fp = next(r for r in res["variants"] if r["name"] == "fp32")
        verdict = {"optkit": "optkit ahead", "plain": "**plain library ahead**", "tie": "tie (within ±3%)",
                   "none": "nothing within 1%"}[h["verdict"]]
        lines.append(f"| {res['name']} | {res['metric_label']} | {fp['p50_ms']:.2f} ms | {fmt_metric(m, h['fp32_accuracy'])} | "
                     f"{cell(h['fastest_within_tolerance'], m)} | {cell(h['best_optkit'], m)} | {cell(h['best_plain'], m)} | "
                     f"{verdict} |")
    return lines


def peaks_line(p: dict) -> str:
    c, me, cpu = p.get("computed") or {}, p.get("measured") or {}, p.get("cpu") or {}
    pc = c.get("per_cycle") or {}
    parts = []
    if c.get("fp32"):
        parts.append(f"FP32 {c['fp32']:.0f} GFLOP/s computed ({cpu.get('clock_ghz', 0):.2f} GHz x "
                     f"{pc.get('fp32_flop_per_cycle')} FLOP/cycle), {me.get('fp32', 0):.0f} measured")
    if c.get("int8"):
        parts.append(f"INT8 {c['int8']:.0f} GOP/s computed (x {pc.get('int8_op_per_cycle'):.0f} OP/cycle"
                     f"{', VNNI' if (cpu.get('isa') or {}).get('vnni') else ''}), {me.get('int8', 0):.0f} measured")
    line = "Peak of the one core used: " + "; ".join(parts) + " (measured: best run of a 512^3 ORT MatMul / " \
        "MatMulInteger u8s8)."
    if p.get("implied_clock_ghz") and p.get("clock_note"):
        line += f" The measured FP32 peak implies the core runs at {p['implied_clock_ghz']:.2f} GHz, above the " \
                f"{cpu.get('clock_ghz', 0):.2f} GHz /proc/cpuinfo reports: computed fractions over 100% come from that."
    return line


def _licence(res: dict) -> str:
    lic = res.get("license")
    if not lic:
        return ""
    return f"; licence: {lic['license']}" + (f" ({', '.join(lic['classifiers'])})" if lic.get("classifiers") else "")


def _search_text(p: dict) -> str:
    budget = f" --budget {p['auto_budget']}" if p.get("auto_budget") else ""
    return (f"optkit auto-ort searched with `--tolerance {p['tolerance']}{budget}`, judged on separate validation "
            "data; fp32-ort, int8-ort and int8-dynamic-ort ran one shot, as written.")


def markdown(data: dict) -> str:
    p = data["protocol"]
    lines = [f"# optkit benchmark suite, {data['date']}{' (QUICK run: not for the README)' if data.get('quick') else ''}", "",
             f"CPU: {data['peaks']['cpu'].get('model_name')} ({data['environment']['cpu'].get('logical_cores')} logical "
             f"cores), ONNX Runtime {data['environment']['libraries'].get('onnxruntime')}; {p['threads']} thread, batch "
             f"{p['batch']}, {p['rounds']} alternating rounds of >= {p['round_time_s']} s; suite wall time "
             f"{data['wall_seconds'] / 60:.1f} min ({data.get('cpu_seconds', 0) / 60:.1f} min CPU; load average at the "
             f"end {data.get('load_average')} on {data['environment']['cpu'].get('logical_cores')} cores).", "",
             "Accuracy-at-speed: the fastest variant whose accuracy on the test data (seen by no optimizer) is within "
             f"{p['tolerance']} (relative) of FP32's. {_search_text(p)}", "", *summary_table(data), "",
             peaks_line(data["peaks"]), ""]
    if data.get("only"):
        lines[2] += f" Models {', '.join(data['only'])} from a partial run (--only); the others from an earlier one."
    for res in data["models"]:
        if res.get("error"):
            continue
        f = res["flops"]
        lines += [f"## {res['name']}", "",
                  f"Source: {res['source']}{_licence(res)}. Metric: {res['metric_label']}. FLOPs at the timed shape: "
                  f"{f['total'] / 1e9:.3f} G (Conv/Gemm/MatMul {f['matmul_conv'] / 1e9:.3f} G + LSTM {f['lstm'] / 1e9:.3f} G), "
                  "from the FP32 graph for every row (an INT8 row's GOP/s counts its multiply-adds as 2 ops).", "",
                  f"Headline: {res['headline']['verdict_text']}.", ""]
        lfl = res["headline"].get("like_for_like") or like_for_like(res)
        if lfl:
            lines += ["Like for like (one shot, no search on either side): " + "; ".join(_lfl_text(c) for c in lfl) + ".", ""]
        lines += [*model_table(res), ""]
        prep = res.get("prep") or {}
        if prep.get("output_declaration_fixed"):
            lines += [f"Prep: {prep['why']}.", ""]
    lines += ["Variants:", ""]
    for name, how in data["variant_descriptions"].items():
        lines.append(f"- `{name}`: {how}")
    lines += ["", "Roofline: achieved = the FP32 graph's FLOPs / p50 (pruned or low-rank rows do less work: an effective "
              "rate); % peak uses the INT8 peak for graphs with integer ops (QDQ, dynamic INT8, even when part of the "
              "graph stays float), the FP32 peak otherwise; 'measured' = ORT's own GEMM peak on this core, 'computed' = "
              "ISA x clock (benchmarks/suite/roofline.py).", ""]
    return "\n".join(lines)


def _isa_text(data: dict) -> str:
    """The INT8-relevant ISA the numbers were measured on ('avx512_vnni', 'avx2 (no VNNI)', ...)."""
    env = data.get("environment") or {}
    if env.get("isa"):
        return env["isa"]
    from optkit.hw import isa_label

    cpu = env.get("cpu") or {}
    return isa_label(cpu) if cpu.get("isa") else "not recorded"


def readme_block(data: dict, json_name: str) -> str:
    """The README 'Results' section, between the markers."""
    p = data["protocol"]
    lines = [START, "## Results", "",
             f"Generated by `python -m benchmarks.run --write-readme` from `benchmarks/results/{json_name}` "
             f"({data['date']}; {data['peaks']['cpu'].get('model_name')}, ISA {_isa_text(data)}, {p['threads']} thread, "
             f"batch {p['batch']}, "
             f"alternating rounds). Each model's variants: FP32, what a user does by hand with the plain libraries "
             "(ORT graph optimizer, onnxsim, `quantize_dynamic` and `quantize_static` with defaults) and optkit's "
             f"recipes. Accuracy-at-speed is the fastest variant within {p['tolerance']} of FP32's accuracy on test "
             f"data no optimizer saw. {_search_text(p)}", "", *summary_table(data), "",
             peaks_line(data["peaks"])]
    fr, behind, times = [], [], []
    for res in data["models"]:
        if res.get("error"):
            continue
        rows = {r["name"]: r for r in res["variants"]}
        fast = res["headline"].get("fastest_within_tolerance")
        r = rows.get(fast["name"]) if fast else None
        if r is not None and r.get("roofline"):
            rf = r["roofline"]
            passes = (r.get("optkit") or {}).get("passes") or []
            eff = " effective (pruned/low-rank: FP32 graph's FLOPs)" if {"prune", "lowrank"} & set(passes) else ""
            fr.append(f"{res['key']} {rf['achieved_gops']:.0f} G{'OP' if rf['peak_precision'] == 'int8' else 'FLOP'}/s"
                      f"{eff} = {_pct(rf['fraction_of_measured_peak'])} of the measured {rf['peak_precision'].upper()} "
                      f"peak ({_pct(rf['fraction_of_computed_peak'])} of the computed)")
        if res["headline"]["verdict"] != "optkit":
            behind.append(f"{res['key']}: {res['headline']['verdict_text']}")
        lfl = res["headline"].get("like_for_like") or like_for_like(res)
        weak = [_lfl_text(c) for c in lfl if c["verdict"] != "optkit"]
        if weak:
            behind.append(f"{res['key']}, one shot: " + ", ".join(weak))
        o_t = [r["optimize_s"] for r in res["variants"] if r["kind"] == "optkit" and r.get("optimize_s") is not None]
        p_t = [r["optimize_s"] for r in res["variants"] if r["kind"] == "baseline" and r.get("optimize_s") is not None]
        if o_t and p_t:
            times.append(f"{res['key']} {min(o_t):.0f}-{max(o_t):.0f} s vs {min(p_t):.1f}-{max(p_t):.1f} s")
    if fr:
        lines += ["", "Roofline of each headline variant: " + "; ".join(fr) + "."]
    if behind:
        lines += ["", "Where optkit is not ahead: " + "; ".join(behind) + "."]
    if times:
        budget = p.get("auto_budget")
        lines += ["", "Optimize wall time, optkit recipes vs the library calls: " + "; ".join(times) +
                  (f" (auto-ort searches within --budget {budget})" if budget else "") + "."]
    lines += ["", f"Full tables: `benchmarks/results/{Path(json_name).with_suffix('.md').name}`.", END]
    return "\n".join(lines)


def latest_json(results_dir: Path) -> Path | None:
    """The newest full-run suite JSON (quick runs excluded)."""
    # by date in the name, then by time written (suite-<date>-<isa>.json, suite-<date>-<isa>-2.json, ...)
    files = sorted((f for f in results_dir.glob("suite-*.json") if not f.name.startswith("suite-quick")),
                   key=lambda f: (f.name[:len("suite-YYYY-MM-DD")], f.stat().st_mtime))
    return files[-1] if files else None


def write_readme(readme: Path, block: str) -> bool:
    """Replace the text between the markers; False (README untouched) when the markers are missing."""
    text = readme.read_text()
    pat = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pat.search(text):
        return False
    readme.write_text(pat.sub(lambda _: block, text, count=1))
    return True


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())
