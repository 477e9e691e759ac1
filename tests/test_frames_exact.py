"""The frame engine against references computed here: whole-image model outputs, numpy padding and blending.

The models are small fixed operators with a known answer: nearest-neighbour upsampling (pointwise,
so any tiling must reproduce it exactly), a zero-padded box blur (wrong within one pixel of every
tile edge, which the blend must give no weight), and channel gains (so colour, gray and alpha
planes cannot be confused).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from upscaler.engine.errors import FrameError
from upscaler.engine.frames import Frame, FrameUpscaler, ModelRunner, max_value, split_planes
from upscaler.engine.tiling import TileGrid, even_grid, fixed_grid

from .conftest import photo_array


def nearest(scale: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: F.interpolate(x, scale_factor=scale, mode="nearest")


def blur_then_nearest(scale: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """3x3 box blur with zero padding: every tile's outermost pixel is darker than in the whole image."""
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    return lambda x: F.interpolate(F.conv2d(x, kernel.to(x.dtype), padding=1, groups=3), scale_factor=scale, mode="nearest")


def gains(scale: int, k: tuple[float, float, float]) -> Callable[[torch.Tensor], torch.Tensor]:
    factors = torch.tensor(k).view(1, 3, 1, 1)
    return lambda x: F.interpolate(x, scale_factor=scale, mode="nearest") * factors.to(x.dtype)


def upscaler(run: Callable[[torch.Tensor], torch.Tensor], grid: Callable[[int, int], TileGrid], scale: int = 2,
             out_scale: int | None = None, batch: int = 4) -> FrameUpscaler:
    return FrameUpscaler(ModelRunner(run, torch.float32, None), scale, out_scale or scale, batch, False, grid)


def whole(run: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray) -> np.ndarray:
    """The model on the whole image, clamped and quantised: what tiling must not change."""
    top = 65535 if image.dtype == np.uint16 else 255
    x = torch.from_numpy(image.astype(np.float32) / top).permute(2, 0, 1)[None]
    y = run(x)[0].clamp(0, 1)
    return (y * top).round().permute(1, 2, 0).numpy().astype(image.dtype)


GRIDS = {
    "fixed 32/8": lambda h, w: fixed_grid(h, w, 32, 8, fit=True),
    "fixed 24/4 padded": lambda h, w: fixed_grid(h, w, 24, 4, fit=False),
    "even, small budget": lambda h, w: even_grid(h, w, 40 * 40, 8),
    "whole": lambda h, w: even_grid(h, w, 10**8, 8),
}


@pytest.mark.parametrize("grid", list(GRIDS))
def test_pointwise_models_come_out_exactly_whatever_the_tiles(grid: str) -> None:
    image = photo_array("coffee.png")[:70, :90].copy()
    out = upscaler(nearest(3), GRIDS[grid], scale=3)(Frame(torch.from_numpy(image))).color.numpy()
    assert out.shape == (210, 270, 3) and out.dtype == np.uint8
    assert np.array_equal(out, image.repeat(3, 0).repeat(3, 1))
    deep = image.astype(np.uint16) * 257 + 100
    out16 = upscaler(nearest(2), GRIDS[grid])(Frame(torch.from_numpy(deep))).color.numpy()
    assert out16.dtype == np.uint16 and np.array_equal(out16, deep.repeat(2, 0).repeat(2, 1))


@pytest.mark.parametrize("grid", ["fixed 32/8", "even, small budget"])
def test_tile_edges_get_no_weight(grid: str) -> None:
    """The blur is wrong at every tile edge; overlap 8 gives the outer 2 pixels no weight, so nothing shows."""
    image = photo_array("astronaut.png")[:80, :100].copy()
    frames = upscaler(blur_then_nearest(2), GRIDS[grid])
    assert not GRIDS[grid](80, 100).whole
    out = frames(Frame(torch.from_numpy(image))).color.numpy().astype(int)
    assert np.abs(out - whole(blur_then_nearest(2), image).astype(int)).max() <= 1


def test_padding_reflects_or_replicates_as_numpy_does() -> None:
    """A 20x13 image under static 24-pixel tiles is padded first: by reflection where it can be, else by replication."""
    image = photo_array("coffee.png")[:20, :13].copy()
    grid = lambda h, w: fixed_grid(h, w, 24, 4, fit=False)
    out = upscaler(blur_then_nearest(2), grid)(Frame(torch.from_numpy(image))).color.numpy()
    reflected = np.pad(image, ((0, 4), (0, 11), (0, 0)), mode="reflect")
    assert np.array_equal(out, whole(blur_then_nearest(2), reflected)[:40, :26])
    thin = photo_array("coffee.png")[:5, :40].copy()  # 19 rows of padding from 5: only replication
    out = upscaler(blur_then_nearest(2), grid)(Frame(torch.from_numpy(thin))).color.numpy()
    replicated = np.pad(thin, ((0, 19), (0, 0), (0, 0)), mode="edge")
    assert np.array_equal(out, whole(blur_then_nearest(2), replicated)[:10, :80])


@pytest.mark.parametrize(("height", "width", "mode"), [(6, 8, None), (6, 11, "reflect"), (9, 8, "reflect"), (12, 8, "edge"),
                                                      (6, 16, "edge"), (11, 15, "reflect")])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_pad_to_the_grid(height: int, width: int, mode: str | None, dtype: type) -> None:
    """Reflection needs fewer padded rows (columns) than the image has; at as many or more, replication."""
    from types import SimpleNamespace

    from upscaler.engine.frames import _pad

    image = photo_array("coffee.png")[:6, :8].astype(dtype) * (257 if dtype == np.uint16 else 1)
    planes = torch.from_numpy(image).permute(2, 0, 1)
    padded = _pad(planes, SimpleNamespace(height=height, width=width))  # type: ignore[arg-type]
    if mode is None:
        assert padded is planes  # nothing to pad: not even a copy
        return
    expected = np.pad(image, ((0, height - 6), (0, width - 8), (0, 0)), mode=mode)  # type: ignore[call-overload]
    assert padded.dtype == planes.dtype and np.array_equal(padded.permute(1, 2, 0).numpy(), expected)


def test_gray_is_the_luma_of_the_models_rgb() -> None:
    gray = photo_array("coffee.png")[:30, :40, 1].copy()
    k = (1.0, 0.5, 0.25)
    out = upscaler(gains(2, k), GRIDS["fixed 24/4 padded"])(Frame(torch.from_numpy(gray))).color.numpy()
    assert out.shape == (60, 80) and out.dtype == np.uint8
    luma = (0.299 * k[0] + 0.587 * k[1] + 0.114 * k[2]) * gray.astype(np.float64).repeat(2, 0).repeat(2, 1)
    assert np.abs(out.astype(int) - np.round(luma)).max() <= 1


@pytest.mark.parametrize("k", [(1.0, 0.5, 0.25), (1.5, 1.5, 1.5)])  # the second makes alpha above 1: clamped
@pytest.mark.parametrize("gray", [False, True])
def test_alpha_is_run_as_gray_rgb_and_colour_is_unpremultiplied(gray: bool, k: tuple[float, float, float]) -> None:
    rgb = photo_array("coffee.png")[:30, :40].copy()
    color = rgb[..., 0].copy() if gray else rgb
    alpha = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    alpha[:, :3] = 0
    frames = upscaler(gains(2, k), GRIDS["fixed 32/8"], batch=3)
    out = frames(Frame(torch.from_numpy(color), torch.from_numpy(alpha)))
    assert out.alpha is not None and out.color.shape == ((60, 80) if gray else (60, 80, 3))
    up = lambda x: x.astype(np.float64).repeat(2, 0).repeat(2, 1) / 255
    a_in = up(alpha)
    a_out = np.clip(a_in * sum(k) / 3, 0, 1)  # the mean of the three alpha outputs
    assert np.abs(out.alpha.numpy().astype(int) - np.round(a_out * 255)).max() <= 1
    gains_rgb = np.array(k)
    c_in = up(color)[..., None] if gray else up(color)
    premultiplied = c_in * a_in[..., None] * gains_rgb
    c_out = premultiplied / np.maximum(a_out, 1 / 255)[..., None]
    if gray:  # luma of the un-premultiplied colour, clamped after
        c_out = c_out @ np.array([0.299, 0.587, 0.114])
    c_out = np.clip(c_out, 0, 1)
    got = out.color.numpy().astype(int)
    assert np.abs(got - np.round(c_out * 255)).max() <= 1
    assert (got[:, :6] == 0).all()  # fully transparent: no colour


def test_rgbx_output_is_a_view_of_four_byte_pixels() -> None:
    image = photo_array("coffee.png")[:30, :40].copy()
    frames = upscaler(nearest(2), GRIDS["fixed 32/8"])
    view = frames(Frame(torch.from_numpy(image)), rgbx=True).color
    assert view.shape == (60, 80, 3) and view.stride() == (320, 4, 1)
    assert np.array_equal(view.numpy(), image.repeat(2, 0).repeat(2, 1))
    assert frames(Frame(torch.from_numpy(image))).color.is_contiguous()
    deep = frames(Frame(torch.from_numpy(image.astype(np.uint16))), rgbx=True).color
    assert deep.is_contiguous()  # only 8-bit RGB goes to Pillow as RGBX


@pytest.mark.parametrize("top", [255, 65535])
def test_other_output_scales_are_an_antialiased_bicubic_resize(top: int) -> None:
    image = photo_array("coffee.png")[:30, :40].copy()
    image[::4] = 255  # saturated stripes: bicubic overshoots both ends, so the clamp shows
    image[1::4] = 0
    image = image.astype(np.uint16) * 257 if top == 65535 else image
    out = upscaler(nearest(4), GRIDS["fixed 32/8"], scale=4, out_scale=3)(Frame(torch.from_numpy(image))).color
    full = torch.from_numpy(image.repeat(4, 0).repeat(4, 1).astype(np.float32)).permute(2, 0, 1)[None]
    expected = F.interpolate(full, size=(90, 120), mode="bicubic", antialias=True, align_corners=False)[0]
    assert expected.max() > top + 1 and expected.min() < -1
    expected = expected.clamp(0, top).round().permute(1, 2, 0).numpy()
    assert out.shape == (90, 120, 3) and out.dtype == torch.from_numpy(image).dtype
    assert np.array_equal(out.numpy(), expected.astype(image.dtype))


def test_batches_hold_whole_tiles() -> None:
    sizes: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return nearest(2)(x)

    image = photo_array("coffee.png")[:64, :110].copy()
    grid = GRIDS["fixed 32/8"]
    count = len(grid(64, 110).origins)
    assert len(grid(64, 110).xs) == 5  # a row of tiles is a batch of 4 and a short one of 1
    expected = image.repeat(2, 0).repeat(2, 1)
    upscaler(run, grid, batch=4)(Frame(torch.from_numpy(image)))
    assert sum(sizes) == count and sizes[:2] == [4, 1]  # a dynamic engine runs the short one as it is
    sizes.clear()
    alpha = np.full((64, 110), 255, np.uint8)
    alpha[::3] = 128  # colour and alpha differ: mixed-up inputs would show
    paired = upscaler(run, grid, batch=4)(Frame(torch.from_numpy(image), torch.from_numpy(alpha)))
    assert sum(sizes) == 2 * count and max(sizes) == 4  # colour and alpha of a tile: two inputs
    assert np.array_equal(paired.alpha.numpy(), alpha.repeat(2, 0).repeat(2, 1))
    assert np.abs(paired.color.numpy().astype(int) - expected).max() <= 1  # premultiplied and back
    alpha[::3] = 255
    sizes.clear()
    single = upscaler(run, grid, batch=1)(Frame(torch.from_numpy(image), torch.from_numpy(alpha)))
    assert set(sizes) == {1} and len(sizes) == 2 * count  # a tile's two inputs in two batches, put back together
    assert np.array_equal(single.color.numpy(), expected) and bool((single.alpha == 255).all())
    sizes.clear()
    static = FrameUpscaler(ModelRunner(run, torch.float32, None), 2, 2, 4, True, grid)
    out = static(Frame(torch.from_numpy(image))).color.numpy()
    assert set(sizes) == {4} and len(sizes) == 2 * len(grid(64, 110).ys)  # a static engine gets the short one padded
    assert np.array_equal(out, expected)


def test_model_outputs_out_of_range_are_clamped() -> None:
    image = photo_array("coffee.png")[:30, :40].copy()
    out = upscaler(gains(2, (-0.5, 1.5, 1.0)), GRIDS["fixed 32/8"])(Frame(torch.from_numpy(image))).color.numpy()
    up = image.astype(np.float64).repeat(2, 0).repeat(2, 1)
    assert (out[..., 0] == 0).all()
    assert np.abs(out[..., 1].astype(int) - np.round(np.minimum(up[..., 1] * 1.5, 255))).max() <= 1


def test_max_value() -> None:
    assert (max_value(torch.uint8), max_value(torch.uint16)) == (255, 65535)


class Broken:
    """Runs `run`, then spoils the tiles listed in `bad` (NaN) or makes them flat."""

    def __init__(self, bad: set[int], flat: bool = False) -> None:
        self.bad, self.flat, self.calls = bad, flat, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = nearest(2)(x.float()).to(x.dtype)
        for i in self.bad:
            out[i] = 0.5 if self.flat else float("nan")
        return out


def _tiles() -> torch.Tensor:
    image = torch.from_numpy(photo_array("coffee.png")[:16, :64].copy()).permute(2, 0, 1).float() / 255
    return torch.stack([image[:, :, i * 16 : (i + 1) * 16] for i in range(4)])


def test_non_finite_tiles_are_recomputed_in_fp32_once_built(caplog: pytest.LogCaptureFixture) -> None:
    built: list[Broken] = []

    def fallback() -> Broken:
        built.append(Broken(set()))
        return built[-1]

    runner = ModelRunner(Broken({1, 3}), torch.float32, fallback)
    tiles = _tiles()
    with caplog.at_level("WARNING", logger="upscaler"):
        out = runner(tiles)
    assert [r.getMessage() for r in caplog.records] == ["2 tile(s) overflowed or collapsed in fp32; recomputed in fp32"]
    assert torch.equal(out, nearest(2)(tiles))
    runner(tiles)
    assert len(built) == 1 and built[0].calls == 2  # built once, and only the two bad tiles went to it each time


def test_non_finite_without_fallback_or_in_fp32_too_fails_the_frame() -> None:
    with pytest.raises(FrameError, match=r"^the model's output is not finite \(NaN or infinity\) even in fp32; nothing was written$"):
        ModelRunner(Broken({0}), torch.float32, None)(_tiles())
    with pytest.raises(FrameError, match=r"^the model's output is not finite \(NaN or infinity\) even in fp32; nothing was written$"):
        ModelRunner(Broken({0}), torch.bfloat16, lambda: Broken({0}))(_tiles())
    seen: list[torch.dtype] = []
    ModelRunner(lambda x: seen.append(x.dtype) or nearest(2)(x), torch.bfloat16, None)(_tiles())
    assert seen == [torch.bfloat16]  # the model runs in its own precision


def test_flat_tiles_are_redone_only_in_reduced_precision(caplog: pytest.LogCaptureFixture) -> None:
    tiles = _tiles()
    redone = ModelRunner(Broken({2}, flat=True), torch.bfloat16, lambda: Broken(set()))
    with caplog.at_level("WARNING", logger="upscaler"):
        out = redone(tiles)
    assert torch.equal(out[2], nearest(2)(tiles)[2:3][0])
    assert "1 tile(s) overflowed or collapsed in bf16; recomputed in fp32" in caplog.text
    kept = ModelRunner(Broken({2}, flat=True), torch.float32, lambda: Broken(set()))(tiles)
    assert bool((kept[2] == 0.5).all())  # in fp32 a flat output is the model's answer
    flat_input = torch.full_like(tiles, 0.3)
    calm = ModelRunner(lambda x: torch.full((4, 3, 32, 32), 0.5, dtype=x.dtype), torch.bfloat16, None)
    assert bool((calm(flat_input) == 0.5).all())  # flat in, flat out: nothing wrong


def test_fp16_is_named_in_the_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="upscaler"):
        ModelRunner(Broken({0}), torch.float16, lambda: Broken(set()))(_tiles())
    assert "1 tile(s) overflowed or collapsed in fp16; recomputed in fp32" in caplog.text


def test_deferred_verdicts_wait_on_the_device_until_taken() -> None:
    """Streamed on CUDA, nothing asks the host about a batch: the verdicts pile up until the frame is collected."""
    tiles = _tiles()
    spoiled = ModelRunner(Broken({1}), torch.bfloat16, lambda: Broken(set()), deferred=True)
    out = spoiled(tiles)
    assert bool(torch.isnan(out[1]).all()) and not bool(torch.isnan(out[0]).any())  # handed on as it came
    clean = ModelRunner(Broken(set()), torch.bfloat16, None, deferred=True)
    clean(tiles)
    spoiled.run = Broken(set())  # a second, clean batch: the frame is still suspect
    spoiled(tiles)
    verdict, none = spoiled.take_verdict(), clean.take_verdict()
    assert verdict is not None and verdict.dtype == torch.bool and bool(verdict)
    assert none is not None and not bool(none)
    assert spoiled.take_verdict() is None  # taken: the next frame starts clean


def test_checked_is_the_same_model_checking_each_batch() -> None:
    fallback = lambda: Broken(set())
    deferred = ModelRunner(Broken({2}), torch.bfloat16, fallback, deferred=True)
    checked = deferred.checked()
    assert (checked.run, checked.dtype, checked.fallback, checked.deferred) == (deferred.run, torch.bfloat16, fallback, False)
    out = checked(_tiles())
    assert torch.equal(out[2], nearest(2)(_tiles())[2]) and bool(torch.isfinite(out).all())  # redone, not passed on


@pytest.mark.parametrize("spoil", [float("inf"), float("-inf")])
def test_one_infinite_pixel_is_enough_to_redo_a_tile(spoil: float) -> None:
    tiles = _tiles()

    def run(x: torch.Tensor) -> torch.Tensor:
        out = nearest(2)(x)
        out[3, 1, 5, 7] = spoil  # one pixel of one tile
        return out

    fixed = ModelRunner(run, torch.float32, lambda: nearest(2))(tiles)
    assert torch.equal(fixed, nearest(2)(tiles))


@pytest.mark.parametrize(("planes", "gray", "has_alpha", "color", "alpha"), [
    (1, True, False, [0], None), (2, True, True, [0], 1), (3, False, False, [0, 1, 2], None),
    (4, False, False, [0, 1, 2], None), (4, False, True, [0, 1, 2], 3),  # RGBX padding, then RGBA
])
def test_split_planes_names_colour_and_alpha_on_the_device_and_the_host(planes: int, gray: bool, has_alpha: bool,
                                                                        color: list[int], alpha: int | None) -> None:
    stacked = np.stack([np.full((2, 3), k, np.uint8) for k in range(planes)], axis=2)
    for values in (stacked, torch.from_numpy(stacked)):
        got_color, got_alpha = split_planes(values, gray, has_alpha)
        assert np.array_equal(np.asarray(got_color), stacked[..., color[0]] if gray else stacked[..., color])
        assert got_alpha is None if alpha is None else np.array_equal(np.asarray(got_alpha), stacked[..., alpha])


def test_checked_keeps_the_upscaler_and_checks_every_batch() -> None:
    def grid(height: int, width: int) -> TileGrid:
        return even_grid(height, width, 16 * 16, 4)

    deferred = FrameUpscaler(ModelRunner(nearest(2), torch.bfloat16, None, deferred=True), 2, 3, 3, True, grid)
    checked = deferred.checked()
    assert not checked.runner.deferred and checked.runner.run is deferred.runner.run
    assert (checked.scale, checked.out_scale, checked.batch, checked.static_batch, checked.plan_grid) == (
        deferred.scale, deferred.out_scale, deferred.batch, deferred.static_batch, deferred.plan_grid)
    assert deferred.runner.deferred  # the original is left as it was
