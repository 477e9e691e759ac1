"""Latency and throughput of the whole picture path (tiling, backend, stitching) on one frame size."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from upscaler.engine.engine import Engine


@dataclass
class BenchResult:
    frames: int
    seconds: float
    latencies_ms: list[float]
    input_pixels: int  # per frame
    macs_per_pixel: float

    @property
    def fps(self) -> float:
        return self.frames / self.seconds

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50))

    @property
    def p95_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 95))

    @property
    def useful_gflops(self) -> float:
        """Model work on the real pixels only (not on tile overlaps or padding) per second."""
        return self.input_pixels * self.macs_per_pixel * 2 * self.fps / 1e9


def frame_from_photo(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """A real photo resized to the benchmark frame size (content matters for fp16 checks, not speed)."""
    return np.asarray(Image.fromarray(photo).resize((width, height), Image.Resampling.BICUBIC))


def run_bench(engine: Engine, frame: np.ndarray, frames: int, warmup: int, macs_per_pixel: float) -> BenchResult:
    """Frames streamed through the engine; latency is the time between consecutive finished frames."""
    for _ in engine.stream([frame] * warmup):
        pass
    latencies = []
    start = last = time.perf_counter()
    for _ in engine.stream([frame] * frames):
        now = time.perf_counter()
        latencies.append((now - last) * 1000)
        last = now
    seconds = time.perf_counter() - start
    return BenchResult(frames, seconds, latencies, frame.shape[0] * frame.shape[1], macs_per_pixel)
