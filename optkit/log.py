"""One logger for everything optkit says while it works: ``logging.getLogger("optkit")``.

Library users configure it like any other logger (it has only a NullHandler); the CLI renders it with rich on
stderr (``-q`` warnings only, ``-v`` debug, ``--log-file`` everything with timestamps). Progress of long steps
(passes, search trials, TVM tuning, bench rounds) is logged at INFO, one line per step.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("optkit")
log.addHandler(logging.NullHandler())

_t0 = time.monotonic()
_best: dict[str, tuple[float, bool]] = {}
COMMAND: list[str] | None = None  # the CLI sets the argv it was run with (for reproduce records)


def elapsed() -> str:
    """Seconds since optkit was imported (or since reset()), for progress lines."""
    return f"{time.monotonic() - _t0:.1f} s"


def reset() -> None:
    global _t0
    _t0 = time.monotonic()
    _best.clear()


def step(msg: str, *args) -> None:
    """A long step starts: '[12.3 s] msg'."""
    log.info("[%s] " + msg, elapsed(), *args)


def trial(name: str, rec: dict, tuning) -> None:
    """One search trial finished: k / n, its value, the best so far and the threshold (one line)."""
    value, thr = rec.get("value"), rec.get("threshold")
    best = _best.get(name)
    if value is not None and rec.get("ok") and (best is None or value > best[0]):
        _best[name] = best = (value, True)
    what = (f"{rec.get('metric')} {value:.5g} (threshold {thr:.5g}) {'ok' if rec.get('ok') else 'miss'}"
            if value is not None and thr is not None else f"failed: {rec.get('error', '?')}")
    cfg = rec.get("config") or rec.get("layers") or rec.get("fallback_float") or ""
    log.info("[%s]   %s trial %d/%d: %s%s%s", elapsed(), name, tuning.trials_run, tuning.max_trials, what,
             f", best so far {best[0]:.5g}" if best else ", none within tolerance yet",
             f" · {cfg}" if cfg and not isinstance(cfg, (list, dict)) else "")


def command() -> str | None:
    import shlex

    return shlex.join(["optkit", *COMMAND]) if COMMAND is not None else None
