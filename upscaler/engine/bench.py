"""Latency and throughput of the whole picture path (tiling, backend, stitching) on one frame size."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from upscaler.engine.upscale import PictureUpscaler
from upscaler.io.images import Picture


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


def frame_from_photo(photo: np.ndarray, width: int, height: int) -> Picture:
    """A real photo resized to the benchmark frame size (content matters for fp16 checks, not speed)."""
    resized = Image.fromarray(photo).resize((width, height), Image.Resampling.BICUBIC)
    return Picture(np.asarray(resized, dtype=np.float32) / 255, None, 8, "PNG")


def run_bench(upscale: PictureUpscaler, frame: Picture, frames: int, warmup: int, macs_per_pixel: float) -> BenchResult:
    for _ in range(warmup):
        upscale(frame)
    latencies = []
    start = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        upscale(frame)
        latencies.append((time.perf_counter() - t0) * 1000)
    seconds = time.perf_counter() - start
    height, width = frame.size
    return BenchResult(frames, seconds, latencies, height * width, macs_per_pixel)
