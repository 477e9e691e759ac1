"""Tile planners and blend weights, value for value: every expected grid and weight worked out by hand."""

from __future__ import annotations

import pytest
import torch

from upscaler.engine import tiling
from upscaler.engine.tiling import (
    TileGrid,
    axis_starts,
    axis_weights,
    check_overlap,
    device_axis_weights,
    even_grid,
    even_starts,
    fixed_grid,
)


@pytest.mark.parametrize(("args", "starts"), [
    ((100, 32, 8), (0, 24, 48, 68)),  # step 24, the last shifted in to end at 100
    ((32, 32, 8), (0,)),
    ((33, 32, 8), (0, 1)),
    ((96, 32, 10, 4), (0, 20, 40, 60, 64)),  # step 22 rounded down to a multiple of 4
    ((64, 32, 30, 8), (0, 8, 16, 24, 32)),  # step 2 would be under the multiple: one multiple
])
def test_axis_starts(args: tuple[int, ...], starts: tuple[int, ...]) -> None:
    assert axis_starts(*args) == starts


@pytest.mark.parametrize(("args", "starts"), [
    ((100, 40, 1), (0,)),
    ((100, 40, 3), (0, 30, 60)),
    ((100, 40, 4), (0, 20, 40, 60)),
    ((100, 40, 3, 4), (0, 32, 60)),  # 30 / 4 = 7.5 rounds to 8 multiples
    ((101, 40, 3), (0, 30, 61)),  # by default any pixel: 30.5 rounds to even, 61 stays odd
])
def test_even_starts(args: tuple[int, ...], starts: tuple[int, ...]) -> None:
    assert even_starts(*args) == starts


def test_grid_properties() -> None:
    grid = TileGrid(30, 20, 16, 10, (0, 14), (0, 5, 10), 4)
    assert grid.origins == [(0, 0), (0, 5), (0, 10), (14, 0), (14, 5), (14, 10)]
    assert grid.computed_pixels == 6 * 16 * 10
    assert not grid.whole
    assert not TileGrid(16, 20, 16, 10, (0,), (0, 10), 4).whole
    assert not TileGrid(30, 10, 16, 10, (0, 14), (0,), 4).whole
    assert TileGrid(16, 10, 16, 10, (0,), (0,), 4).whole


@pytest.mark.parametrize(("args", "kwargs", "grid"), [
    ((50, 70, 32, 8, False), {}, TileGrid(50, 70, 32, 32, (0, 18), (0, 24, 38), 8)),
    # shorter than a tile: padded up to it (static shapes), or one tile of its own length (dynamic)
    ((20, 70, 32, 8, False), {}, TileGrid(32, 70, 32, 32, (0,), (0, 24, 38), 8)),
    ((20, 70, 32, 8, True), {}, TileGrid(20, 70, 20, 32, (0,), (0, 24, 38), 8)),
    ((70, 20, 32, 8, True), {}, TileGrid(70, 20, 32, 20, (0, 24, 38), (0,), 8)),
    # a pixel-unshuffle model: tile, sizes and origins on multiples of 4
    ((21, 70, 30, 4, True), {"multiple": 4}, TileGrid(24, 72, 24, 32, (0,), (0, 28, 40), 4)),
    ((21, 70, 30, 4, False), {"multiple": 4}, TileGrid(32, 72, 32, 32, (0,), (0, 28, 40), 4)),
])
def test_fixed_grid(args: tuple[int | bool, ...], kwargs: dict[str, int], grid: TileGrid) -> None:
    assert fixed_grid(*args, **kwargs) == grid  # type: ignore[arg-type]


def test_even_grid_picks_the_fewest_computed_pixels_then_the_fewest_rows() -> None:
    # 100x100 whole is 10000 pixels; 2 columns of 54 and 2 rows of 54 both compute 10800: rows win the tie-break
    assert even_grid(100, 100, 10_000, 8) == TileGrid(100, 100, 100, 100, (0,), (0,), 8)
    assert even_grid(100, 100, 9_999, 8) == TileGrid(100, 100, 100, 54, (0,), (0, 46), 8)
    # a band of 100 x 100 is over 6000: split the rows instead
    assert even_grid(100, 100, 9_999, 8, max_band_pixels=6_000) == TileGrid(100, 100, 54, 100, (0, 46), (0,), 8)
    assert even_grid(100, 100, 9_999, 8, max_band_pixels=10_000) == TileGrid(100, 100, 100, 54, (0,), (0, 46), 8)
    # three rows: ceil((100 + 2 * 8) / 3) = 39, origins 0, 30.5 -> 30 (even rounding), 61
    assert even_grid(100, 20, 39 * 20, 8) == TileGrid(100, 20, 39, 20, (0, 30, 61), (0,), 8)
    assert even_grid(50, 50, 1_000_000, 0, multiple=8) == TileGrid(56, 56, 56, 56, (0,), (0,), 0)
    assert even_grid(50, 50, 40 * 56, 4, multiple=8) == TileGrid(56, 56, 56, 32, (0,), (0, 24), 4)


def test_even_grid_minimises_computed_pixels() -> None:
    # two rows of 10 x 29 compute 580 pixels, two columns of 20 x 15 compute 600
    assert even_grid(20, 29, 300, 0) == TileGrid(20, 29, 10, 29, (0, 10), (0,), 0)


@pytest.mark.parametrize(("height", "width", "budget", "grid"), [
    # tiles may not shrink to twice the overlap (16 here): 19 rows of 40 in three tiles, not 16 in four
    (40, 20, 19 * 20, TileGrid(40, 20, 19, 20, (0, 10, 21), (0,), 8)),
    (20, 40, 20 * 19, TileGrid(20, 40, 20, 19, (0,), (0, 10, 21), 8)),
    (40, 20, 16 * 20, None),
    (20, 40, 20 * 16, None),
    (24, 20, 16 * 20, None),  # two rows would be exactly 16 high
    (20, 24, 20 * 16, None),
    # an image smaller than twice the overlap is still one whole tile
    (30, 30, 10**6, TileGrid(30, 30, 30, 30, (0,), (0,), 8)),
])
def test_even_grid_keeps_tiles_wider_than_twice_the_overlap(height: int, width: int, budget: int, grid: TileGrid | None) -> None:
    if grid is None:
        with pytest.raises(ValueError, match="cannot be split"):
            even_grid(height, width, budget, 8)
    else:
        assert even_grid(height, width, budget, 8) == grid


def test_even_grid_uses_at_most_64_rows_and_columns() -> None:
    assert even_grid(640, 1, 10, 0).ys == tuple(range(0, 640, 10))  # 64 rows of 10
    with pytest.raises(ValueError, match="cannot be split"):
        even_grid(650, 1, 10, 0)  # would need 65
    assert even_grid(1, 640, 10, 0).xs == tuple(range(0, 640, 10))
    with pytest.raises(ValueError, match="cannot be split"):
        even_grid(1, 650, 10, 0)
    # the band limit gives way at 64 rows rather than fail
    assert even_grid(640, 100, 10**6, 0, max_band_pixels=1) == TileGrid(640, 100, 10, 100, tuple(range(0, 640, 10)), (0,), 0)


def test_even_grid_refuses_what_cannot_be_split() -> None:
    with pytest.raises(ValueError, match=r"^a 100x90 image cannot be split into tiles of at most 100 pixels with overlap 8; raise --memory-budget or lower --overlap$"):
        even_grid(90, 100, 100, 8)


@pytest.mark.parametrize(("tile", "overlap", "ok"), [(32, 0, True), (32, 15, True), (32, 16, False), (33, 16, False),
                                                     (33, 15, True), (32, -1, False)])
def test_overlap_bounds(tile: int, overlap: int, ok: bool) -> None:
    if ok:
        check_overlap(tile, overlap)
    else:
        with pytest.raises(ValueError, match=f"^overlap {overlap} must be at least 0 and under half the tile \\({tile}\\)$"):
            check_overlap(tile, overlap)


def _values(weights: tuple[torch.Tensor, ...]) -> list[list[float]]:
    assert all(w.dtype == torch.float32 for w in weights)
    return [w.tolist() for w in weights]


def test_two_tiles_ramp_across_their_overlap() -> None:
    """Overlap 4: ramp(4) has a dead first quarter (1 px) and rises over 2 px: 0, .25, .75, 1."""
    assert _values(axis_weights((0, 4), 8, 1)) == [[1, 1, 1, 1, 1, 0.75, 0.25, 0], [0, 0.25, 0.75, 1, 1, 1, 1, 1]]
    # at scale 2 the overlap is 8 output pixels: dead 2, rising over 4 in steps of 1/4 from the pixel centres
    ramp = [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1]
    assert _values(axis_weights((0, 4), 8, 2)) == [[1] * 8 + [1 - r for r in ramp], ramp + [1] * 8]
    assert _values(axis_weights((0, 8), 8, 1)) == [[1.0] * 8, [1.0] * 8]  # touching tiles share nothing
    assert _values(axis_weights((0,), 5, 3)) == [[1.0] * 15]
    assert _values(axis_weights((0, 1), 2, 1)) == [[1, 0.5], [0.5, 1]]  # ramp(1) = 1/2


def test_three_tiles_over_one_pixel_are_normalised() -> None:
    """Tiles at 0, 2, 4 of 8: pixels 5 and 6 are covered by all three and their raw weights sum to 1.125."""
    raw = [[1, 1, 1, 0.875, 0.625, 0.375, 0.125, 0],
           [0, 0.125, 0.375, 0.625, 0.625, 0.375, 0.125, 0],
           [0, 0.125, 0.375, 0.625, 0.875, 1, 1, 1]]
    total = [0.0] * 12
    for start, w in zip((0, 2, 4), raw):
        for i, v in enumerate(w):
            total[start + i] += v
    assert total[5] == total[6] == 1.125
    expected = [[v / total[s + i] for i, v in enumerate(w)] for s, w in zip((0, 2, 4), raw)]
    for got, want in zip(axis_weights((0, 2, 4), 8, 1), expected):
        assert got.tolist() == pytest.approx(want, abs=1e-7)


def test_uncovered_pixels_are_an_error() -> None:
    with pytest.raises(ValueError, match=r"^tiles at \(0, 10\) of 8 px leave pixels with no weight$"):
        axis_weights((0, 10), 8, 1)


def test_device_weights_are_cached_and_bounded() -> None:
    tiling._device_weights.clear()
    cpu = torch.device("cpu")
    first = device_axis_weights((0, 4), 8, 1, cpu)
    assert [w.tolist() for w in first] == _values(axis_weights((0, 4), 8, 1))
    assert device_axis_weights((0, 4), 8, 1, cpu) is first
    assert device_axis_weights((0, 4), 8, 2, cpu) is not first
    for tile in range(9, 9 + 63):  # 65 grids held: still no eviction
        device_axis_weights((0, 4), tile, 1, cpu)
    assert len(tiling._device_weights) == 65 and device_axis_weights((0, 4), 8, 1, cpu) is first
    device_axis_weights((0, 4), 100, 1, cpu)  # the 66th clears the cache first
    assert len(tiling._device_weights) == 1
    assert device_axis_weights((0, 4), 8, 1, cpu) is not first
    tiling._device_weights.clear()
