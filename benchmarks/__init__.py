"""Benchmarks: scripts that compare optkit with plain peers in one run and commit their results.

Every results file is stamped with the date, ISA and library versions the run actually used (``stamp()``) and is
named ``<name>-<date>-<isa>.json`` (``result_path``): a run never overwrites another day's or another machine's
results; a second full run on the same day and machine gets ``-2``, ``-3``, ...
"""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _isa_tag() -> str:
    from optkit.hw import isa_label

    return re.sub(r"[^a-z0-9_]+", "", isa_label().split(" ")[0].lower()) or "cpu"


def stamp() -> dict:
    """What this run actually ran with: today's date (UTC), the ISA, the library versions."""
    from optkit.env import library_versions
    from optkit.hw import isa_label

    return {"date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(), "isa": isa_label(),
            "versions": library_versions()}


def result_path(name: str, results: Path = RESULTS, *, reuse: bool = False) -> Path:
    """``results/<name>-<date>-<isa>.json`` for this run. ``reuse``: a partial (--only) run merges into this machine's
    file of the day; otherwise an existing file gets a numbered sibling instead of being overwritten."""
    base = f"{name}-{stamp()['date']}-{_isa_tag()}"
    path = Path(results) / f"{base}.json"
    k = 2
    while not reuse and (path.exists() or path.with_suffix(".md").exists()):
        path = Path(results) / f"{base}-{k}.json"
        k += 1
    return path


def one_line_warnings() -> None:
    """Python warnings from the libraries a benchmark drives (numpy's divide/overflow in plain-library baselines,
    onnxruntime, torch): one line each, once per message and place, instead of the source echo."""
    import sys
    import warnings
    from pathlib import Path as _P

    def show(message, category, filename, lineno, file=None, line=None):
        first = str(message).strip().splitlines()[0] if str(message).strip() else ""
        print(f"warning: {first} ({category.__name__}, from {_P(filename).name}:{lineno})", file=sys.stderr)

    warnings.showwarning = show
