"""Ship / ship with caveats / do not ship: explicit rules over a manifest (what optimize did) and a bench result
(what was measured afterwards). Each rule gives one reason line; the worst level decides the verdict.

Rules (thresholds are module constants, documented in the README):
  gate      the accuracy gate was met on data the optimizer did not tune on (manifest ``tolerance`` + ``data.eval``):
            met on held-out data = ok; met only on the calibration data = caveat; missed = block.
  speed     the speedup is separated from noise (bench ``speedup.verdict``/``ci95``, else the manifest's
            ``guard.final``): faster = ok; tie = caveat; slower = block; not measured = caveat.
  noise     CV of the timed runs <= MAX_CV, round-to-round spread of the ratio <= MAX_SPREAD, machine not loaded
            (load average <= MAX_LOAD_PER_CORE x cores): otherwise a caveat saying which.
  recovery  a pass reverted by the performance guard, kept partly in float or recovered with dynamic INT8: caveat.
  data      bench accuracy on synthetic feeds, or on the calibration feeds: caveat.
"""
from __future__ import annotations

import hashlib
import json

SHIP, CAVEATS, BLOCK = "ship", "ship with caveats", "do not ship"
OK, CAVEAT, NO = "ok", "caveat", "block"
MAX_CV = 0.10
MAX_SPREAD = 1.5  # max/min of the per-round speedup ratios
MAX_LOAD_PER_CORE = 0.75


def recipe_sha256(recipe: dict) -> str:
    """A stable hash of the resolved recipe (what the passes were told to do)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def reproduce_record(command: str, recipe: dict) -> dict:
    from . import __version__

    return {"command": command, "optkit_version": __version__, "recipe_sha256": recipe_sha256(recipe)}


def _iv(iv) -> str:
    return f"95% interval {iv[0]:.2f}-{iv[1]:.2f}x" if iv else "no interval"


def gate_rule(man: dict) -> tuple[str, str]:
    tol = man.get("tolerance")
    if not tol:
        lossy = [e["pass"] for e in man.get("pass_log", []) if e.get("status") == "ok" and e.get("exact") is False
                 and e.get("modified", True)]
        if lossy:
            return CAVEAT, f"lossy pass(es) {', '.join(lossy)} ran without an accuracy gate"
        return OK, "every pass is exact: no accuracy can be lost (numerics checked after each pass)"
    if not tol.get("passed"):
        return NO, f"accuracy gate {tol['criterion']} MISSED by {', '.join(tol.get('missed_by') or ['?'])} " \
                   f"(judged on {tol.get('judged_on')})"
    data = man.get("data") or {}
    ev = data.get("eval") or {}
    held_out = bool(ev.get("path")) and ev.get("path") != data.get("path") and "calibration" not in str(tol.get("judged_on"))
    if held_out:
        return OK, f"accuracy gate {tol['criterion']} met on held-out data ({ev.get('source')}, {ev.get('feeds')} feeds) " \
                   "the optimizer did not calibrate on"
    return CAVEAT, f"accuracy gate {tol['criterion']} met only on the calibration data the optimizer tuned on " \
                   f"({tol.get('judged_on')}): rerun optimize with --eval-data HELD_OUT.npz"


def speed_rule(man: dict | None, bench: dict | None) -> tuple[str, str]:
    sp = (bench or {}).get("speedup")
    if sp:
        iv, v = sp.get("ci95"), sp.get("verdict")
        where = f"bench, {len(sp.get('rounds', []))} alternating rounds"
        if v == "faster":
            return OK, f"faster: {sp['median']:.2f}x vs the FP32 reference, {_iv(iv)} ({where})"
        if v == "slower":
            return NO, f"slower: {sp['median']:.2f}x vs the FP32 reference, {_iv(iv)} ({where})"
        return CAVEAT, f"speedup {sp['median']:.2f}x is not separated from noise: {_iv(iv)} contains 1.0x ({where})"
    final = ((man or {}).get("guard") or {}).get("final")
    if final:
        iv, v = final.get("interval"), final.get("verdict")
        where = "optimize's performance guard; run optkit bench for the full protocol"
        if not final.get("kept", True):
            return NO, f"the optimized model was slower ({final['speedup_vs_input']:.2f}x, {_iv(iv)}): the artifact " \
                       "holds the input model"
        level = OK if v == "faster" else NO if v == "slower" else CAVEAT
        word = {"faster": "faster", "slower": "slower"}.get(v, "not separated from noise")
        return level, f"{word}: {final['speedup_vs_input']:.2f}x vs the input model, {_iv(iv)} ({where})"
    return CAVEAT, "speed not measured yet: run optkit bench ARTIFACT"


def noise_rules(bench: dict | None) -> list[tuple[str, str]]:
    if not bench or "latency" not in bench:
        return []
    out = []
    for role, s in bench["latency"].items():
        if s.get("cv", 0) > MAX_CV:
            out.append((CAVEAT, f"noisy timing: {role} CV {s['cv']:.1%} > {MAX_CV:.0%} (other processes, frequency "
                                "scaling): rerun on a quiet machine or with more --rounds"))
    sp = bench.get("speedup")
    if sp and sp.get("min", 0) > 0 and sp["max"] / sp["min"] > MAX_SPREAD:
        out.append((CAVEAT, f"rounds disagree: per-round speedups {sp['min']:.2f}-{sp['max']:.2f}x "
                            f"(max/min {sp['max'] / sp['min']:.1f} > {MAX_SPREAD})"))
    ld = bench.get("load")
    if ld and ld.get("cores") and max(ld.get("before", 0), ld.get("after", 0)) > MAX_LOAD_PER_CORE * ld["cores"]:
        out.append((CAVEAT, f"machine loaded while timing: load average {max(ld['before'], ld['after']):.1f} on "
                            f"{ld['cores']} core(s): the numbers carry other processes' noise"))
    return out


def recovery_rules(man: dict | None) -> list[tuple[str, str]]:
    out = []
    for e in (man or {}).get("pass_log", []):
        if e.get("status") == "reverted":
            out.append((CAVEAT, f"pass {e['pass']} was reverted (performance guard or numerics): the artifact runs "
                                "without it"))
        for t in e.get("trials") or []:
            if not t.get("chosen"):
                continue
            if t.get("fallback_float"):
                out.append((CAVEAT, f"pass {e['pass']}: {len(t['fallback_float'])} node(s) kept in float to meet the gate"))
            if (t.get("config") or {}).get("recovered_with") if isinstance(t.get("config"), dict) else False:
                out.append((CAVEAT, f"pass {e['pass']}: static INT8 missed the gate, recovered with "
                                    f"{t['config']['recovered_with']}"))
    return out


def data_rules(man: dict | None, bench: dict | None) -> list[tuple[str, str]]:
    acc = (bench or {}).get("accuracy")
    if not acc:
        return []
    if acc.get("synthetic"):
        return [(CAVEAT, "bench accuracy on synthetic feeds: pass --data with real samples")]
    calib = ((man or {}).get("data") or {})
    if calib.get("path") and acc.get("data_path") == calib["path"]:
        return [(CAVEAT, f"bench accuracy on the calibration data ({acc.get('source')}): pass --data HELD_OUT.npz")]
    return []


def judged_data_label(data: dict | None) -> str:
    """Which data optimize's accuracy numbers come from: held-out (--eval-data) or the calibration data itself."""
    d = data or {}
    ev = d.get("eval") or {}
    if d.get("synthetic") and not ev.get("path"):
        return "synthetic data (not representative)"
    if ev.get("path") and ev.get("path") != d.get("path"):
        return f"{ev.get('source')} (held-out, --eval-data)"
    return f"{d.get('source')} (the calibration data: flatters the result; pass --eval-data)"


def decide(man: dict | None = None, bench: dict | None = None) -> dict:
    """{'verdict', 'reasons': [{'level', 'text'}], 'reproduce'} from a manifest and/or a bench result."""
    reasons = []
    if man is not None:
        reasons.append(gate_rule(man))
    reasons.append(speed_rule(man, bench))
    reasons += noise_rules(bench) + recovery_rules(man) + data_rules(man, bench)
    levels = {lvl for lvl, _ in reasons}
    verdict = BLOCK if NO in levels else CAVEATS if CAVEAT in levels else SHIP
    order = {NO: 0, CAVEAT: 1, OK: 2}
    return {"verdict": verdict, "reasons": [{"level": lvl, "text": t} for lvl, t in sorted(reasons, key=lambda r: order[r[0]])],
            "reproduce": (man or {}).get("reproduce")}
