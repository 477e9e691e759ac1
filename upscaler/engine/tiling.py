"""Overlapped tiling at ONE fixed tile shape, so a static-shape engine can serve every tile.

Backends with dynamic shapes (eager torch) get tiles fitted to small images instead of padding.

Tiles step by `tile - overlap`; the last tile on each axis is shifted inward to end at the
image edge rather than padded, so every tile is full of real pixels. Images smaller than a
tile are padded by reflection. Overlaps are blended with linear ramps that give the
outermost quarter of the overlap (the pixels the network saw with zero padding) no weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis of `length >= tile` pixels."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one (padded) image lie; every tile is tile_h x tile_w."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int

    @classmethod
    def for_image(cls, height: int, width: int, tile: int, overlap: int, fit: bool = False) -> TileGrid:
        """Square `tile` tiles (static engines); with `fit`, an axis shorter than a tile is one tile of its length."""
        if not 0 <= overlap < tile // 2:
            raise ValueError(f"overlap {overlap} must be at least 0 and under half the tile ({tile})")
        if fit:
            return cls(height, width, min(tile, height), min(tile, width), overlap)
        return cls(max(height, tile), max(width, tile), tile, tile, overlap)

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [
            (y, x)
            for y in axis_starts(self.height, self.tile_h, self.overlap)
            for x in axis_starts(self.width, self.tile_w, self.overlap)
        ]


def pad_to_grid(image: torch.Tensor, grid: TileGrid) -> torch.Tensor:
    """Reflect-pad a CHW image smaller than a tile up to the tile on that axis."""
    pad_h, pad_w = grid.height - image.shape[1], grid.width - image.shape[2]
    if pad_h == 0 and pad_w == 0:
        return image
    # Reflection needs the pad to be smaller than the image; a sliver of an image replicates.
    mode = "reflect" if pad_h < image.shape[1] and pad_w < image.shape[2] else "replicate"
    return F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0]


@lru_cache(maxsize=64)
def _ramp(length: int, overlap: int, rise_start: bool, rise_end: bool) -> torch.Tensor:
    """1-D weights: 0 over a quarter of the overlap at an inner edge, linear to 1 over the rest."""
    weights = torch.ones(length)
    dead = overlap // 4
    live = max(overlap - 2 * dead, 1)
    ramp = ((torch.arange(overlap, dtype=torch.float32) - dead + 0.5) / live).clamp(0, 1)
    if overlap and rise_start:
        weights[:overlap] = ramp
    if overlap and rise_end:
        weights[length - overlap :] = torch.minimum(weights[length - overlap :], ramp.flip(0))
    return weights


class Stitcher:
    """Accumulates weighted output tiles into one image and normalises at the end."""

    def __init__(self, grid: TileGrid, scale: int, channels: int) -> None:
        self.grid, self.scale = grid, scale
        self.canvas = torch.zeros(channels, grid.height * scale, grid.width * scale)
        self.weight = torch.zeros(1, grid.height * scale, grid.width * scale)

    def add(self, origin: tuple[int, int], tile: torch.Tensor) -> None:
        g, s = self.grid, self.scale
        y, x = origin
        height, width, overlap = g.tile_h * s, g.tile_w * s, g.overlap * s
        wy = _ramp(height, overlap, y > 0, y + g.tile_h < g.height)
        wx = _ramp(width, overlap, x > 0, x + g.tile_w < g.width)
        window = wy[:, None] * wx[None, :]
        region = (slice(None), slice(y * s, y * s + height), slice(x * s, x * s + width))
        self.canvas[region] += tile * window
        self.weight[region] += window

    def result(self, height: int, width: int) -> torch.Tensor:
        s = self.scale
        return (self.canvas / self.weight.clamp_min(1e-8))[:, : height * s, : width * s]
