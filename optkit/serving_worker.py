"""Old name of the trial worker, kept so ``python -m optkit.serving_worker`` still runs: see optkit.serving.worker."""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from optkit.serving.worker import main

    sys.exit(main())
