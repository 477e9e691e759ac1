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
from upscaler.engine.frames import Frame, FrameUpscaler
from upscaler.engine.plan import RunPlan, TilePlan, plan_run
from upscaler.engine.settings import RunSettings
from upscaler.io.images import Picture
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

    def upscale(self, picture: Picture) -> Picture:
        """A decoded picture (native integers) -> the upscaled picture, same depth and metadata."""
        color, alpha = _to_device(picture.color, self.plan.device), None
        if picture.alpha is not None:
            alpha = _to_device(picture.alpha, self.plan.device)
        out = self.frames(Frame(color, alpha), rgbx=True)
        return replace(picture, color=_to_host(out.color), alpha=None if out.alpha is None else _to_host(out.alpha))

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Equal-sized RGB (or gray) integer frames -> upscaled frames, in order, pipelined on CUDA."""
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            return
        upscale = self._for_frames(first.shape[0], first.shape[1])
        pending: deque[tuple[torch.Tensor, torch.cuda.Event | None]] = deque()
        depth = self.plan.streams if self.plan.device.type == "cuda" else 1
        for index, frame in enumerate(_chain(first, frames)):
            if len(pending) == depth:
                yield _finish(*pending.popleft())
            pending.append(self._launch(upscale, frame, index % depth))
        while pending:
            yield _finish(*pending.popleft())

    def _for_frames(self, height: int, width: int) -> FrameUpscaler:
        tiles: TilePlan = self.plan.tiles.for_frames()
        if tiles == self.plan.tiles:
            return self.frames
        return FrameUpscaler(self.frames.runner, self.frames.scale, self.frames.out_scale, self.frames.batch,
                             tiles.static_shape, tiles.grid)

    def _launch(self, upscale: FrameUpscaler, frame: np.ndarray, slot: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Queue one frame (upload, tiles, download) on its slot's stream; returns the host tensor and its event."""
        if self.plan.device.type != "cuda":
            return upscale(Frame(torch.from_numpy(frame))).color, None
        if not self._streams:
            self._streams = [torch.cuda.Stream(self.plan.device) for _ in range(self.plan.streams)]
        stream = self._streams[slot]
        host_in = torch.from_numpy(frame).pin_memory()
        with torch.cuda.stream(stream):
            out = upscale(Frame(host_in.to(self.plan.device, non_blocking=True))).color
            host_out = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host_out.copy_(out, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return host_out, done


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def _finish(host: torch.Tensor, done: torch.cuda.Event | None) -> np.ndarray:
    if done is not None:
        done.synchronize()
    return host.numpy()


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
    runner = open_runner(plan, model)
    frames = FrameUpscaler(runner, plan.scale, plan.out_scale, plan.batch, plan.tiles.static_shape, plan.tiles.grid)
    return Engine(model, plan, frames)
