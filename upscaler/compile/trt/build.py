"""Building FP16/FP32 TensorRT engines from the exported ONNX graph (TensorRT 10 and 11).

Written against NVIDIA's documented Python API and checked with `mypy --strict` against
tensorrt-stubs. The network is strongly typed in both versions: the precision is the ONNX
graph's own, so no precision builder flag is ever set (TensorRT 11 removed them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorrt as trt

from upscaler.compile.onnx import INPUT_NAME, TileShape
from upscaler.io.files import write_bytes_atomically


@dataclass(frozen=True)
class BuildOptions:
    workspace_mib: int = 4096
    optimization_level: int = 3  # TensorRT's default; 0-5
    timing_cache: Path | None = None  # persisted across builds: later builds skip kernel timing


def tensorrt_version() -> str:
    return str(trt.__version__)


def major_version() -> int:
    return int(tensorrt_version().split(".")[0])


def network_flags() -> int:
    """Strong typing: a flag in TensorRT 10, always on (and the flag gone or ignored) in 11."""
    if major_version() >= 11:
        return 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        raise RuntimeError(f"TensorRT {tensorrt_version()} has no strongly typed networks; need 10.0 or later")
    return 1 << int(strongly_typed)


def build_plan(onnx_path: Path, shape: TileShape, options: BuildOptions) -> bytes:
    """Parse, configure (static profile, workspace, optimization level, timing cache) and build."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags())
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX graph: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level

    # A profile pinned to the one static tile shape (the graph is static; this states it).
    profile = builder.create_optimization_profile()
    dims = trt.Dims(list(shape.input_shape()))
    profile.set_shape(INPUT_NAME, dims, dims, dims)
    config.add_optimization_profile(profile)

    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    if options.timing_cache is not None:
        write_bytes_atomically(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)
