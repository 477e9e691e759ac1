"""Image I/O on real files: formats, bit depth, alpha, grayscale, EXIF, ICC, orientation, bombs."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms
from torch import nn

from upscaler.engine.engine import Engine, open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.images import Picture, PictureError, encode_picture, read_picture

from .conftest import in_memory_model, photo_array


@functools.lru_cache(maxsize=1)
def _srgb_icc() -> bytes:
    """Built once: a profile's header holds its creation time, so two builds can differ."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tif"), ("BMP", ".bmp")])
def test_reads_every_supported_format(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(photo_array()).save(path, fmt)
    picture = read_picture(path)
    assert picture.format == fmt and picture.bits == 8 and picture.alpha is None
    assert picture.color.shape == (128, 128, 3) and picture.color.dtype == np.uint8
    if fmt in ("PNG", "TIFF", "BMP"):
        assert np.array_equal(picture.color, photo_array())


def _sixteen_bit_photo() -> np.ndarray:
    """A real photo with 16-bit detail: values that are not multiples of 257."""
    base = photo_array().astype(np.int64) * 257
    return np.clip(base + np.arange(base.shape[1])[None, :, None], 0, 65535).astype(np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_rgb_stays_sixteen_bit(tmp_path: Path, fmt: str) -> None:
    color = _sixteen_bit_photo()
    path = tmp_path / f"deep.{fmt.lower()}"
    encode_picture(Picture(color, None, fmt, icc=_srgb_icc()), fmt, path)
    again = read_picture(path)
    assert again.bits == 16 and again.color.dtype == np.uint16
    assert np.array_equal(again.color, color)
    assert np.any(color % 257 != 0)
    if fmt == "PNG":
        assert again.icc == _srgb_icc()


def test_sixteen_bit_gray_png(tmp_path: Path) -> None:
    gray = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    picture = read_picture(tmp_path / "g.png")
    assert picture.bits == 16 and picture.color.ndim == 2
    encode_picture(picture, "PNG", tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode.startswith("I")
        assert np.array_equal(np.asarray(img).astype(np.uint16), gray)


def _white_disc_on_transparent_black(size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    inside = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[inside] = (250, 250, 250, 255)
    return rgba


def _bicubic_upscaler() -> Engine:
    """A real torch module that upscales smoothly, so edge colours are easy to predict."""
    module = nn.Upsample(scale_factor=4, mode="bicubic", align_corners=False)
    loaded = in_memory_model(module)
    return open_engine(RunSettings(model="bicubic", tile=32, overlap=8, batch=2, device="cpu", precision="fp32"), loaded)


def test_alpha_is_upscaled_separately_without_dark_fringes(tmp_path: Path) -> None:
    Image.fromarray(_white_disc_on_transparent_black(), "RGBA").save(tmp_path / "logo.png")
    out = _bicubic_upscaler().upscale(read_picture(tmp_path / "logo.png"))
    assert out.alpha is not None and out.alpha.shape == (192, 192) and out.alpha.dtype == np.uint8
    edge = (out.alpha > 13) & (out.alpha < 242)
    assert edge.sum() > 100
    # Straight (unpremultiplied) upscaling would pull edge colour towards the hidden black.
    assert out.color[edge].min() > 230
    encode_picture(out, "PNG", tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as img:
        assert img.mode == "RGBA" and img.size == (192, 192)


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_grayscale_stays_grayscale(tmp_path: Path, mode: str) -> None:
    Image.fromarray(photo_array("coffee.png")).convert(mode).save(tmp_path / "g.png")
    out = _bicubic_upscaler().upscale(read_picture(tmp_path / "g.png"))
    assert out.color.ndim == 2 and (out.alpha is not None) == (mode == "LA")
    encode_picture(out, "PNG", tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode == mode and img.size == (600, 400)


def test_exif_icc_and_orientation_carry_over(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    exif[0x010F] = "upscaler-test-camera"
    photo = photo_array("coffee.png")  # 150 wide, 100 tall as stored
    Image.fromarray(photo).save(tmp_path / "cam.jpg", "JPEG", exif=exif.tobytes(), icc_profile=_srgb_icc(), quality=95)
    picture = read_picture(tmp_path / "cam.jpg")
    assert picture.size == (150, 100)  # upright now
    encode_picture(picture, "JPEG", tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as img:
        assert img.size == (100, 150)
        assert img.getexif()[0x0112] == 1 and img.getexif()[0x010F] == "upscaler-test-camera"
        assert img.info["icc_profile"] == _srgb_icc()
        upright = np.asarray(img).astype(int)
    expected = np.rot90(photo, 3).astype(int)  # what a viewer shows for orientation 6
    wrong = np.rot90(photo, 1).astype(int)
    assert np.abs(upright - expected).mean() < 6 < np.abs(upright - wrong).mean()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty file"), (b"just some text", "not a readable image"), (None, "truncated")],
)
def test_bad_files_raise_one_clear_cause(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.png"
    if content is None:
        buffer = io.BytesIO()
        Image.fromarray(photo_array()).save(buffer, "PNG")
        content = buffer.getvalue()[:2000]
    path.write_bytes(content)
    with pytest.raises(PictureError, match=message):
        read_picture(path)


def test_decompression_bomb_guard_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(photo_array()).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 128 * 128 // 2 - 1)
    with pytest.raises(PictureError, match="decompression-bomb guard"):
        read_picture(tmp_path / "big.png")


def test_tiff_layout_tags_do_not_leak_into_the_bigger_output(tmp_path: Path) -> None:
    gray = (np.asarray(Image.fromarray(photo_array()).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(gray).save(tmp_path / "scan.tif")
    out = _bicubic_upscaler().upscale(read_picture(tmp_path / "scan.tif"))
    encode_picture(out, "TIFF", tmp_path / "big.tif")
    with Image.open(tmp_path / "big.tif") as img:
        assert img.size == (512, 512) and img.mode == "I;16"


def test_exif_pixel_dimensions_follow_the_new_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "camera"
    exif.get_ifd(0x8769).update({0xA002: 150, 0xA003: 100})
    Image.fromarray(photo_array("coffee.png")).save(tmp_path / "c.jpg", exif=exif.tobytes())
    out = _bicubic_upscaler().upscale(read_picture(tmp_path / "c.jpg"))
    encode_picture(out, "JPEG", tmp_path / "big.jpg")
    with Image.open(tmp_path / "big.jpg") as img:
        details = img.getexif().get_ifd(0x8769)
        assert (details[0xA002], details[0xA003]) == (600, 400) and img.getexif()[0x010F] == "camera"


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize(("rgb", "with_alpha"), [(True, False), (True, True), (False, False), (False, True)])
def test_streamed_png_round_trips_every_layout(tmp_path: Path, bits: int, rgb: bool, with_alpha: bool) -> None:
    from upscaler.io import png

    photo = photo_array("coffee.png")
    color = photo if rgb else photo[..., 1].copy()
    dtype = np.uint16 if bits == 16 else np.uint8
    color = (color.astype(np.uint32) * (257 if bits == 16 else 1)).astype(dtype)
    if bits == 16:
        color[::3] += 1  # detail below 8 bits
    alpha = (np.arange(color.shape[1], dtype=np.uint32)[None, :].repeat(color.shape[0], 0) * 3 % (1 << bits)).astype(dtype)
    picture = Picture(color, alpha if with_alpha else None, "PNG", exif=b"Exif\x00\x00" + Image.Exif().tobytes()[6:], icc=_srgb_icc())
    encode_picture(picture, "PNG", tmp_path / "p.png")
    again = read_picture(tmp_path / "p.png")
    assert again.color.dtype == dtype and np.array_equal(again.color, color) and again.icc == _srgb_icc()
    assert (again.alpha is not None) == with_alpha
    if with_alpha:
        assert again.alpha is not None and np.array_equal(again.alpha, alpha)
    small = png.write_png  # many strips: the filter state carries across strip boundaries
    old, png._STRIP_BYTES = png._STRIP_BYTES, 1000
    try:
        small(tmp_path / "strips.png", color, alpha if with_alpha else None)
    finally:
        png._STRIP_BYTES = old
    assert np.array_equal(read_picture(tmp_path / "strips.png").color, color)


def test_rgbx_views_reach_pillow_without_a_copy(tmp_path: Path) -> None:
    buffer = np.zeros((100, 150, 4), np.uint8)
    buffer[..., :3] = photo_array("coffee.png")
    picture = Picture(buffer[..., :3], None, "JPEG")
    for fmt, suffix in (("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tif"), ("BMP", ".bmp")):
        encode_picture(picture, fmt, tmp_path / f"x{suffix}")
        with Image.open(tmp_path / f"x{suffix}") as img:
            assert img.mode == "RGB" and img.size == (150, 100)
            assert np.abs(np.asarray(img).astype(int) - photo_array("coffee.png")).mean() < 3


def test_an_rgbx_view_is_pillows_own_buffer() -> None:
    """Not a copy: a change to the engine's buffer shows in the image Pillow is handed."""
    from upscaler.io.images import _to_pillow

    buffer = np.zeros((100, 150, 4), np.uint8)
    buffer[..., :3] = photo_array("coffee.png")
    img = _to_pillow(Picture(buffer[..., :3], None, "PNG"))
    assert img.mode == "RGBX" and img.size == (150, 100)
    assert np.array_equal(np.asarray(img.convert("RGB")), buffer[..., :3])
    buffer[7, 9, :3] = (1, 2, 3)
    assert img.getpixel((9, 7))[:3] == (1, 2, 3)
    contiguous = _to_pillow(Picture(np.ascontiguousarray(buffer[..., :3]), None, "PNG"))
    assert contiguous.mode == "RGB"  # any other layout goes through Pillow's own copy


def test_pillow_encodes_every_format_but_png_and_tiff() -> None:
    from upscaler.io.images import pillow_encodes

    assert [pillow_encodes(f) for f in ("PNG", "JPEG", "WEBP", "TIFF", "BMP")] == [False, True, True, False, True]


def test_standard_input_bytes_read_as_the_file_does(tmp_path: Path) -> None:
    from upscaler.io.images import read_picture_bytes

    with pytest.raises(PictureError, match="^empty input$"):
        read_picture_bytes(b"")
    encode_picture(Picture(photo_array("coffee.png"), None, "PNG"), "PNG", tmp_path / "c.png")
    deep = _sixteen_bit_photo()  # 16-bit RGB is decoded by ffmpeg: from the bytes, not a path
    encode_picture(Picture(deep, None, "TIFF"), "TIFF", tmp_path / "d.tif")
    for name in ("c.png", "d.tif"):
        from_bytes, from_file = read_picture_bytes((tmp_path / name).read_bytes()), read_picture(tmp_path / name)
        assert from_bytes.format == from_file.format and np.array_equal(from_bytes.color, from_file.color)
    assert read_picture_bytes((tmp_path / "d.tif").read_bytes()).color.dtype == np.uint16


def test_sixteen_bit_tiff_to_a_stream(tmp_path: Path) -> None:
    """`upscale image - -o -` writes into memory: the 16-bit RGB TIFF must land there, whole."""
    deep = _sixteen_bit_photo()
    stream = io.BytesIO()
    encode_picture(Picture(deep, None, "TIFF"), "TIFF", stream)
    (tmp_path / "s.tif").write_bytes(stream.getvalue())
    assert np.array_equal(read_picture(tmp_path / "s.tif").color, deep)


@pytest.mark.parametrize(("recorded", "expected"), [({0xA002: 150}, {0xA002: 600, 0xA003: 400}), ({0x9003: "2020:01:01 00:00:00"}, {})])
def test_exif_pixel_dimensions_are_set_only_where_some_were(tmp_path: Path, recorded: dict[int, object], expected: dict[int, int]) -> None:
    """One dimension recorded: both are brought up to date; none recorded: none are invented."""
    exif = Image.Exif()
    exif.get_ifd(0x8769).update(recorded)
    picture = Picture(photo_array("coffee.png").repeat(4, 0).repeat(4, 1), None, "JPEG", exif=exif.tobytes())
    encode_picture(picture, "JPEG", tmp_path / "big.jpg")
    with Image.open(tmp_path / "big.jpg") as img:
        details = img.getexif().get_ifd(0x8769)
        assert {tag: details[tag] for tag in (0xA002, 0xA003) if tag in details} == expected
