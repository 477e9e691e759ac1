"""Fixed-shape overlapped tiling: every tile one shape, seams invisible."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import pytest
import torch

from upscaler.engine.upscale import DEFAULT_OVERLAP, TiledUpscaler, TorchBackend
from upscaler.models import get_architecture
from upscaler.engine.tiling import TileGrid, axis_starts
from upscaler.models.weights import load_model

from .conftest import dataset, photo_array


class RecordingBackend(TorchBackend):
    """The torch backend, noting every batch shape it is handed."""

    shapes: list[tuple[int, ...]]

    def run(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        for batch in batches:
            self.shapes.append(tuple(batch.shape))
            yield self.infer(batch)


def backend_for(module: torch.nn.Module, tile: int, batch: int = 3) -> RecordingBackend:
    backend = RecordingBackend(module, 4, torch.device("cpu"), torch.float32, tile, batch, static_shape=True)
    backend.shapes = []
    return backend


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 8), (32, 32, 8), (33, 32, 8), (500, 64, 24)])
def test_tiles_cover_the_axis_with_at_least_the_overlap(length: int, tile: int, overlap: int) -> None:
    starts = axis_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_overlap_must_leave_room() -> None:
    with pytest.raises(ValueError, match="under half the tile"):
        TileGrid.for_image(100, 100, 32, 16)


def _quantized(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round()


def _whole_vs_tiled(module: torch.nn.Module, image: np.ndarray, tile: int) -> tuple[float, set[tuple[int, ...]]]:
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        whole = module.eval()(x[None])[0]
    backend = backend_for(module, tile)
    tiled = TiledUpscaler(backend, DEFAULT_OVERLAP).upscale(x)
    return float((_quantized(whole) - _quantized(tiled)).abs().max()), set(backend.shapes)


@pytest.mark.parametrize("arch", ["srresnet", "compact"])
def test_tiled_equals_whole_image_within_one_level_on_photos(arch: str) -> None:
    torch.manual_seed(1)
    module = get_architecture(arch).build()
    for photo in ("astronaut.png", "coffee.png"):
        diff, shapes = _whole_vs_tiled(module, photo_array(photo), tile=64)
        assert diff <= 1.0, f"{arch} on {photo}: seams differ by {diff} levels"
        assert shapes == {(3, 3, 64, 64)}  # one static shape, batch always full


def test_builtin_model_tiles_seamlessly_on_set14() -> None:
    from upscaler.quality.evaluate import dataset_pairs

    loaded = load_model("default")
    for name, lr, _ in list(dataset_pairs(dataset("Set14"), 4))[:3]:
        rgb = np.stack([lr] * 3, axis=-1) if lr.ndim == 2 else lr
        diff, _ = _whole_vs_tiled(loaded.module, rgb, tile=96)
        assert diff <= 1.0, f"{name}: {diff}"


def test_images_smaller_than_a_tile_are_padded_not_refused() -> None:
    torch.manual_seed(2)
    module = get_architecture("compact").build(channels=8, blocks=1).eval()
    image = torch.from_numpy(photo_array("chelsea.png")[:20, :50].copy()).permute(2, 0, 1).float() / 255
    backend = backend_for(module, tile=64)
    out = TiledUpscaler(backend, 8).upscale(image)
    assert out.shape == (3, 80, 200)
    assert set(backend.shapes) == {(3, 3, 64, 64)}
    with torch.no_grad():
        whole = module(image[None])[0]
    # Interior pixels far from the padded edge match the whole-image result.
    assert (_quantized(whole) - _quantized(out))[:, :40, :160].abs().max() <= 1


def test_dynamic_backends_fit_tiles_to_small_images() -> None:
    module = get_architecture("compact").build(channels=8, blocks=1).eval()
    backend = RecordingBackend(module, 4, torch.device("cpu"), torch.float32, 64, 4)  # dynamic shapes
    backend.shapes = []
    image = torch.from_numpy(photo_array("coffee.png")[:30, :100].copy()).permute(2, 0, 1).float() / 255
    out = TiledUpscaler(backend, DEFAULT_OVERLAP).upscale(image)
    assert out.shape == (3, 120, 400)
    assert backend.shapes == [(2, 3, 30, 64)]  # no padding, no filler tiles
    with torch.no_grad():
        whole = module(image[None])[0]
    assert (_quantized(whole) - _quantized(out)).abs().max() <= 1


def test_one_pixel_image() -> None:
    module = get_architecture("compact").build(channels=8, blocks=1)
    out = TiledUpscaler(backend_for(module, tile=16), 4).upscale(torch.rand(3, 1, 1))
    assert out.shape == (3, 4, 4)
