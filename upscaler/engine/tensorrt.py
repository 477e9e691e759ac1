"""The TensorRT backend: a cached engine per tile shape, one execution context per CUDA stream."""

from __future__ import annotations

import numpy as np
import torch

from upscaler.compile.compiler import CompileRequest, compile_model
from upscaler.compile.onnx import TileShape
from upscaler.engine.frames import Runner
from upscaler.engine.plan import RunPlan
from upscaler.models.weights import LoadedModel


def runtime_request(plan: RunPlan) -> CompileRequest:
    """What a run builds (or finds in the cache) for its plan: the static tile, the compiler's default build settings."""
    tile = plan.tiles.tile or plan.tiles.grid(1, 1).tile_h
    return CompileRequest(TileShape(plan.batch, tile), plan.precision, plan.engines)


def open_tensorrt_runner(plan: RunPlan, model: LoadedModel) -> Runner:
    """Build (or take from the cache) the engine for the plan's static tile and wrap it as a Runner.

    The engine's graph has uint8 NHWC I/O (see compile/onnx.py), so float tiles are quantised
    on the device before it and widened after it. Tiles the graph flagged as bad before its own
    quantisation come back as NaN, which `ModelRunner` recomputes with the fp32 torch model.
    """
    from upscaler.compile.trt.cache import EngineCache
    from upscaler.compile.trt.runtime import TensorRTExecutor

    request = runtime_request(plan)
    shape = request.shape
    result = compile_model(model, request, plan.device, np.zeros((8, 8, 3), np.uint8))
    assert result.plan is not None
    executor = TensorRTExecutor(EngineCache(plan.engines).read_plan(result.plan), plan.cuda_graphs)
    buffers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def run(tiles: torch.Tensor) -> torch.Tensor:
        stream = torch.cuda.current_stream(plan.device)
        if stream.cuda_stream not in buffers:
            slot_in = torch.empty(shape.input_shape(), dtype=torch.uint8, device=plan.device)
            slot_out = torch.empty(shape.output_shape(plan.scale), dtype=torch.uint8, device=plan.device)
            flags = torch.zeros(shape.batch, dtype=torch.uint8, device=plan.device)
            executor.bind([slot_in], [slot_out], [stream], [flags])
            buffers[stream.cuda_stream] = (slot_in, slot_out, flags)
        slot_in, slot_out, flags = buffers[stream.cuda_stream]
        slot = list(buffers).index(stream.cuda_stream)
        slot_in.copy_((tiles.float().clamp(0, 1) * 255).round_().permute(0, 2, 3, 1))
        executor.launch(slot, stream)
        out = slot_out.permute(0, 3, 1, 2).float() / 255
        out[flags.bool()] = float("nan")
        return out

    return run
