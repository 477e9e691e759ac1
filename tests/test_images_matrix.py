"""Every input mode into every output format, every EXIF orientation, ICC in every format that holds one.

Pillow is the oracle: what it decodes from the source (converted the obvious way) is what
read_picture must return, and what it decodes from our output must match that, exactly for the
lossless formats and within a few levels for JPEG and WebP.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from upscaler.io.images import Picture, PictureError, encode_picture, read_picture

from .conftest import photo_array

OUTPUTS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
LOSSLESS = {"PNG", "TIFF", "BMP"}


@functools.lru_cache(maxsize=1)
def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _photo() -> np.ndarray:
    return photo_array("coffee.png")[30:54, 40:72].copy()  # 24 x 32, real detail


def _alpha() -> np.ndarray:
    """Opaque, transparent and half-transparent areas, in flat blocks JPEG keeps."""
    alpha = np.full((24, 32), 255, np.uint8)
    alpha[:, :8] = 0
    alpha[8:16, 8:24] = 128
    return alpha


def _narrow(x: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 by x / 257, rounded to nearest (a half never occurs: 257 is odd)."""
    return np.floor(x.astype(np.float64) / 257 + 0.5).astype(np.uint8)


def _deep(x: np.ndarray) -> np.ndarray:
    """16-bit values with detail below 8 bits."""
    return (x.astype(np.uint32) * 257 + (np.arange(x.size) % 200).reshape(x.shape)).clip(0, 65535).astype(np.uint16)


def _save_source(kind: str, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Write a source file of `kind`; return the colour and alpha read_picture must give back."""
    rgb, alpha, gray = _photo(), _alpha(), _photo()[..., 1].copy()
    if kind in ("16-bit RGB", "16-bit RGBA", "16-bit gray+alpha"):  # Pillow cannot write these: our own PNG writer
        color = _deep(gray if kind == "16-bit gray+alpha" else rgb)
        deep_alpha = None if kind == "16-bit RGB" else _deep(alpha)
        encode_picture(Picture(color, deep_alpha, "PNG"), "PNG", path)
        return color, deep_alpha
    if kind == "P+transparency":
        img = Image.fromarray(rgb).quantize(32)
        img.save(path, transparency=int(np.asarray(img)[0, 0]))  # the colour of one corner is see-through
        with Image.open(path) as saved:
            rgba = np.asarray(saved.convert("RGBA"))
        assert (rgba[..., 3] == 0).any() and (rgba[..., 3] == 255).any()
        return rgba[..., :3], rgba[..., 3]
    if kind == "CMYK":
        img = Image.fromarray(rgb).convert("CMYK")
        img.save(path, "TIFF", icc_profile=b"a CMYK profile would be wrong for RGB pixels")
        return np.asarray(img.convert("RGB")), None
    img = {
        "1": lambda: Image.fromarray(gray > 128),
        "L": lambda: Image.fromarray(gray),
        "LA": lambda: Image.fromarray(np.dstack([gray, alpha]), "LA"),
        "P": lambda: Image.fromarray(rgb).quantize(32),
        "RGB": lambda: Image.fromarray(rgb),
        "RGBA": lambda: Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
        "I;16": lambda: Image.fromarray(_deep(gray)),
    }[kind]()
    img.save(path)
    if kind == "I;16":
        return _deep(gray), None
    if kind in ("LA", "RGBA"):
        pixels = np.asarray(img)
        return pixels[..., :-1].squeeze(-1) if kind == "LA" else pixels[..., :3], pixels[..., -1]
    return np.asarray(img.convert("L" if kind in ("1", "L") else "RGB")), None


SOURCES = ["1", "L", "LA", "P", "P+transparency", "RGB", "RGBA", "CMYK", "I;16", "16-bit RGB", "16-bit RGBA",
           "16-bit gray+alpha"]


def _expected_output(color: np.ndarray, alpha: np.ndarray | None, fmt: str) -> tuple[np.ndarray, np.ndarray | None]:
    """What a correct writer stores in `fmt`, worked out independently of upscaler.io.images."""
    if color.dtype == np.uint16 and fmt not in ("PNG", "TIFF"):
        color, alpha = _narrow(color), None if alpha is None else _narrow(alpha)
    if fmt == "TIFF" and color.dtype == np.uint16 and color.ndim == 2 and alpha is not None:
        color = np.dstack([color] * 3)  # 16-bit gray + alpha is stored as RGBA
    if fmt in ("JPEG", "BMP") and alpha is not None:  # composited over white
        a = (alpha if color.ndim == 2 else alpha[..., None]).astype(np.float64) / 255
        color, alpha = np.floor(color * a + 255 * (1 - a) + 0.5).astype(np.uint8), None
    if fmt == "WEBP" and color.ndim == 2:
        color = np.dstack([color] * 3)
    if fmt == "BMP":
        alpha = None
    return color, alpha


@pytest.mark.parametrize("fmt", list(OUTPUTS))
@pytest.mark.parametrize("kind", SOURCES)
def test_every_input_mode_into_every_output_format(tmp_path: Path, kind: str, fmt: str) -> None:
    suffix = ".tif" if kind == "CMYK" else ".png"
    color, alpha = _save_source(kind, tmp_path / f"source{suffix}")
    picture = read_picture(tmp_path / f"source{suffix}")
    assert picture.color.dtype == color.dtype and np.array_equal(picture.color, color)
    assert (picture.alpha is None) == (alpha is None)
    if alpha is not None:
        assert picture.alpha is not None and picture.alpha.dtype == alpha.dtype and np.array_equal(picture.alpha, alpha)
    if kind == "CMYK":
        assert picture.icc is None

    encode_picture(picture, fmt, tmp_path / f"out{OUTPUTS[fmt]}")
    again = read_picture(tmp_path / f"out{OUTPUTS[fmt]}")
    want_color, want_alpha = _expected_output(color, alpha, fmt)
    assert again.format == fmt
    assert again.color.dtype == want_color.dtype and again.color.shape == want_color.shape
    assert (again.alpha is None) == (want_alpha is None)
    if fmt == "BMP" and alpha is not None:
        return  # BMP keeps no alpha; what it keeps under transparent pixels is not specified
    if fmt in LOSSLESS:
        assert np.array_equal(again.color, want_color)
        if want_alpha is not None:
            assert again.alpha is not None and np.array_equal(again.alpha, want_alpha)
    else:  # lossy: compare where the pixels are visible (WebP may drop colour under full transparency)
        visible = np.ones(want_color.shape[:2], bool) if want_alpha is None else want_alpha > 0
        error = np.abs(again.color.astype(int) - want_color.astype(int))[visible]
        assert error.mean() < (3.0 if fmt == "JPEG" else 6.0)
        if want_alpha is not None:
            assert again.alpha is not None and np.abs(again.alpha.astype(int) - want_alpha.astype(int)).max() <= 2


def test_transparent_pixels_become_white_in_jpeg(tmp_path: Path) -> None:
    """Black under full transparency must come out white, half-transparent black mid-gray, opaque as it was."""
    color = np.zeros((24, 32, 3), np.uint8)
    color[:, 24:] = (200, 30, 60)
    encode_picture(Picture(color, _alpha(), "PNG"), "JPEG", tmp_path / "flat.jpg")
    with Image.open(tmp_path / "flat.jpg") as img:
        out = np.asarray(img).astype(int)
    assert np.abs(out[2:-2, 1:6] - 255).max() <= 3  # transparent black
    assert np.abs(out[10:14, 10:14] - 127).max() <= 3  # (0 * 128 + 255 * 127 + 127) // 255
    assert np.abs(out[2:-2, 26:-1] - [200, 30, 60]).max() <= 4


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    stored = _photo()  # 24 x 32: any wrong turn or flip changes the shape or the pixels
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "camera"
    Image.fromarray(stored).save(tmp_path / "o.png", exif=exif.tobytes())
    with Image.open(tmp_path / "o.png") as img:
        upright = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    picture = read_picture(tmp_path / "o.png")
    assert picture.color.shape == upright.shape and np.array_equal(picture.color, upright)
    assert picture.exif is not None
    tags = Image.Exif()
    tags.load(picture.exif)
    assert tags[0x0112] == 1 and tags[0x010F] == "camera"  # the pixels are turned: the tag says so


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_icc_is_kept_where_the_format_holds_one(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"icc{OUTPUTS[fmt]}"
    encode_picture(Picture(_photo(), None, "PNG", icc=_srgb_icc()), fmt, path)
    assert read_picture(path).icc == (None if fmt == "BMP" else _srgb_icc())


@pytest.mark.parametrize("alpha", [False, True])
def test_icc_and_exif_are_kept_in_sixteen_bit_tiff(tmp_path: Path, alpha: bool) -> None:
    """ffmpeg writes these pixels and drops metadata; the profile and every EXIF tag are added to its file."""
    color = _deep(_photo())
    height, width = color.shape[:2]
    exif = Image.Exif()
    exif[0x010F] = "camera"  # Make, in the first IFD
    details = exif.get_ifd(0x8769)
    details[0x9003] = "2024:05:06 07:08:09"  # DateTimeOriginal, in the Exif sub-IFD
    details[0xA002], details[0xA003] = width // 4, height // 4  # the camera's pixel size, brought up to date
    shape = np.full((height, width), 40000, np.uint16) if alpha else None
    encode_picture(Picture(color, shape, "PNG", exif=exif.tobytes(), icc=_srgb_icc()), "TIFF", tmp_path / "deep.tif")
    back = read_picture(tmp_path / "deep.tif")
    assert back.icc == _srgb_icc()
    assert np.array_equal(back.color, color) and (back.alpha is None) == (not alpha)
    with Image.open(tmp_path / "deep.tif") as img:
        tags = img.getexif()
        assert tags.get(0x010F) == "camera" and tags.get(0x0101) == height  # the file's own layout tags stay
        assert tags.get_ifd(0x8769) == {0x9003: "2024:05:06 07:08:09", 0xA002: width, 0xA003: height}


@pytest.mark.parametrize("fmt", list(OUTPUTS))
def test_exif_is_written_to_every_format_but_bmp(tmp_path: Path, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x010F] = "camera"
    path = tmp_path / f"e{OUTPUTS[fmt]}"
    encode_picture(Picture(_photo(), None, "PNG", exif=exif.tobytes()), fmt, path)
    with Image.open(path) as img:
        assert img.getexif().get(0x010F) == (None if fmt == "BMP" else "camera")


def test_jpeg_and_webp_quality_is_high(tmp_path: Path) -> None:
    """Quality 95 and no chroma subsampling: a photo comes back within two or three levels (quality 75: over four)."""
    photo = photo_array("coffee.png")
    for fmt in ("JPEG", "WEBP"):
        encode_picture(Picture(photo, None, "PNG"), fmt, tmp_path / f"q{OUTPUTS[fmt]}")
        again = read_picture(tmp_path / f"q{OUTPUTS[fmt]}").color.astype(int)
        assert np.abs(again - photo).mean() < (2.5 if fmt == "JPEG" else 3.5), fmt
    with Image.open(tmp_path / "q.jpg") as img:
        layers = getattr(img, "layer", [])
        assert len(layers) == 3 and all(h == v == 1 for _, h, v, _ in layers)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"just some text"), r"not a readable image \(unknown or corrupt format\)"),
    (lambda p: Image.fromarray(_photo()).save(p, "GIF"), "unsupported image format GIF"),
    (lambda p: Image.fromarray(_photo()[..., 0].astype(np.float32)).save(p, "TIFF"), "unsupported pixel mode F"),
])
def test_unreadable_files_say_why_in_one_line(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "bad.img"
    make(path)  # type: ignore[operator]
    with pytest.raises(PictureError, match=f"^{message}$"):
        read_picture(path)


def test_truncated_files_say_so(tmp_path: Path) -> None:
    encode_picture(Picture(_deep(_photo()), None, "PNG"), "PNG", tmp_path / "deep.png")
    whole = (tmp_path / "deep.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(PictureError, match=r"^corrupt or truncated image \(image file is truncated\)$"):
        read_picture(tmp_path / "cut.png")


def test_thirty_two_bit_gray_is_clipped_to_sixteen(tmp_path: Path) -> None:
    Image.fromarray(np.array([[-5, 70000, 1234]], dtype=np.int32)).save(tmp_path / "i.tif")
    picture = read_picture(tmp_path / "i.tif")
    assert picture.color.dtype == np.uint16 and picture.color.tolist() == [[0, 65535, 1234]]


def test_the_bomb_guard_names_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_photo()).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 32 // 2 - 1)  # over twice the limit: an error, not a warning
    with pytest.raises(PictureError, match=r"^refused by the decompression-bomb guard: Image size \(768 pixels\) exceeds"):
        read_picture(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 32 - 1)  # over the limit only: Pillow's warning, refused too
    with pytest.raises(PictureError, match=r"^refused by the decompression-bomb guard: Image size \(768 pixels\) exceeds"):
        read_picture(tmp_path / "big.png")


def test_ffmpeg_failures_are_one_line(tmp_path: Path) -> None:
    from upscaler.io.images import _ffmpeg

    with pytest.raises(PictureError, match=r"^ffmpeg failed: .*No such file"):
        _ffmpeg(["-i", str(tmp_path / "absent.png"), "-f", "null", "-"], b"")


def test_tiff_is_deflate_compressed(tmp_path: Path) -> None:
    encode_picture(Picture(_photo(), None, "PNG"), "TIFF", tmp_path / "c.tif")
    with Image.open(tmp_path / "c.tif") as img:
        assert img.info["compression"] == "tiff_adobe_deflate"


def test_narrowing_and_flattening_round_to_nearest_everywhere() -> None:
    """Every 16-bit value, and every 8-bit colour over every alpha, against the float formula rounded."""
    from upscaler.io.images import _flatten_on_white, to_depth, to_uint8

    deep = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(to_uint8(deep), np.round(deep / 257).astype(np.uint8))
    shallow = np.arange(256, dtype=np.uint8)
    assert np.array_equal(to_depth(shallow, np.uint16), shallow.astype(np.uint16) * 257)
    assert np.array_equal(to_uint8(to_depth(shallow, np.uint16)), shallow) and to_uint8(shallow) is shallow
    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    flat = _flatten_on_white(Picture(c.astype(np.uint8), a.astype(np.uint8), "PNG"))
    assert flat.alpha is None
    assert np.array_equal(flat.color, np.round((c * a + 255 * (255 - a)) / 255).astype(np.uint8))
    rgb = _flatten_on_white(Picture(np.dstack([c, c, 255 - c]).astype(np.uint8), a.astype(np.uint8), "PNG"))
    assert np.array_equal(rgb.color[..., 2], np.round(((255 - c) * a + 255 * (255 - a)) / 255).astype(np.uint8))
