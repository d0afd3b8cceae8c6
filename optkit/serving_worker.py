"""Child-process entry for one ``optkit tune`` trial: reads the trial spec (JSON) on stdin, measures it with
``optkit.serving.measure`` and prints one ``OPTKIT_TRIAL_RESULT {json}`` line. An exception is reported as a failed
trial; a crash (segfault, OOM kill) simply ends the process and the parent records the trial as failed.

    echo '{"backend": "ort", ...}' | python -m optkit.serving_worker
"""
from __future__ import annotations

import json
import os
import signal
import sys


def main() -> int:
    from optkit.serving import CRASH_ENV, RESULT_MARK, measure

    spec = json.loads(sys.stdin.read())
    crash = [k.strip() for k in os.environ.get(CRASH_ENV, "").split(",") if k.strip()]
    if "*" in crash or spec.get("key") in crash:  # testing hook: die the way a segfaulting backend would
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        res = measure(spec)
    except Exception as e:  # reported as this trial's failure; the search goes on
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        res = {"status": "failed", "error": f"{type(e).__name__}: {first}"}
    sys.stdout.write(RESULT_MARK + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
