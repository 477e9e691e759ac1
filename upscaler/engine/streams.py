"""Overlapped tiled inference on several CUDA streams, for the torch and TensorRT executors.

Each of N slots owns a CUDA stream, pinned host staging buffers and device buffers. Batch k
goes to slot k mod N: its host-to-device copy, the model and the device-to-host copy are
queued on that slot's stream, and an event marks the result. While slot k computes, slot
k+1 copies in and slot k-1 copies out, and the CPU prepares batch k+N in parallel. Only
uint8 pixels cross the bus; scaling to [0,1] happens on the GPU. Streams, events and pinned
memory come from torch, the one owner of the CUDA context.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from upscaler.compile.onnx import ByteIO, TileShape
from upscaler.engine.devices import channels_last


class DeviceExecutor(Protocol):
    """Runs the model on one slot's device buffers (uint8 in, uint8 out) on a given stream."""

    def bind(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], streams: list[torch.cuda.Stream]) -> None:
        """Called once with every slot's device buffers, before the first launch."""
        ...

    def launch(self, slot: int, stream: torch.cuda.Stream) -> None: ...


class TorchExecutor:
    """The torch model (fp16/bf16/fp32, channels_last), optionally replayed as a CUDA graph per slot."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, layout: str, cuda_graphs: bool) -> None:
        self.forward = ByteIO(channels_last(module.to(dtype=dtype)), dtype, layout).eval()
        self.cuda_graphs = cuda_graphs
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.graphs: list[torch.cuda.CUDAGraph] = []

    @torch.inference_mode()
    def bind(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor], streams: list[torch.cuda.Stream]) -> None:
        self.inputs, self.outputs = inputs, outputs
        if not self.cuda_graphs:
            return
        warmup = torch.cuda.Stream()
        with torch.cuda.stream(warmup):  # warm up cuDNN autotuning outside the capture
            for _ in range(3):
                outputs[0].copy_(self.forward(inputs[0]))
        torch.cuda.current_stream().wait_stream(warmup)
        pool = torch.cuda.graph_pool_handle()
        for slot in range(len(inputs)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs[slot].copy_(self.forward(inputs[slot]))
            self.graphs.append(graph)

    @torch.inference_mode()
    def launch(self, slot: int, stream: torch.cuda.Stream) -> None:
        with torch.cuda.stream(stream):
            if self.graphs:
                self.graphs[slot].replay()
            else:
                self.outputs[slot].copy_(self.forward(self.inputs[slot]))


@dataclass(eq=False)
class _Slot:
    stream: torch.cuda.Stream
    host_in: torch.Tensor  # pinned uint8
    device_in: torch.Tensor
    device_out: torch.Tensor
    host_out: torch.Tensor  # pinned uint8
    done: torch.cuda.Event


@dataclass
class StageTimes:
    """Per-batch CUDA event timings (ms from the first event) that show copies overlapping compute."""

    h2d: list[tuple[float, float]]
    compute: list[tuple[float, float]]
    d2h: list[tuple[float, float]]


class StreamedBackend:
    """A Backend that keeps up to `streams` batches in flight on separate CUDA streams."""

    def __init__(
        self, executor: DeviceExecutor, scale: int, shape: TileShape, streams: int, device: torch.device,
        profile: bool = False,
    ) -> None:
        if streams < 1:
            raise ValueError("--streams must be at least 1")
        self.executor, self.scale, self.shape = executor, scale, shape
        self.tile, self.batch = shape.tile, shape.batch
        self.static_shape = True  # the staging buffers, CUDA graphs and TensorRT plans have one shape
        self.slots = [
            _Slot(
                stream=torch.cuda.Stream(device),
                host_in=torch.empty(shape.input_shape(), dtype=torch.uint8).pin_memory(),
                device_in=torch.empty(shape.input_shape(), dtype=torch.uint8, device=device),
                device_out=torch.empty(shape.output_shape(scale), dtype=torch.uint8, device=device),
                host_out=torch.empty(shape.output_shape(scale), dtype=torch.uint8).pin_memory(),
                done=torch.cuda.Event(),
            )
            for _ in range(streams)
        ]
        executor.bind([s.device_in for s in self.slots], [s.device_out for s in self.slots], [s.stream for s in self.slots])
        self.profile = profile
        self.events: list[tuple[torch.cuda.Event, ...]] = []

    def run(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        in_flight: deque[_Slot] = deque()
        for index, batch in enumerate(batches):
            number = index % len(self.slots)
            slot = self.slots[number]
            if len(in_flight) == len(self.slots):
                yield self._collect(in_flight.popleft())  # frees the slot we are about to reuse
            self._stage(batch, slot)
            self._enqueue(number, slot)
            in_flight.append(slot)
        while in_flight:
            yield self._collect(in_flight.popleft())

    def _stage(self, batch: torch.Tensor, slot: _Slot) -> None:
        """float32 NCHW [0,1] on the host -> uint8 in the slot's pinned buffer (CPU work, overlaps the GPU)."""
        pixels = (batch.clamp(0, 1) * 255).round_().to(torch.uint8)
        slot.host_in.copy_(pixels.permute(0, 2, 3, 1) if self.shape.layout == "nhwc" else pixels)

    def _enqueue(self, number: int, slot: _Slot) -> None:
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if self.profile else []
        with torch.cuda.stream(slot.stream):
            if marks:
                marks[0].record(slot.stream)
            slot.device_in.copy_(slot.host_in, non_blocking=True)
            if marks:
                marks[1].record(slot.stream)
            self.executor.launch(number, slot.stream)
            if marks:
                marks[2].record(slot.stream)
            slot.host_out.copy_(slot.device_out, non_blocking=True)
            if marks:
                marks[3].record(slot.stream)
            slot.done.record(slot.stream)
        if marks:
            self.events.append(tuple(marks))

    def _collect(self, slot: _Slot) -> torch.Tensor:
        slot.done.synchronize()
        pixels = slot.host_out.permute(0, 3, 1, 2) if self.shape.layout == "nhwc" else slot.host_out
        return pixels.float() / 255  # a new tensor: the pinned buffer is free for the next batch

    def stage_times(self) -> StageTimes:
        """Where each batch's copies and compute ran, relative to the first event (profile=True)."""
        torch.cuda.synchronize()
        origin = self.events[0][0]
        spans: list[list[tuple[float, float]]] = [[], [], []]
        for marks in self.events:
            for stage in range(3):
                spans[stage].append((origin.elapsed_time(marks[stage]), origin.elapsed_time(marks[stage + 1])))
        return StageTimes(*spans)


def overlap_ms(copies: list[tuple[float, float]], compute: list[tuple[float, float]]) -> float:
    """Total time during which some copy ran while some compute ran (the proof of overlap)."""
    total = 0.0
    for c0, c1 in copies:
        for k0, k1 in compute:
            total += max(0.0, min(c1, k1) - max(c0, k0))
    return total
