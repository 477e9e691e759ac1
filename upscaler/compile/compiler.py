"""`upscale compile`: model -> checked ONNX graph -> TensorRT plan in the engine cache.

Everything up to the TensorRT build runs anywhere (and is tested on CPU); the build itself
needs the `tensorrt` extra on an NVIDIA machine, and its absence is reported, never hidden.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from upscaler.compile.onnx import (
    ByteIO,
    TileShape,
    check_onnx,
    export_onnx,
    graph_precision,
    run_onnxruntime,
    wrap_foreign_onnx,
)
from upscaler.compile.trt.cache import EngineCache, EngineKey
from upscaler.io.user_folders import engines_folder
from upscaler.models.onnx_model import OnnxModule
from upscaler.models.weights import LoadedModel
from upscaler.quality.metrics import psnr


def tensorrt_available() -> bool:
    """True only for the real library: tensorrt-stubs install an importable, empty `tensorrt` folder."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


@dataclass(frozen=True)
class CompileRequest:
    shape: TileShape
    precision: str  # fp16 or fp32; an ONNX model's is its graph's own (see `model_precision`)
    cache_dir: Path = field(default_factory=engines_folder)
    workspace_mib: int = 4096
    optimization_level: int = 3

    def build_settings(self) -> dict[str, int]:
        """The builder's settings, which decide the kernels of a plan and so its pixels."""
        return {"workspace_mib": self.workspace_mib, "optimization_level": self.optimization_level}


@dataclass
class CompileResult:
    onnx: Path
    onnx_psnr: float | None  # onnxruntime vs torch fp32 on a probe tile; None without onnxruntime
    plan: Path | None  # None: TensorRT is not installed here
    cached: bool = False


def engine_key(loaded: LoadedModel, request: CompileRequest, tensorrt_version: str, device: torch.device) -> EngineKey:
    major, minor = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    return EngineKey(
        model_digest=loaded.digest,
        model_name=Path(loaded.source).stem,
        tile=request.shape.tile,
        batch=request.shape.batch,
        layout=request.shape.layout,
        precision=request.precision,
        tensorrt_version=tensorrt_version,
        gpu_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "none",
        compute_capability=f"{major}.{minor}",
        workspace_mib=request.workspace_mib,
        optimization_level=request.optimization_level,
    )


def model_precision(loaded: LoadedModel, requested: str) -> str:
    """`requested` (fp16, fp32, or auto = fp16) for torch models; an ONNX model's own precision, checked."""
    if not isinstance(loaded.module, OnnxModule):
        return "fp16" if requested == "auto" else requested
    own = graph_precision(loaded.module.io)
    if requested not in ("auto", own):
        raise ValueError(f"{loaded.source}: an ONNX model is compiled at its graph's own precision ({own}); use --precision {own}")
    return own


def export_checked(loaded: LoadedModel, request: CompileRequest, path: Path, photo: np.ndarray) -> float | None:
    """Export (or wrap a foreign ONNX graph), validate the declared I/O, and measure parity with the fp32 model."""
    if isinstance(loaded.module, OnnxModule):
        wrap_foreign_onnx(loaded.module.data, loaded.module.io, request.shape, loaded.descriptor.scale, path)
    else:
        export_onnx(loaded.module, request.shape, request.precision, path)
    check_onnx(path, request.shape, loaded.descriptor.scale)
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    probe = probe_batch(request.shape, photo)
    reference = ByteIO(loaded.module, torch.float32, request.shape.layout).eval()
    with torch.no_grad():
        expected = torch.as_tensor(reference(torch.from_numpy(probe))).numpy()
    return psnr(run_onnxruntime(path, probe), expected)


def probe_batch(shape: TileShape, photo: np.ndarray) -> np.ndarray:
    """uint8 tiles cut from a real photo, in the engine's layout."""
    t = shape.tile
    reps = (-(-t // photo.shape[0]), -(-t // photo.shape[1]), 1)
    big = np.tile(photo, reps)[:t, :t]
    tiles = np.stack([np.roll(big, 7 * i, axis=1) for i in range(shape.batch)])
    return np.ascontiguousarray(tiles if shape.layout == "nhwc" else tiles.transpose(0, 3, 1, 2))


def compile_model(loaded: LoadedModel, request: CompileRequest, device: torch.device, photo: np.ndarray) -> CompileResult:
    request = replace(request, precision=model_precision(loaded, request.precision))
    cache = EngineCache(request.cache_dir)
    if not tensorrt_available():
        key = engine_key(loaded, request, "none", device)
        onnx_path = cache.onnx_path(key)
        return CompileResult(onnx_path, export_checked(loaded, request, onnx_path, photo), plan=None)

    from upscaler.compile.trt.build import BuildOptions, build_plan, tensorrt_version

    key = engine_key(loaded, request, tensorrt_version(), device)
    onnx_path = cache.onnx_path(key)
    existing = cache.lookup(key)
    if existing is not None:
        return CompileResult(onnx_path, None, existing, cached=True)
    score = export_checked(loaded, request, onnx_path, photo)
    options = BuildOptions(request.workspace_mib, request.optimization_level, request.cache_dir / "timing.cache")
    plan = build_plan(onnx_path, request.shape, options)
    return CompileResult(onnx_path, score, cache.store(key, plan))
