"""What ``optimize`` is asked to do, as one typed, validated object (instead of 22 keyword parameters threaded through
every helper). ``optkit.optimize(model, recipe, **options)`` builds it; the CLI and the fleet pass the same options."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import InputError

SERVE_ISAS = ("host", "avx2", "vnni")


@dataclass(frozen=True)
class OptimizeRequest:
    """``model``: an ONNX file, a PyTorch/TensorFlow file or an in-memory ``nn.Module`` / Keras model; ``recipe``: a
    built-in name, a YAML path or a ``Recipe``. The rest are ``optimize``'s options (see its docstring)."""

    model: Any
    recipe: Any
    data: str | Path | None = None  # calibration feeds (npz, npz directory, stacked file)
    shapes: dict | None = None  # --shape NAME=DIMS
    output: str | Path = "optkit-out"
    threads: int = 1
    version: int | None = None
    name: str | None = None
    progress: Any = None  # optkit.passes.Progress
    warn: Callable[[str], None] | None = None
    on_pass: Callable[[dict], None] | None = None
    tolerance: str | None = None  # '1%', 'abs:0.005'; None: the default 1% gate on lossy recipes
    metric: str = "auto"
    budget: str | None = None  # '10m'
    max_trials: int = 24
    allow_miss: bool = False
    force: bool = False  # performance guard off; prune/lowrank ratios as written
    eval_data: str | Path | None = None  # held-out feeds the gate judges on
    eval_feeds: int = 512
    example_inputs: Any = None
    import_options: dict | None = None
    backends: str | list[str] | None = None
    serve_isa: str | None = None  # host | avx2 | vnni: the CPU the artifact will be served on
    cache: Any = None  # None (default cache), False (off), a path, or a PassCache

    def __post_init__(self):
        from .artifact import check_name
        from .checks import check_threads

        check_threads(self.threads)
        if self.name is not None:
            check_name(self.name)
        if isinstance(self.max_trials, bool) or not isinstance(self.max_trials, int) or self.max_trials < 1:
            raise InputError(f"--max-trials must be >= 1, got {self.max_trials}", "give a positive number of trials")
        if isinstance(self.eval_feeds, bool) or not isinstance(self.eval_feeds, int) or self.eval_feeds < 1:
            raise InputError(f"--eval-feeds must be >= 1, got {self.eval_feeds}", "give a positive number of feeds")
        if self.serve_isa is not None and self.serve_isa not in SERVE_ISAS:
            raise InputError(f"--serve-isa must be one of {', '.join(SERVE_ISAS)}; got {self.serve_isa!r}",
                             "host (default), avx2 (no VNNI: 7-bit weights) or vnni (AVX-512/AVX VNNI, AMX)")

    @property
    def say(self) -> Callable[[str], None]:
        return self.warn or (lambda msg: None)

    @property
    def onnx_input(self) -> bool:
        return isinstance(self.model, (str, Path)) and Path(self.model).suffix.lower() == ".onnx"
