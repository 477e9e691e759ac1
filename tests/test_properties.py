"""Properties that must hold for any input: the tile planner covers every pixel with weights
that sum to one, and any legal file name becomes a legal output name inside OUT."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from upscaler.engine.tiling import TileGrid, axis_weights, even_grid, fixed_grid
from upscaler.io.files import NAME_MAX, target_path
from upscaler.io.formats import FORMATS, SUFFIX_FORMATS, SUFFIXES


def _assert_covers(grid: TileGrid, height: int, width: int) -> None:
    """Tiles lie inside the (padded) frame, which holds the image, and their union is all of it."""
    assert grid.height >= height and grid.width >= width
    for starts, tile, full in ((grid.ys, grid.tile_h, grid.height), (grid.xs, grid.tile_w, grid.width)):
        assert starts[0] == 0 and starts[-1] + tile == full
        assert list(starts) == sorted(set(starts))
        assert all(later <= earlier + tile for earlier, later in itertools.pairwise(starts)), "a gap between tiles"


def _assert_weights(starts: tuple[int, ...], tile: int, scale: int) -> None:
    """Every tile's weight is positive somewhere, never negative, and the weights sum to one at every pixel."""
    weights = axis_weights(starts, tile, scale)
    total = torch.zeros((starts[-1] + tile) * scale, dtype=torch.float64)
    for start, w in zip(starts, weights):
        assert w.shape == (tile * scale,)
        assert bool((w >= 0).all()) and float(w.max()) > 0
        total[start * scale:(start + tile) * scale] += w.double()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 3000), width=st.integers(1, 3000), tile=st.integers(8, 512), overlap=st.integers(0, 200),
       fit=st.booleans(), multiple=st.sampled_from([1, 2, 4, 8]))
def test_fixed_grid_covers_every_pixel(height: int, width: int, tile: int, overlap: int, fit: bool, multiple: int) -> None:
    assume(overlap < tile // 2)
    grid = fixed_grid(height, width, tile, overlap, fit, multiple)
    _assert_covers(grid, height, width)
    assert grid.tile_h % multiple == 0 and grid.tile_w % multiple == 0


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 4000), width=st.integers(1, 4000), budget=st.integers(64 * 64, 2048 * 2048),
       overlap=st.integers(0, 64), multiple=st.sampled_from([1, 4, 8]))
def test_even_grid_covers_every_pixel_within_its_budget(height: int, width: int, budget: int, overlap: int, multiple: int) -> None:
    try:
        grid = even_grid(height, width, budget, overlap, multiple)
    except ValueError:  # refused with a message: the image cannot be split under this budget and overlap
        return
    _assert_covers(grid, height, width)
    assert grid.tile_h * grid.tile_w <= budget
    for starts, tile in ((grid.ys, grid.tile_h), (grid.xs, grid.tile_w)):  # neighbours share at least the overlap
        assert all(a + tile - b >= overlap for a, b in itertools.pairwise(starts))
        assert all(s % multiple == 0 for s in starts)


@settings(max_examples=300, deadline=None)
@given(length=st.integers(8, 2000), tile=st.integers(8, 256), overlap=st.integers(0, 127), scale=st.sampled_from([1, 2, 3, 4]))
def test_blend_weights_are_positive_and_sum_to_one(length: int, tile: int, overlap: int, scale: int) -> None:
    assume(overlap < tile // 2)
    grid = fixed_grid(length, length, tile, overlap, fit=False)
    _assert_weights(grid.ys, grid.tile_h, scale)


@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 2000), width=st.integers(1, 2000), budget=st.integers(32 * 32, 512 * 512),
       overlap=st.integers(0, 32), scale=st.sampled_from([1, 2, 4]))
def test_even_grid_weights_sum_to_one(height: int, width: int, budget: int, overlap: int, scale: int) -> None:
    try:
        grid = even_grid(height, width, budget, overlap)
    except ValueError:
        return
    _assert_weights(grid.ys, grid.tile_h, scale)
    _assert_weights(grid.xs, grid.tile_w, scale)


def _legal_stems() -> st.SearchStrategy[bytes]:
    """Any bytes but '/' and NUL: what a Linux file name may hold (undecodable ones included)."""
    return st.binary(min_size=1, max_size=NAME_MAX).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_"))


@settings(max_examples=300, deadline=None)
@given(stem=_legal_stems(), suffix=st.sampled_from(sorted(SUFFIX_FORMATS)), requested=st.sampled_from(["keep", *FORMATS]),
       upper=st.booleans())
def test_any_legal_name_gives_a_legal_output_name_in_out(stem: bytes, suffix: str, requested: str, upper: bool) -> None:
    raw = stem[:NAME_MAX - len(suffix)] + (suffix.upper() if upper else suffix).encode()
    name = os.fsdecode(raw)
    assume(name not in (".", "..") and Path(name).suffix.lower() == suffix)
    with tempfile.TemporaryDirectory() as scratch:
        in_dir, out_dir = Path(scratch, "in"), Path(scratch, "out")
        (in_dir / "sub").mkdir(parents=True)
        (out_dir / "sub").mkdir(parents=True)
        source = in_dir / "sub" / name
        source.write_bytes(b"")  # the input name is legal: the file system took it
        fmt = SUFFIX_FORMATS[suffix] if requested == "keep" else FORMATS[requested]
        target = target_path(source, in_dir, out_dir, fmt)
        assert target.parent == out_dir / "sub"
        assert 0 < len(os.fsencode(target.name)) <= NAME_MAX
        if SUFFIX_FORMATS[suffix] == fmt:
            assert target.name == name  # the name round-trips unchanged
        else:
            assert target.suffix == SUFFIXES[fmt] and os.fsencode(name).startswith(os.fsencode(target.stem))
        target.write_bytes(b"")  # and the output name is legal too
        assert os.listdir(out_dir / "sub") == [target.name]
