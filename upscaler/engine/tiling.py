"""Where tiles lie and how their outputs blend: the tile planner and the blend windows.

Every tile of a grid has one shape, so a static-shape engine can serve all of them. Two
planners make grids:

- `even_grid` (``--tile auto``): the whole image when it fits the memory budget, otherwise the
  fewest equal tiles that fit, spread evenly so little is computed twice;
- `fixed_grid` (``--tile N``): square N-pixel tiles stepping by N - overlap, the last one
  shifted inward to end at the image edge.

Overlaps are blended with separable windows: along each axis a tile's weight ramps linearly
across the overlap with each neighbour, giving the outer quarter of the overlap (pixels the
network saw near a zero-padded edge) no weight, and the weights of all tiles are normalised to
sum to exactly one at every pixel. A tile's window is the product of its two axes' weights, so
it sums to one too and the blended image needs no separate normalisation pass. Only the 1-D
weights are kept: a stored 2-D window per tile would grow with the image.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache

import torch


def axis_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, ...]:
    """Fixed-step origins along one axis of `length >= tile` pixels, the last shifted inward.

    With `multiple` (models with pixel-unshuffle inputs), `length` and `tile` are multiples of
    it and so is every origin: the step shrinks to the multiple below `tile - overlap`.
    """
    if length <= tile:
        return (0,)
    step = max((tile - overlap) // multiple * multiple, multiple)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return tuple(starts)


def even_starts(length: int, tile: int, count: int, multiple: int = 1) -> tuple[int, ...]:
    """`count` origins spread evenly (on multiples of `multiple`) so tiles of `tile` pixels cover `length`."""
    if count == 1:
        return (0,)
    return tuple(round(i * (length - tile) / (count - 1) / multiple) * multiple for i in range(count))


@dataclass(frozen=True)
class TileGrid:
    """Tile origins over an image of `height` x `width` pixels (already padded to fit the tiles)."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    overlap: int

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    @property
    def whole(self) -> bool:
        """One tile covering the image: no blending at all."""
        return len(self.ys) == 1 and len(self.xs) == 1

    @property
    def computed_pixels(self) -> int:
        return len(self.ys) * len(self.xs) * self.tile_h * self.tile_w


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def fixed_grid(height: int, width: int, tile: int, overlap: int, fit: bool, multiple: int = 1) -> TileGrid:
    """Square `tile` tiles; with `fit` (dynamic shapes) an axis shorter than a tile is one tile of its length.

    Without `fit` an image smaller than a tile is padded up to it (see `padded_size`).
    """
    check_overlap(tile, overlap)
    tile = _round_up(tile, multiple)
    tile_h = min(tile, _round_up(height, multiple)) if fit else tile
    tile_w = min(tile, _round_up(width, multiple)) if fit else tile
    full_h, full_w = max(_round_up(height, multiple), tile_h), max(_round_up(width, multiple), tile_w)
    return TileGrid(full_h, full_w, tile_h, tile_w, axis_starts(full_h, tile_h, overlap, multiple),
                    axis_starts(full_w, tile_w, overlap, multiple), overlap)


def even_grid(height: int, width: int, max_tile_pixels: int, overlap: int, multiple: int = 1,
              max_band_pixels: int | None = None) -> TileGrid:
    """The fewest, most even equal tiles of at most `max_tile_pixels` that cover the image.

    `max_band_pixels` bounds tile height x image width (the blend band the stitcher keeps).
    """
    full_h, full_w = _round_up(height, multiple), _round_up(width, multiple)
    best: tuple[int, int, int, int, int] | None = None  # computed pixels, rows, cols, tile_h, tile_w
    for rows in range(1, 65):
        tile_h = _even_tile(full_h, rows, overlap, multiple)
        if rows > 1 and (tile_h <= 2 * overlap or tile_h > full_h):
            break
        if max_band_pixels is not None and tile_h * full_w > max_band_pixels and rows < 64:
            continue
        for cols in range(1, 65):
            tile_w = _even_tile(full_w, cols, overlap, multiple)
            if cols > 1 and (tile_w <= 2 * overlap or tile_w > full_w):
                break
            if tile_h * tile_w <= max_tile_pixels:
                candidate = (rows * cols * tile_h * tile_w, rows, cols, tile_h, tile_w)
                best = candidate if best is None or candidate < best else best
                break  # more columns only compute more
    if best is None:
        raise ValueError(f"a {width}x{height} image cannot be split into tiles of at most {max_tile_pixels} pixels "
                         f"with overlap {overlap}; raise --memory-budget or lower --overlap")
    _, rows, cols, tile_h, tile_w = best
    return TileGrid(full_h, full_w, tile_h, tile_w, even_starts(full_h, tile_h, rows, multiple),
                    even_starts(full_w, tile_w, cols, multiple), overlap)


def _even_tile(length: int, count: int, overlap: int, multiple: int) -> int:
    """The smallest tile (a multiple of `multiple`) whose `count` even origins overlap by at least `overlap`."""
    tile = _round_up(math.ceil((length + (count - 1) * overlap) / count), multiple)
    while count > 1 and tile < length and max(b - a for a, b in itertools.pairwise(even_starts(length, tile, count, multiple))) > tile - overlap:
        tile += multiple  # origins rounded to multiples can open a gap wider than the step
    return tile


def check_overlap(tile: int, overlap: int) -> None:
    if not 0 <= overlap < tile // 2:
        raise ValueError(f"overlap {overlap} must be at least 0 and under half the tile ({tile})")


def _ramp(length: int) -> torch.Tensor:
    """Rising weights across an overlap of `length` pixels: 0 over the first quarter, 1 over the last."""
    dead = length // 4
    live = max(length - 2 * dead, 1)
    return ((torch.arange(length, dtype=torch.float64) - dead + 0.5) / live).clamp(0, 1)


@lru_cache(maxsize=32)
def axis_weights(starts: tuple[int, ...], tile: int, scale: int) -> tuple[torch.Tensor, ...]:
    """Per-tile weights along one axis at output resolution; at every pixel they sum to one."""
    length = (starts[-1] + tile) * scale
    raw = []
    for i, start in enumerate(starts):
        w = torch.ones(tile * scale, dtype=torch.float64)
        if i > 0:  # rise across the overlap with the previous tile
            shared = (starts[i - 1] + tile - start) * scale
            if shared > 0:
                w[:shared] = torch.minimum(w[:shared], _ramp(shared))
        if i + 1 < len(starts):  # fall across the overlap with the next tile
            shared = (start + tile - starts[i + 1]) * scale
            if shared > 0:
                w[tile * scale - shared :] = torch.minimum(w[tile * scale - shared :], 1 - _ramp(shared))
        raw.append(w)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(starts, raw):
        total[start * scale : start * scale + tile * scale] += w
    if float(total.min()) <= 0:
        raise ValueError(f"tiles at {starts} of {tile} px leave pixels with no weight")
    return tuple((w / total[s * scale : s * scale + tile * scale]).float() for s, w in zip(starts, raw))


_device_weights: dict[tuple[object, ...], tuple[torch.Tensor, ...]] = {}


def device_axis_weights(starts: tuple[int, ...], tile: int, scale: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """`axis_weights` on `device`, cached (1-D, so a handful of kilobytes per grid)."""
    key = (starts, tile, scale, str(device))
    if key not in _device_weights:
        if len(_device_weights) > 64:
            _device_weights.clear()
        _device_weights[key] = tuple(w.to(device) for w in axis_weights(starts, tile, scale))
    return _device_weights[key]
