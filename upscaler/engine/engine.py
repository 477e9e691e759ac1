"""The engine that commands use: a model opened once under a run plan, pictures and frames through it.

On CUDA, frames are kept in flight on `streams` CUDA streams: while frame k computes on its
stream, frame k+1 is uploaded on the next and frame k-1 downloaded on the previous, so the
GPU never waits for the host. Each frame crosses the bus once each way, as integers, through
pinned host memory. On the CPU the same code runs one frame at a time.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from upscaler.engine.backends import open_runner
from upscaler.engine.devices import keep_freed_heap
from upscaler.engine.frames import Frame, FrameUpscaler, ModelRunner
from upscaler.engine.plan import CPU_BUDGET_CAP, RunPlan, TilePlan, plan_run
from upscaler.engine.settings import RunSettings
from upscaler.io.images import Picture, pillow_encodes
from upscaler.models.weights import LoadedModel, load_model

# Decoded frames may be read-only views (Pillow, PyAV); the engine only ever reads them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass
class Engine:
    model: LoadedModel
    plan: RunPlan
    frames: FrameUpscaler
    _streams: list[torch.cuda.Stream] = field(default_factory=list)

    @property
    def description(self) -> str:
        return self.plan.describe()

    @property
    def scale(self) -> int:
        """The output scale (the model's unless --scale said otherwise)."""
        return self.plan.out_scale

    def upscale(self, picture: Picture, out_format: str = "PNG") -> Picture:
        """A decoded picture (native integers) -> the upscaled picture, same depth and metadata.

        `out_format` is the file format the result is for: its pixels come laid out as that
        format's encoder reads them, so the writer copies nothing.
        """
        color, alpha = _to_device(picture.color, self.plan.device), None
        if picture.alpha is not None:
            alpha = _to_device(picture.alpha, self.plan.device)
        out = self.frames(Frame(color, alpha), rgbx=pillow_encodes(out_format))
        return replace(picture, color=_to_host(out.color), alpha=None if out.alpha is None else _to_host(out.alpha))

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Equal-sized RGB (or gray) integer frames -> upscaled frames, in order, pipelined on CUDA."""
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            return
        tiles: TilePlan = self.plan.tiles.for_frames()
        if self.plan.device.type != "cuda":
            upscale = self._frames_with(tiles, self.frames.runner)
            yield upscale(Frame(torch.from_numpy(first))).color.numpy()
            for frame in frames:
                yield upscale(Frame(torch.from_numpy(frame))).color.numpy()
            return
        upscale = self._frames_with(tiles, replace(self.frames.runner, deferred=True))
        pending: deque[_InFlight] = deque()
        for index, frame in enumerate(_chain(first, frames)):
            if len(pending) == self.plan.streams:
                yield self._finish(pending.popleft(), tiles)
            pending.append(self._launch(upscale, frame, index % self.plan.streams))
        while pending:
            yield self._finish(pending.popleft(), tiles)

    def _frames_with(self, tiles: TilePlan, runner: ModelRunner) -> FrameUpscaler:
        return FrameUpscaler(runner, self.frames.scale, self.frames.out_scale, self.frames.batch, tiles.static_shape,
                             tiles.grid)

    def _launch(self, upscale: FrameUpscaler, frame: np.ndarray, slot: int) -> _InFlight:
        """Queue one frame (upload, tiles, check, download) on its slot's stream; nothing here waits for the GPU."""
        if not self._streams:
            self._streams = [torch.cuda.Stream(self.plan.device) for _ in range(self.plan.streams)]
        stream = self._streams[slot]
        host_in = torch.from_numpy(frame).pin_memory()
        with torch.cuda.stream(stream):
            out = upscale(Frame(host_in.to(self.plan.device, non_blocking=True))).color
            host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host_out.copy_(out, non_blocking=True)
            verdict = upscale.runner.take_verdict()
            suspect = torch.zeros((), dtype=torch.bool, pin_memory=True)
            if verdict is not None:
                suspect.copy_(verdict, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return _InFlight(frame, host_out, suspect, done)

    def _finish(self, flight: _InFlight, tiles: TilePlan) -> np.ndarray:
        """Wait for a frame; one that failed the reduced-precision check is redone with tiles checked one by one."""
        flight.done.synchronize()
        if not bool(flight.suspect):
            return flight.host.numpy()
        redo = self._frames_with(tiles, self.frames.runner.checked())
        return redo(Frame(torch.from_numpy(flight.frame).to(self.plan.device))).color.cpu().numpy()


@dataclass
class _InFlight:
    frame: np.ndarray
    host: torch.Tensor  # pinned, filled by the download
    suspect: torch.Tensor  # pinned bool: the device's verdict on the check
    done: torch.cuda.Event


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _to_device(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _to_host(pixels: torch.Tensor) -> np.ndarray:
    return pixels.cpu().numpy() if pixels.device.type != "cpu" else pixels.numpy()


def open_engine(settings: RunSettings, model: LoadedModel | None = None) -> Engine:
    """Load the model (unless given), plan the run and open its backend; ValueError on bad settings."""
    model = model or load_model(settings.model)
    plan = plan_run(settings, model)
    if plan.device.type == "cpu":
        keep_freed_heap(CPU_BUDGET_CAP)  # as much as one image's working set may take
    runner = open_runner(plan, model)
    frames = FrameUpscaler(runner, plan.scale, plan.out_scale, plan.batch, plan.tiles.static_shape, plan.tiles.grid)
    return Engine(model, plan, frames)
