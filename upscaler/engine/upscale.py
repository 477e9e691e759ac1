"""The inference engine: one interface that every backend (torch, TensorRT) slots in behind.

A backend only ever sees batches of fixed-shape tiles; everything about images (tiling,
blending, grayscale, alpha, output scale) lives here, once, for all backends.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from upscaler.engine.devices import channels_last
from upscaler.engine.tiling import Stitcher, TileGrid, pad_to_grid
from upscaler.io.images import Picture

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 24
DEFAULT_BATCH = 4
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 weights, as Pillow converts RGB to L


log = logging.getLogger("upscaler")


class Backend(Protocol):
    """Runs the model on batches of `batch` tiles of `tile` x `tile` pixels.

    `run` yields results in order; a backend may keep several batches in flight (CUDA streams).
    Tiles are float32 NCHW on the host in [0,1]; results are (batch, 3, tile*scale, tile*scale).
    """

    scale: int
    tile: int
    batch: int
    static_shape: bool  # engines built for one shape need full (batch, 3, tile, tile) batches

    def run(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]: ...


class TorchBackend:
    """Eager torch on CPU or CUDA, fp32/fp16/bf16, channels_last; halves its batch on CUDA OOM."""

    def __init__(
        self, module: nn.Module, scale: int, device: torch.device, dtype: torch.dtype, tile: int, batch: int,
        static_shape: bool = False,
    ) -> None:
        self.scale, self.tile, self.batch, self.static_shape = scale, tile, batch, static_shape
        self.device, self.dtype = device, dtype
        self.module = channels_last(module.eval().to(device=device, dtype=dtype))
        self.chunk = batch  # largest sub-batch that fits in memory so far

    def run(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for batch in batches:
            yield self.infer(batch)

    @torch.inference_mode()
    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        if tiles.shape[0] > self.chunk:
            return torch.cat([self.infer(part) for part in tiles.split(self.chunk)])
        try:
            x = tiles.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
            return self.module(x).float().cpu()
        except torch.OutOfMemoryError:
            if tiles.shape[0] == 1:
                raise
            self.chunk = tiles.shape[0] // 2
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("out of memory at %d tiles per batch; retrying with %d", tiles.shape[0], self.chunk)
            return self.infer(tiles)


def unusable_tiles(inputs: torch.Tensor, outputs: torch.Tensor) -> list[int]:
    """Tiles whose reduced-precision output cannot be trusted: non-finite, or flat where the input is not."""
    finite = torch.isfinite(outputs).flatten(1).all(dim=1)
    collapsed = (outputs.nan_to_num().flatten(1).std(dim=1) < 0.5 / 255) & (inputs.flatten(1).std(dim=1) > 2 / 255)
    return (~finite | collapsed).nonzero().flatten().tolist()


class TiledUpscaler:
    """Splits an image into fixed-shape overlapping tiles, batches them, blends the results.

    With a `fallback` (fp32) backend, tiles that the main backend got wrong in reduced
    precision are recomputed by the fallback, with a warning.
    """

    def __init__(self, backend: Backend, overlap: int = DEFAULT_OVERLAP, fallback: Backend | None = None) -> None:
        self.backend, self.overlap, self.fallback = backend, overlap, fallback
        TileGrid.for_image(backend.tile, backend.tile, backend.tile, overlap)  # validates overlap

    @property
    def scale(self) -> int:
        return self.backend.scale

    def upscale(self, image: torch.Tensor) -> torch.Tensor:
        """CHW float32 RGB in [0,1] -> CHW float32 RGB at `scale` times the size (unclamped)."""
        _, height, width = image.shape
        b = self.backend
        grid = TileGrid.for_image(height, width, b.tile, self.overlap, fit=not b.static_shape)
        padded = pad_to_grid(image, grid)
        stitcher = Stitcher(grid, b.scale, channels=3)
        in_flight: deque[tuple[list[tuple[int, int]], torch.Tensor]] = deque()

        def batches() -> Iterator[torch.Tensor]:
            for origins, batch in self._batches(padded, grid):
                in_flight.append((origins, batch))
                yield batch

        for result in b.run(batches()):
            origins, batch = in_flight.popleft()
            result = self._repair(batch, result)
            for origin, tile in zip(origins, result):
                stitcher.add(origin, tile)
        return stitcher.result(height, width)

    def _repair(self, batch: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        if self.fallback is None:
            return result
        bad = unusable_tiles(batch, result)
        if not bad:
            return result
        log.warning("%d tile(s) overflowed or collapsed in reduced precision; recomputed in fp32", len(bad))
        redo = next(iter(self.fallback.run([batch])))
        result = result.clone()
        result[bad] = redo[bad]
        return result

    def _batches(self, image: torch.Tensor, grid: TileGrid) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """Batches of tiles; for a static-shape backend a short last batch is filled up with zeros."""
        b, th, tw = self.backend, grid.tile_h, grid.tile_w
        origins = grid.origins
        for start in range(0, len(origins), b.batch):
            chunk = origins[start : start + b.batch]
            batch = torch.zeros(b.batch if b.static_shape else len(chunk), 3, th, tw)
            for i, (y, x) in enumerate(chunk):
                batch[i] = image[:, y : y + th, x : x + tw]
            yield chunk, batch


@dataclass
class PictureUpscaler:
    """Upscales whole pictures: grayscale through RGB, alpha separately, any output scale."""

    upscaler: TiledUpscaler
    out_scale: int

    def __call__(self, picture: Picture) -> Picture:
        color = torch.from_numpy(picture.color)
        gray = color.ndim == 2
        rgb = color.expand(3, *color.shape) if gray else color.permute(2, 0, 1)
        if picture.alpha is None:
            out = self._run(rgb)
            alpha_out = None
        else:
            # Premultiplied: colour under transparent pixels cannot bleed into edges (no dark fringes).
            alpha = torch.from_numpy(picture.alpha)
            alpha_out = self._run(alpha.expand(3, *alpha.shape)).mean(dim=0).clamp(0, 1)
            out = self._run(rgb * alpha) / alpha_out.clamp_min(1 / 255)
        out = out.clamp(0, 1)
        color_out = torch.tensordot(_LUMA, out, dims=1) if gray else out.permute(1, 2, 0)
        return replace(
            picture,
            color=np.ascontiguousarray(color_out.numpy(), dtype=np.float32),
            alpha=None if alpha_out is None else np.ascontiguousarray(alpha_out.numpy(), dtype=np.float32),
        )

    def _run(self, rgb: torch.Tensor) -> torch.Tensor:
        out = self.upscaler.upscale(rgb.contiguous())
        if self.out_scale == self.upscaler.scale:
            return out
        height, width = rgb.shape[1] * self.out_scale, rgb.shape[2] * self.out_scale
        return F.interpolate(out[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)[0]
