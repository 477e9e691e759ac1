"""Choosing and opening the backend that runs a loaded model; the CLI never names a backend class.

auto: TensorRT when it is installed and a matching engine is cached or can be built, else
torch on CUDA streams, else torch on the CPU.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from upscaler.compile.compiler import DEFAULT_CACHE, CompileRequest, compile_model, tensorrt_available
from upscaler.compile.onnx import TileShape
from upscaler.engine.devices import resolve_device, resolve_precision
from upscaler.engine.upscale import (
    DEFAULT_BATCH,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    Backend,
    PictureUpscaler,
    TiledUpscaler,
    TorchBackend,
)
from upscaler.models.weights import LoadedModel, load_model

if TYPE_CHECKING:
    from upscaler.engine.streams import DeviceExecutor

log = logging.getLogger("upscaler")
BACKENDS = ("auto", "tensorrt", "torch")


@dataclass
class RunSettings:
    model: str
    scale: int | None = None  # output scale; None = the model's own
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch: int = DEFAULT_BATCH
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    streams: int = 2
    cuda_graphs: bool = False
    engines: Path = DEFAULT_CACHE


@dataclass
class OpenedBackend:
    backend: Backend
    fallback: Backend | None  # fp32, for tiles that reduced precision got wrong
    description: str


def open_backend(loaded: LoadedModel, settings: RunSettings, probe: np.ndarray | None = None) -> OpenedBackend:
    if settings.backend not in BACKENDS:
        raise ValueError(f"--backend {settings.backend!r}: use auto, tensorrt or torch")
    device = resolve_device(settings.device)
    dtype = resolve_precision(settings.precision, device)
    if device.type == "cpu":
        if settings.backend == "tensorrt":
            raise ValueError("--backend tensorrt needs a CUDA device")
        if dtype == torch.float16:
            raise ValueError("--precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
        backend: Backend = TorchBackend(loaded.module, loaded.card.scale, device, dtype, settings.tile, settings.batch)
        return OpenedBackend(backend, _fallback(loaded, settings, device, dtype), f"torch cpu {_name(dtype)}")

    from upscaler.engine.streams import StreamedBackend, TorchExecutor

    shape = TileShape(settings.batch, settings.tile)
    detail = f"{_name(dtype)}, {settings.streams} stream(s)" + (", CUDA graphs" if settings.cuda_graphs else "")
    if settings.backend != "torch" and tensorrt_available():
        executor = _tensorrt_executor(loaded, settings, shape, device, dtype, probe)
        if executor is not None:
            backend = StreamedBackend(executor, loaded.card.scale, shape, settings.streams, device)
            return OpenedBackend(backend, None, f"tensorrt {detail}")
    if settings.backend == "tensorrt":
        raise ValueError("--backend tensorrt: TensorRT is not installed (pip install 'upscaler[tensorrt]' on an NVIDIA machine)")
    module = copy.deepcopy(loaded.module).to(device)
    executor = TorchExecutor(module, dtype, shape.layout, settings.cuda_graphs)
    backend = StreamedBackend(executor, loaded.card.scale, shape, settings.streams, device)
    return OpenedBackend(backend, _fallback(loaded, settings, device, dtype), f"torch {device} {detail}")


def _tensorrt_executor(
    loaded: LoadedModel, settings: RunSettings, shape: TileShape, device: torch.device, dtype: torch.dtype,
    probe: np.ndarray | None,
) -> DeviceExecutor | None:
    """A TensorRT executor from the cache (building the engine if needed), or None to fall back."""
    from upscaler.compile.trt.cache import EngineCache
    from upscaler.compile.trt.runtime import TensorRTExecutor

    precision = "fp32" if dtype == torch.float32 else "fp16"
    request = CompileRequest(shape, precision, settings.engines)
    try:
        result = compile_model(loaded, request, device, probe if probe is not None else np.zeros((8, 8, 3), np.uint8))
        assert result.plan is not None
        return TensorRTExecutor(EngineCache(settings.engines).read_plan(result.plan), settings.cuda_graphs)
    except Exception as exc:  # any build failure: auto falls back to torch, an explicit request fails
        if settings.backend == "tensorrt":
            raise ValueError(f"--backend tensorrt: {exc}") from exc
        log.warning("TensorRT engine unavailable (%s); using torch CUDA", exc)
        return None


def _fallback(loaded: LoadedModel, settings: RunSettings, device: torch.device, dtype: torch.dtype) -> Backend | None:
    if dtype == torch.float32:
        return None
    module = copy.deepcopy(loaded.module)
    static = device.type == "cuda"  # it recomputes batches of the main backend, which is static on CUDA
    return TorchBackend(module, loaded.card.scale, device, torch.float32, settings.tile, settings.batch, static)


def _name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]


def open_upscaler(settings: RunSettings) -> tuple[PictureUpscaler, LoadedModel, OpenedBackend]:
    loaded = load_model(settings.model)
    opened = open_backend(loaded, settings)
    tiled = TiledUpscaler(opened.backend, settings.overlap, opened.fallback)
    return PictureUpscaler(tiled, settings.scale or loaded.card.scale), loaded, opened
