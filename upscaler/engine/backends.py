"""Backends: what runs the model on a batch of float tiles that are already on the device.

Each backend works on its own copy of the model in its own dtype; the loaded model is never
converted in place, so the fp32 fallback really is fp32 and `eval --record` saves what it read.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable

import torch
from torch import nn

from upscaler.engine.devices import channels_last
from upscaler.engine.frames import ModelRunner, Runner
from upscaler.engine.plan import RunPlan
from upscaler.engine.prepare import fold_batch_norm
from upscaler.models.weights import LoadedModel

log = logging.getLogger("upscaler")


class TorchRunner:
    """Eager torch (optionally torch.compile'd or replayed as CUDA graphs), channels_last.

    Halves the number of tiles per forward on CUDA out-of-memory and remembers what fit.
    """

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype,
                 cuda_graphs: bool = False, compiled: bool = False) -> None:
        self.device, self.dtype = device, dtype
        folded = fold_batch_norm(copy.deepcopy(module).eval())
        private = channels_last(folded.to(device=device, dtype=dtype))
        self.forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(private) if compiled else private
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[tuple[object, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.chunk: int | None = None  # most tiles per forward known to fit

    @torch.inference_mode()
    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        if self.chunk is not None and tiles.shape[0] > self.chunk:
            return torch.cat([self(part) for part in tiles.split(self.chunk)])
        x = tiles.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        try:
            return self._replay(x) if self.cuda_graphs else self.forward(x)
        except torch.OutOfMemoryError:
            if tiles.shape[0] == 1:
                raise
            self.chunk = tiles.shape[0] // 2
            torch.cuda.empty_cache()
            log.warning("out of memory at %d tiles per batch; retrying with %d", tiles.shape[0], self.chunk)
            return self(tiles)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """One CUDA graph per input shape and stream, captured on first use after a warm-up."""
        stream = torch.cuda.current_stream(self.device)
        key = (tuple(x.shape), stream.cuda_stream)
        if key not in self.graphs:
            static_in = x.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(stream)
            with torch.cuda.stream(side):
                for _ in range(2):  # cuDNN autotuning and lazy allocations stay outside the capture
                    self.forward(static_in)
            stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                static_out = self.forward(static_in)
            self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


def open_runner(plan: RunPlan, model: LoadedModel) -> ModelRunner:
    """The plan's backend with an fp32 torch fallback (built on first use) for reduced precision."""
    run: Runner
    if plan.backend == "tensorrt":
        from upscaler.engine.tensorrt import open_tensorrt_runner

        run = open_tensorrt_runner(plan, model)
    else:
        run = TorchRunner(model.module, plan.device, plan.dtype, plan.cuda_graphs, plan.compile)

    @functools.cache
    def fp32() -> Runner:  # one fp32 copy, however many runners fall back to it
        return TorchRunner(model.module, plan.device, torch.float32)

    return ModelRunner(run, plan.dtype, fp32 if plan.dtype != torch.float32 else None)
