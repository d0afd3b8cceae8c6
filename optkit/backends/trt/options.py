"""TensorRT backend options, file names and the error type."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import PassConfig, option
from ...errors import OptkitError, RecipeError

ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"
TRT_ONNX_FILE = "model.trt.onnx"
SCRIPT_FILE = "trtexec.sh"
README_FILE = "build_engine.txt"
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = ("use a machine with an NVIDIA GPU and TensorRT >= 10 (pip install 'optkit[tensorrt]'); an artifact's "
                "compiled/trtexec.sh has the engine-build command")


class TrtError(OptkitError):
    """The model is not TensorRT-ready, or TensorRT failed to parse/build/run it."""

    exit_code = 3


@dataclass(frozen=True)
class TrtOptions(PassConfig):
    profiles: dict[str, str] = option({}, "optimization profile per input: {name: 'MIN,OPT,MAX'} with shapes like "
                                      "1x3x224x224 (one shape = static); unnamed inputs: min 1 / opt = --shape or data / "
                                      "max = opt x max_batch_multiple on a symbolic axis 0")
    max_batch_multiple: int = option(4, "max of a symbolic batch (axis 0) = opt batch x this, for inputs not in profiles")
    workspace_mb: int = option(1024, "workspace memory pool limit (MiB) for the builder's tactics")
    builder_optimization_level: int = option(3, "TensorRT builder optimization level 0-5 (higher: longer build, maybe faster)")
    tf32: bool = option(False, "let float32 layers use TF32 (faster on Ampere+, but not the FP32 numerics ONNX Runtime validated)")
    timing_cache: bool = option(True, "reuse and update a timing cache: compiled/timing.cache and one in cache_dir")
    cache_dir: str = option("", "shared timing-cache and engine-cache directory; empty = $OPTKIT_CACHE_DIR/trt or ~/.cache/optkit/trt")
    require_engine: bool = option(False, "fail when TensorRT or a GPU is missing, instead of writing the build command only")

    def check(self) -> str | None:
        if self.max_batch_multiple < 1:
            return f"option 'max_batch_multiple' must be >= 1, got {self.max_batch_multiple}"
        if self.workspace_mb < 1:
            return f"option 'workspace_mb' must be >= 1, got {self.workspace_mb}"
        if not 0 <= self.builder_optimization_level <= 5:
            return f"option 'builder_optimization_level' must be in 0-5, got {self.builder_optimization_level}"
        from .profiles import parse_profile

        for name, spec in self.profiles.items():
            try:
                parse_profile(spec, name)
            except RecipeError as e:
                return e.what
        return None
