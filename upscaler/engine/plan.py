"""Settings resolved once, against the model and the machine, into a run plan.

Everything downstream (backends, tiling, streams) receives the plan and decides nothing of
its own: which device and dtype, which backend, how images are cut, how many frames fly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from upscaler.compile.compiler import tensorrt_available
from upscaler.engine.devices import available_memory, resolve_device, resolve_precision
from upscaler.engine.settings import BACKENDS, RunSettings
from upscaler.engine.tiling import TileGrid, check_overlap, even_grid, fixed_grid
from upscaler.models.dtypes import precision_name
from upscaler.models.weights import LoadedModel

CPU_BUDGET_CAP = 512 << 20  # a tile's working set on the CPU: whole 960x540 frames with the default model
STATIC_PHOTO_TILE = 512  # static engines over photos of many sizes: one square shape serves them all
_PROBE = 32


@dataclass(frozen=True)
class TilePlan:
    """How images are cut: `tile` None = even split within `max_tile_pixels`; else fixed square tiles."""

    tile: int | None
    overlap: int
    max_tile_pixels: int
    max_band_pixels: int
    static_shape: bool  # engines built for one shape (TensorRT, CUDA graphs) need every tile alike
    reshapeable: bool = True  # a new shape costs little (CUDA graphs capture per shape; TensorRT rebuilds)
    multiple: int = 1

    def grid(self, height: int, width: int) -> TileGrid:
        if self.tile is not None or self.static_shape:
            tile = self.tile or STATIC_PHOTO_TILE
            return fixed_grid(height, width, tile, self.overlap, fit=not self.static_shape, multiple=self.multiple)
        return even_grid(height, width, self.max_tile_pixels, self.overlap, self.multiple, self.max_band_pixels)

    def for_frames(self) -> TilePlan:
        """For a stream of equal frames: auto tiles split each frame evenly, which is one shape for the stream."""
        return replace(self, static_shape=False) if self.tile is None and self.reshapeable else self


@dataclass(frozen=True)
class RunPlan:
    device: torch.device
    dtype: torch.dtype
    backend: str  # "torch" or "tensorrt"
    tiles: TilePlan
    batch: int
    streams: int
    cuda_graphs: bool
    compile: bool
    scale: int  # the model's
    out_scale: int
    engines: Path

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def describe(self) -> str:
        where = f"{self.backend} {self.device}"
        extra = f", {self.streams} stream(s)" if self.device.type == "cuda" else ""
        extra += ", CUDA graphs" if self.cuda_graphs else ""
        extra += ", torch.compile" if self.compile else ""
        tiles = "auto tiles" if self.tiles.tile is None else f"{self.tiles.tile}px tiles"
        return f"{where} {self.precision}{extra}, {tiles}"


def plan_run(settings: RunSettings, model: LoadedModel) -> RunPlan:
    """Resolve `settings` for `model` on this machine; raises ValueError with a one-line reason."""
    if settings.backend not in BACKENDS:
        raise ValueError(f"--backend {settings.backend!r}: use auto, tensorrt or torch")
    model_facts = model.descriptor
    onnx = model_facts.runtime == "onnxruntime"
    if onnx and settings.device != "auto" and resolve_device(settings.device).type != "cpu":
        raise ValueError(f"{model.source}: ONNX models run on onnxruntime on the CPU here; "
                         "`upscale compile --model` builds a TensorRT engine from them for the GPU")
    device = resolve_device("cpu" if onnx else settings.device)
    dtype = _precision(settings.precision, device, model_facts.supports_fp16, model_facts.supports_bf16, model.source)
    if device.type == "cpu":
        if settings.backend == "tensorrt":
            raise ValueError("--backend tensorrt needs a CUDA device")
        if dtype == torch.float16:
            raise ValueError("--precision fp16 needs a CUDA device; on CPU use fp32 or bf16")
        if settings.cuda_graphs or settings.compile:
            raise ValueError("--cuda-graphs and --compile need a CUDA device")
    backend = "torch"
    if device.type == "cuda" and settings.backend != "torch" and tensorrt_available():
        if dtype == torch.bfloat16:
            if settings.backend == "tensorrt":
                raise ValueError("--backend tensorrt runs fp16 or fp32 engines; bf16 is a torch-only precision")
        else:
            backend = "tensorrt"
    elif settings.backend == "tensorrt":
        raise ValueError("--backend tensorrt: TensorRT is not installed (install this project's tensorrt extra, pip install -e '.[tensorrt]', on an NVIDIA machine)")
    if settings.tile is not None:
        check_overlap(settings.tile, settings.overlap)
    static = backend == "tensorrt" or settings.cuda_graphs
    budget = (settings.memory_budget_mib << 20) if settings.memory_budget_mib else _default_budget(device)
    stored = model_facts.activations_per_input_pixel  # measured once, with the descriptor; else probed here
    per_pixel = (stored * torch.finfo(dtype).bits // 8 * 3 + model.card.scale**2 * 3 * 4 if stored
                 else working_bytes_per_pixel(model.module, model.card.scale, dtype))
    tiles = TilePlan(
        tile=settings.tile,
        overlap=settings.overlap,
        max_tile_pixels=max(budget // 2 // per_pixel, 64 * 64),
        # the float blend band: tile height x image width at output resolution, up to 6 channels
        max_band_pixels=max(budget // 2 // (model.card.scale**2 * 6 * 4), 64 * 64),
        static_shape=static,
        reshapeable=backend != "tensorrt",
        multiple=model_facts.size_multiple,
    )
    return RunPlan(
        device=device, dtype=dtype, backend=backend, tiles=tiles, batch=settings.batch, streams=settings.streams,
        cuda_graphs=settings.cuda_graphs, compile=settings.compile, scale=model.card.scale,
        out_scale=settings.scale or model.card.scale, engines=settings.engines,
    )


def _precision(spec: str, device: torch.device, fp16: bool, bf16: bool, source: str) -> torch.dtype:
    """The requested precision, or for auto the fastest one this model supports on this device."""
    dtype = resolve_precision(spec, device)
    supported = {torch.float32: True, torch.float16: fp16, torch.bfloat16: bf16}[dtype]
    if supported:
        return dtype
    if spec == "auto":
        return torch.float32
    raise ValueError(f"{source}: this model does not support --precision {spec} (its outputs overflow or it runs in fp32 only)")


def _default_budget(device: torch.device) -> int:
    free = available_memory(device)
    return min(free // 4, CPU_BUDGET_CAP) if device.type == "cpu" else free // 2


def working_bytes_per_pixel(module: nn.Module, scale: int, dtype: torch.dtype) -> int:
    """Bytes of activations per input pixel at the widest point of the network, with headroom.

    Measured once per model with hooks on a small probe: the largest output of any layer,
    times three (a layer's input, its output and a residual alive at once).
    """
    return _activation_elements(module) * torch.finfo(dtype).bits // 8 * 3 + scale * scale * 3 * 4


@functools.cache
def _activation_elements_cached(key: int, module: nn.Module) -> int:
    widest = 0

    def record(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal widest
        if isinstance(output, torch.Tensor):
            widest = max(widest, output.numel())

    handles = [m.register_forward_hook(record) for m in module.modules() if m is not module]
    param = next(module.parameters(), torch.zeros(()))
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, _PROBE, _PROBE, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    return max(-(-widest // (_PROBE * _PROBE)), 3)


def _activation_elements(module: nn.Module) -> int:
    return _activation_elements_cached(id(module), module)
