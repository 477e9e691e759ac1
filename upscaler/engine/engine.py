"""The engine that commands use: a model opened once under a run plan, pictures and frames through it.

On CUDA, frames and pictures are kept in flight on `streams` CUDA streams, across picture
boundaries: while frame k computes on its stream, frame k+1 is uploaded on the next and frame
k-1 downloaded on the previous, so the GPU never waits for the host. Each frame crosses the bus
once each way, as integers, through pinned host memory. On the CPU the same code runs one
frame at a time.
"""

from __future__ import annotations

import functools
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from upscaler.engine.backends import open_runner
from upscaler.engine.devices import keep_freed_heap
from upscaler.engine.frames import Frame, FrameUpscaler, split_planes
from upscaler.engine.plan import CPU_BUDGET_CAP, RunPlan, TilePlan, plan_run
from upscaler.engine.settings import RunSettings
from upscaler.io.images import Picture, pillow_encodes
from upscaler.models.weights import LoadedModel, load_model

# Bump when a change to the code makes the same settings give other pixels: old work folders then start afresh.
IDENTITY_VERSION = 1

# Decoded frames may be read-only views (Pillow, PyAV); the engine only ever reads them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


@dataclass
class Engine:
    model: LoadedModel
    plan: RunPlan
    frames: FrameUpscaler  # pictures, checking every batch as it comes
    _streams: list[torch.cuda.Stream] = field(default_factory=list)
    _launched: int = 0

    @property
    def description(self) -> str:
        """For people (summaries, logs): reworded freely, never a key."""
        return self.plan.describe()

    def identity(self, frame: tuple[int, int] | None = None) -> dict[str, Any]:
        """Everything that decides an output pixel, as a stable, versioned mapping: what resume and caches key on.

        The model by its content digest (not its path or mtime), its architecture, the scales,
        device kind, precision, backend and its build settings, torch.compile, the batch and the
        tiles. For frames of one `frame` size (height, width) the grid they are cut into stands in
        for the memory budget that chose it, so a budget that moves with free memory but cuts the
        same tiles keeps the key. `--streams` and `--cuda-graphs` change no pixel and are not in it.
        """
        plan, tiles = self.plan, self.plan.tiles
        identity: dict[str, Any] = {
            "version": IDENTITY_VERSION,
            "model_sha256": self.model.digest,
            "arch": self.model.descriptor.arch,
            "arch_params": self.model.descriptor.arch_params,
            "scale": plan.scale,
            "out_scale": plan.out_scale,
            "device": plan.device.type,
            "precision": plan.precision,
            "backend": plan.backend,
            "build": _build_settings(plan),
            "compile": plan.compile,
            "batch": plan.batch,
            "tile": tiles.tile,
            "overlap": tiles.overlap,
        }
        if frame is None:
            identity |= {"tile_limits": [tiles.max_tile_pixels, tiles.max_band_pixels, tiles.multiple], "static_shape": tiles.static_shape}
        else:
            grid = tiles.for_frames().grid(*frame)
            identity["grid"] = [grid.tile_h, grid.tile_w, list(grid.ys), list(grid.xs)]
        return identity

    @property
    def scale(self) -> int:
        """The output scale (the model's unless --scale said otherwise)."""
        return self.plan.out_scale

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def depth(self) -> int:
        """How many launched pictures a caller should leave uncollected after each launch.

        On CUDA one per stream besides the one being collected, so the device always has queued
        work while the host waits for the oldest; on the CPU a launch does all the work at once.
        """
        return self.plan.streams - 1 if self.plan.device.type == "cuda" else 0

    def upscale(self, picture: Picture, out_format: str = "PNG") -> Picture:
        """A decoded picture (native integers) -> the upscaled picture, same depth and metadata.

        `out_format` is the file format the result is for: its pixels come laid out as that
        format's encoder reads them, so the writer copies nothing.
        """
        return self.launch(picture, out_format)()

    def launch(self, picture: Picture, out_format: str = "PNG") -> Callable[[], Picture]:
        """Start upscaling a picture (see `upscale`); the call returned waits for it and gives the result.

        On CUDA nothing here waits for the device, so pictures stay in flight across picture
        boundaries: the caller decodes, launches the next and encodes the previous meanwhile.
        """
        collect = self._launch(self._pictures, picture.color, picture.alpha, pillow_encodes(out_format))

        def result() -> Picture:
            color, alpha = collect()
            return replace(picture, color=color, alpha=alpha)

        return result

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Equal-sized RGB (or gray) integer frames -> upscaled frames, in order, pipelined on CUDA."""
        upscaler = self._upscaler(self.plan.tiles.for_frames())
        pending: deque[Callable[[], tuple[np.ndarray, np.ndarray | None]]] = deque()
        for frame in frames:
            pending.append(self._launch(upscaler, frame, None, rgbx=False))
            while len(pending) > self.depth:
                yield pending.popleft()()[0]
        while pending:
            yield pending.popleft()()[0]

    @functools.cached_property
    def _pictures(self) -> FrameUpscaler:
        return self._upscaler(self.plan.tiles)

    def _upscaler(self, tiles: TilePlan) -> FrameUpscaler:
        """The upscaler for a tile plan; on CUDA its check's verdict waits on the device (see ModelRunner)."""
        runner = self.frames.runner
        if self.plan.device.type == "cuda":
            runner = replace(runner, deferred=True)
        return replace(self.frames, runner=runner, static_batch=tiles.static_shape, plan_grid=tiles.grid)

    def _launch(self, upscaler: FrameUpscaler, color: np.ndarray, alpha: np.ndarray | None,
                rgbx: bool) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
        """Queue one frame (upload, tiles, check, download) on the next CUDA stream, or run it on the CPU."""
        gray, has_alpha = color.ndim == 2, alpha is not None
        if self.plan.device.type != "cuda":
            planes = upscaler.planes(self._frame(color, alpha), rgbx)
            return lambda: split_planes(planes.numpy(), gray, has_alpha)
        if not self._streams:
            self._streams = [torch.cuda.Stream(self.plan.device) for _ in range(self.plan.streams)]
        stream = self._streams[self._launched % len(self._streams)]
        self._launched += 1
        with torch.cuda.stream(stream):
            planes = upscaler.planes(self._frame(color, alpha), rgbx)
            host = torch.empty(planes.shape, dtype=planes.dtype, pin_memory=True)
            host.copy_(planes, non_blocking=True)
            verdict = upscaler.runner.take_verdict()
            suspect = torch.zeros((), dtype=torch.bool, pin_memory=True)
            if verdict is not None:
                suspect.copy_(verdict, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)

        def collect() -> tuple[np.ndarray, np.ndarray | None]:
            """Wait for the frame; one that failed the reduced-precision check is redone with tiles checked one by one."""
            done.synchronize()
            if not bool(suspect):
                return split_planes(host.numpy(), gray, has_alpha)
            with torch.cuda.stream(stream):  # a CUDA graph cannot be captured on the default stream
                redo = upscaler.checked().planes(self._frame(color, alpha), rgbx)
                return split_planes(redo.cpu().numpy(), gray, has_alpha)

        return collect

    def _frame(self, color: np.ndarray, alpha: np.ndarray | None) -> Frame:
        """Host integers as a frame on the device: on CUDA through pinned memory, queued on the current stream."""

        def place(pixels: np.ndarray) -> torch.Tensor:
            tensor = torch.from_numpy(np.ascontiguousarray(pixels))
            if self.plan.device.type != "cuda":
                return tensor
            return tensor.pin_memory().to(self.plan.device, non_blocking=True)

        return Frame(place(color), None if alpha is None else place(alpha))


def _build_settings(plan: RunPlan) -> dict[str, Any]:
    """The TensorRT builder's settings and version for a TensorRT plan; nothing for torch, which builds nothing."""
    if plan.backend != "tensorrt":
        return {}
    from upscaler.compile.trt.build import tensorrt_version
    from upscaler.engine.tensorrt import runtime_request

    return {"tensorrt": tensorrt_version(), **runtime_request(plan).build_settings()}


def open_engine(settings: RunSettings, model: LoadedModel | None = None) -> Engine:
    """Load the model (unless given), plan the run and open its backend; ValueError on bad settings."""
    model = model or load_model(settings.model)
    plan = plan_run(settings, model)
    if plan.device.type == "cpu":
        keep_freed_heap(CPU_BUDGET_CAP)  # as much as one image's working set may take
    runner = open_runner(plan, model)
    frames = FrameUpscaler(runner, plan.scale, plan.out_scale, plan.batch, plan.tiles.static_shape, plan.tiles.grid)
    return Engine(model, plan, frames)
