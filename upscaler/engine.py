"""The inference engine: one interface that every backend (torch, TensorRT) slots in behind.

A backend only ever sees batches of fixed-shape tiles; everything about images (tiling,
blending, grayscale, alpha, output scale) lives here, once, for all backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .images import Picture
from .tiling import Stitcher, TileGrid, pad_to_grid

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 24
DEFAULT_BATCH = 4
_LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 weights, as Pillow converts RGB to L


class Backend(Protocol):
    """Runs the model on a batch of `batch` tiles of `tile` x `tile` pixels."""

    scale: int
    tile: int
    batch: int

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        """(batch, 3, tile, tile) float32 CPU in [0,1] -> (batch, 3, tile*scale, tile*scale) float32 CPU."""
        ...


class TorchBackend:
    """Eager torch on CPU or CUDA, fp32/fp16/bf16, channels_last."""

    def __init__(
        self, module: nn.Module, scale: int, device: torch.device, dtype: torch.dtype, tile: int, batch: int
    ) -> None:
        self.scale, self.tile, self.batch = scale, tile, batch
        self.device, self.dtype = device, dtype
        self.module = module.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)

    @torch.inference_mode()
    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        x = tiles.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return self.module(x).float().cpu()


class TiledUpscaler:
    """Splits an image into fixed-shape overlapping tiles, batches them, blends the results."""

    def __init__(self, backend: Backend, overlap: int = DEFAULT_OVERLAP) -> None:
        self.backend, self.overlap = backend, overlap
        TileGrid.for_image(backend.tile, backend.tile, backend.tile, overlap)  # validates overlap

    @property
    def scale(self) -> int:
        return self.backend.scale

    def upscale(self, image: torch.Tensor) -> torch.Tensor:
        """CHW float32 RGB in [0,1] -> CHW float32 RGB at `scale` times the size (unclamped)."""
        _, height, width = image.shape
        b = self.backend
        grid = TileGrid.for_image(height, width, b.tile, self.overlap)
        padded = pad_to_grid(image, grid)
        stitcher = Stitcher(grid, b.scale, channels=3)
        for origins, batch in self._batches(padded, grid):
            for origin, tile in zip(origins, b.infer(batch)):
                stitcher.add(origin, tile)
        return stitcher.result(height, width)

    def _batches(self, image: torch.Tensor, grid: TileGrid) -> Iterator[tuple[list[tuple[int, int]], torch.Tensor]]:
        """Full batches only: a short last batch is filled up, because engines have a static batch."""
        b, t = self.backend, self.backend.tile
        origins = grid.origins
        for start in range(0, len(origins), b.batch):
            chunk = origins[start : start + b.batch]
            batch = torch.zeros(b.batch, 3, t, t)
            for i, (y, x) in enumerate(chunk):
                batch[i] = image[:, y : y + t, x : x + t]
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
