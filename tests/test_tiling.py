"""Tiling on the device: even splits, fixed tiles, blend windows, seams invisible, bytes in and out."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from upscaler.engine.engine import Engine, open_engine
from upscaler.engine.errors import FrameError
from upscaler.engine.frames import Frame, FrameUpscaler, ModelRunner
from upscaler.engine.plan import TilePlan, plan_run
from upscaler.engine.settings import DEFAULT_OVERLAP, RunSettings
from upscaler.engine.tiling import axis_starts, axis_weights, check_overlap, even_grid, fixed_grid
from upscaler.io.images import Picture
from upscaler.models import get_architecture
from upscaler.models.weights import load_model

from .conftest import dataset, in_memory_model, photo_array, save_random_model


def engine_for(module: nn.Module, tile: int | None = None, overlap: int = DEFAULT_OVERLAP, batch: int = 3,
               scale: int = 4, budget_mib: int | None = None) -> Engine:
    loaded = in_memory_model(module.eval())
    settings = RunSettings(model="test", scale=scale, tile=tile, overlap=overlap, batch=batch, device="cpu",
                           precision="fp32", memory_budget_mib=budget_mib)
    return open_engine(settings, loaded)


def whole_image(module: nn.Module, image: np.ndarray) -> np.ndarray:
    """The reference: the model on the whole image at once, quantised the same way."""
    top = 65535 if image.dtype == np.uint16 else 255
    x = torch.from_numpy(image.astype(np.float32) / top).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = module.eval()(x)[0].clamp(0, 1)
    return (y * top).round().permute(1, 2, 0).numpy().astype(image.dtype)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


@pytest.mark.parametrize(("length", "tile", "overlap"), [(100, 32, 8), (32, 32, 8), (33, 32, 8), (500, 64, 24)])
def test_fixed_tiles_cover_the_axis_with_at_least_the_overlap(length: int, tile: int, overlap: int) -> None:
    starts = axis_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile == length
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_overlap_must_leave_room() -> None:
    with pytest.raises(ValueError, match="under half the tile"):
        check_overlap(32, 16)


@pytest.mark.parametrize(("width", "height"), [(960, 540), (500, 480), (512, 512), (1920, 1080), (4000, 3000)])
def test_even_split_computes_little_twice(width: int, height: int) -> None:
    grid = even_grid(height, width, max_tile_pixels=300_000, overlap=DEFAULT_OVERLAP)
    assert grid.tile_h * grid.tile_w <= 300_000
    assert grid.computed_pixels / (width * height) <= 1.15
    covered = np.zeros((height, width), bool)
    for y, x in grid.origins:
        covered[y : y + grid.tile_h, x : x + grid.tile_w] = True
    assert covered.all()


def test_whole_images_when_they_fit() -> None:
    grid = even_grid(540, 960, max_tile_pixels=960 * 540, overlap=DEFAULT_OVERLAP)
    assert grid.whole and grid.computed_pixels == 960 * 540


def test_blend_weights_ramp_and_sum_to_one() -> None:
    starts = (0, 40, 80)
    weights = axis_weights(starts, 64, 2)
    total = torch.zeros(144 * 2)
    for start, w in zip(starts, weights):
        total[start * 2 : start * 2 + 128] += w
    torch.testing.assert_close(total, torch.ones_like(total))
    first, middle = weights[0], weights[1]
    assert torch.all(first[:80] == 1)  # alone at the image edge: full weight
    shared = (0 + 64 - 40) * 2  # 48 output pixels shared by tiles 0 and 1
    assert torch.all(middle[: shared // 4] == 0)  # its outer quarter of the overlap counts for nothing
    assert torch.all(torch.diff(middle[:shared]) >= 0) and middle[shared // 2] == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("arch", ["srresnet", "compact"])
def test_tiled_equals_whole_image_within_one_level_on_photos(arch: str) -> None:
    torch.manual_seed(1)
    module = get_architecture(arch).build(**({"blocks": 8} if arch == "srresnet" else {}))  # srresnet's receptive field is far wider than the overlap
    engine = engine_for(module, tile=64)
    for photo in ("astronaut.png", "coffee.png"):
        image = photo_array(photo)
        out = engine.upscale(Picture(image.copy(), None, "PNG")).color
        assert out.dtype == np.uint8 and out.shape == (image.shape[0] * 4, image.shape[1] * 4, 3)
        assert max_diff(out, whole_image(module, image)) <= 1, f"{arch} on {photo}"


def test_sixteen_bit_tiled_equals_whole_within_257() -> None:
    torch.manual_seed(3)
    module = get_architecture("srresnet").build(blocks=4, channels=32)
    base = photo_array("coffee.png")[:96, :128].astype(np.int64) * 257
    image = np.clip(base - np.arange(128)[None, :, None], 0, 65535).astype(np.uint16)  # detail below 8 bits
    out = engine_for(module, tile=48, overlap=16).upscale(Picture(image, None, "PNG")).color
    assert out.dtype == np.uint16
    assert max_diff(out, whole_image(module, image)) <= 257


def test_even_split_under_a_small_budget_matches_whole() -> None:
    torch.manual_seed(4)
    module = get_architecture("compact").build(channels=8, blocks=2)
    engine = engine_for(module, budget_mib=256)
    image = np.tile(photo_array("astronaut.png"), (6, 8, 1))  # 768 x 1024
    grid = engine.plan.tiles.grid(*image.shape[:2])
    assert not grid.whole and grid.computed_pixels / (768 * 1024) <= 1.15
    assert max_diff(engine.upscale(Picture(image, None, "PNG")).color, whole_image(module, image)) <= 1


class RecordingRunner(ModelRunner):
    def __init__(self, module: nn.Module) -> None:
        super().__init__(module, torch.float32, None)
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(tiles.shape))
        return super().__call__(tiles)


def test_static_engines_get_one_shape_and_full_batches() -> None:
    module = get_architecture("compact").build(channels=8, blocks=1).eval()
    runner = RecordingRunner(module)
    tiles = TilePlan(tile=64, overlap=8, max_tile_pixels=1, max_band_pixels=1, static_shape=True)
    frames = FrameUpscaler(runner, 4, 4, batch=3, static_batch=True, plan_grid=tiles.grid)
    small = torch.from_numpy(photo_array("chelsea.png")[:20, :50].copy())
    out = frames(Frame(small)).color
    assert out.shape == (80, 200, 3) and set(runner.shapes) == {(3, 3, 64, 64)}
    whole = whole_image(module, small.numpy())
    assert max_diff(out.numpy()[:40, :160], whole[:40, :160]) <= 1  # away from the reflected padding


def test_dynamic_backends_fit_tiles_to_small_images() -> None:
    grid = fixed_grid(30, 100, 64, DEFAULT_OVERLAP, fit=True)
    assert (grid.tile_h, grid.tile_w, grid.xs) == (30, 64, (0, 36))


def test_gray_and_alpha_keep_their_planes() -> None:
    engine = engine_for(nn.Upsample(scale_factor=4, mode="bicubic"), tile=16, overlap=4)
    gray = photo_array("coffee.png")[:20, :30, 0].copy()
    alpha = np.full((20, 30), 200, np.uint8)
    out = engine.upscale(Picture(gray, alpha, "PNG"))
    assert out.color.shape == (80, 120) and out.alpha is not None and out.alpha.shape == (80, 120)
    assert np.abs(out.alpha.astype(int) - 200).max() <= 1


def test_one_pixel_image_and_other_output_scales() -> None:
    engine = engine_for(get_architecture("compact").build(channels=8, blocks=1), tile=16, overlap=4)
    assert engine.upscale(Picture(np.zeros((1, 1, 3), np.uint8), None, "PNG")).color.shape == (4, 4, 3)
    half = engine_for(nn.Upsample(scale_factor=4, mode="nearest"), scale=2)
    assert half.upscale(Picture(photo_array("chelsea.png"), None, "PNG")).color.shape == (150, 224, 3)


class _NaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=4) * float("nan")


def test_a_model_that_yields_nan_fails_the_frame() -> None:
    with pytest.raises(FrameError, match="not finite"):
        engine_for(_NaN()).upscale(Picture(photo_array("chelsea.png"), None, "PNG"))


def test_streamed_frames_equal_single_pictures() -> None:
    engine = engine_for(get_architecture("compact").build(channels=8, blocks=1), tile=32, overlap=8)
    frames = [photo_array("astronaut.png")[:64, :80].copy(), photo_array("astronaut.png")[64:, :80].copy()]
    streamed = list(engine.stream(frames))
    assert len(streamed) == 2
    for frame, out in zip(frames, streamed):
        assert np.array_equal(out, engine.upscale(Picture(frame, None, "PNG")).color)


def test_builtin_model_tiles_seamlessly_on_set14() -> None:
    from upscaler.quality.evaluate import dataset_pairs

    loaded = load_model("default")
    engine = open_engine(RunSettings(model="default", tile=96, device="cpu", precision="fp32"), loaded)
    for name, lr, _ in list(dataset_pairs(dataset("Set14"), 4))[:3]:
        rgb = np.stack([lr] * 3, axis=-1) if lr.ndim == 2 else lr
        assert max_diff(engine.upscale(Picture(rgb, None, "PNG")).color, whole_image(loaded.module, rgb)) <= 1, name


def test_auto_tiles_fit_small_photos_whole() -> None:
    """In bf16, which `--precision auto` picks on CPUs with native bf16 (CI's); in fp32 960x540 takes two tiles."""
    loaded = load_model("default")
    plan = plan_run(RunSettings(model="default", device="cpu", precision="bf16"), loaded)
    assert plan.tiles.grid(540, 960).whole and plan.tiles.grid(480, 500).whole


def test_pixel_unshuffle_models_get_aligned_tiles_on_odd_sizes(tmp_path: Path) -> None:
    """Real-ESRGAN x2 shape models need inputs in multiples of 2: tiles and padding respect that."""
    model = load_model(str(save_random_model(tmp_path / "x2.safetensors", "rrdbnet", scale=2, channels=8, blocks=1, growth=8)))
    assert model.descriptor.size_multiple == 2
    engine = open_engine(RunSettings(model="x2", tile=32, overlap=8, device="cpu", precision="fp32"), model)
    image = photo_array("chelsea.png")  # 112 x 75: odd height
    grid = engine.plan.tiles.grid(*image.shape[:2])
    assert all(v % 2 == 0 for v in (*grid.ys, *grid.xs, grid.tile_h, grid.tile_w, grid.height, grid.width))
    out = engine.upscale(Picture(image, None, "PNG")).color
    assert out.shape == (150, 224, 3)
    assert max_diff(out, whole_image(model.module, image)) <= 1


def test_precision_follows_what_the_model_supports() -> None:
    loaded = in_memory_model(nn.Upsample(scale_factor=4))
    loaded.descriptor.supports_bf16 = False
    assert plan_run(RunSettings(model="m", device="cpu", precision="auto"), loaded).dtype == torch.float32
    with pytest.raises(ValueError, match="does not support --precision bf16"):
        plan_run(RunSettings(model="m", device="cpu", precision="bf16"), loaded)
