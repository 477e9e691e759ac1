"""Reading and writing pictures without losing what matters: bit depth, alpha, EXIF, ICC.

Pixels stay the integers they were decoded as (uint8 or uint16): colour HxWx3 (or HxW for
grayscale) and an optional HxW alpha of the same type. Conversion to floats, scaling, clamping
and quantising happen in the engine, on the device that runs the model.
Pillow decodes everything it decodes exactly; 16-bit RGB(A) TIFF, which Pillow reduces to 8
bits, is decoded by tifffile (io/tiff.py), 16-bit RGB(A) PNG by the ffmpeg binary that
imageio-ffmpeg ships. PNG is written by a streaming writer of our own (io/png.py), TIFF by
tifffile (io/tiff.py), the rest by Pillow.
"""

from __future__ import annotations

import io
import subprocess
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from upscaler.io.formats import DEFAULT_TIFF_COMPRESSION, SUFFIXES
from upscaler.io.png import write_png
from upscaler.io.tiff import LAYOUT_TAGS, read_tiff_pixels, write_tiff

_ORIENTATION = 0x0112
_EXIF_IFD, _PIXEL_X, _PIXEL_Y = 0x8769, 0xA002, 0xA003
_SIXTEEN_BIT_FORMATS = {"PNG", "TIFF"}
_SIXTEEN_BIT_LAYOUTS = {"RGB": ("rgb48le", 3), "RGBA": ("rgba64le", 4), "LA": ("ya16le", 2)}  # stored layout: ffmpeg's


class PictureError(Exception):
    """A file that cannot be read or written; the message names the cause, not the file."""


@dataclass
class Picture:
    color: np.ndarray  # uint8 or uint16, HxWx3 or HxW (grayscale)
    alpha: np.ndarray | None  # HxW, same dtype as color, or None
    format: str  # Pillow's format name of the source: PNG, JPEG, WEBP, TIFF, BMP
    exif: bytes | None = None  # upright: the orientation tag is reset to 1 once pixels are turned
    icc: bytes | None = None

    @property
    def bits(self) -> int:
        return 16 if self.color.dtype == np.uint16 else 8

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.color.shape[0], self.color.shape[1]


# -- reading ---------------------------------------------------------------------------------


def read_picture(path: Path) -> Picture:
    if path.stat().st_size == 0:
        raise PictureError("empty file")
    return _read(path)


def read_picture_bytes(data: bytes) -> Picture:
    """A picture from a whole file's bytes (standard input)."""
    if not data:
        raise PictureError("empty input")
    return _read(io.BytesIO(data))


def _read(source: Path | io.BytesIO) -> Picture:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                return _decode(img, source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PictureError(f"refused by the decompression-bomb guard: {exc}") from None
    except UnidentifiedImageError:
        raise PictureError("not a readable image (unknown or corrupt format)") from None
    except OSError as exc:
        if exc.errno is not None:  # the system refused (permission, I/O error): the file may be fine
            raise PictureError(f"unreadable ({exc.strerror})") from None
        raise PictureError(f"corrupt or truncated image ({exc})") from None
    except (SyntaxError, ValueError) as exc:
        raise PictureError(f"corrupt or truncated image ({exc})") from None


def _decode(img: Image.Image, source: Path | io.BytesIO) -> Picture:
    fmt = img.format or ""
    if fmt not in SUFFIXES:
        raise PictureError(f"unsupported image format {fmt or 'unknown'}")
    _refuse_frames(img)
    tiles = getattr(img, "tile", None)  # read first: getexif() may load and clear tiles
    raw_mode = tiles[0][3] if tiles else ""
    raw_mode = raw_mode[0] if isinstance(raw_mode, tuple) else raw_mode
    exif = img.getexif()
    orientation = int(exif.get(_ORIENTATION, 1))
    # A CMYK profile would mislabel the RGB pixels written out, so it is dropped with the conversion.
    icc = img.info.get("icc_profile") if img.mode != "CMYK" else None
    layout = str(raw_mode).split(";")[0]
    if layout in _SIXTEEN_BIT_LAYOUTS and ";16" in str(raw_mode):
        pixels = _decode_16bit_tiff(source, img.size, layout) if fmt == "TIFF" else _decode_16bit_png(source, img.size, layout)
    else:
        img.load()
        pixels = _pillow_pixels(img)
    pixels = _upright(pixels, orientation)
    color, alpha = _split_alpha(pixels)
    if orientation != 1:
        exif[_ORIENTATION] = 1
    for tag in LAYOUT_TAGS & set(exif):
        del exif[tag]
    exif.bigtiff = False  # a BigTIFF's EXIF in the classic layout, the one every container (and Pillow) reads back
    return Picture(color, alpha, fmt, exif.tobytes() if len(exif) else None, icc)


def _pillow_pixels(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if img.mode == "I":  # 16-bit grayscale PNG/TIFF commonly opens as 32-bit I
        return np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        target = img
    elif img.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "La", "RGBa"):
        has_alpha = "A" in img.mode or "a" in img.mode or "transparency" in img.info
        target = img.convert("RGBA" if has_alpha else ("L" if img.mode == "1" else "RGB"))
    else:
        raise PictureError(f"unsupported pixel mode {img.mode}")
    return np.array(target, dtype=np.uint8)  # writable: torch tensors are made from it without a copy


def _refuse_frames(img: Image.Image) -> None:
    """Animated PNG/WebP and multi-page TIFF fail whole: upscaling the first frame alone would lose the rest."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        raise PictureError(f"{frames} frames (animated or multi-page {img.format}); only single-frame images are upscaled")


def _decode_16bit_tiff(source: Path | io.BytesIO, size: tuple[int, int], layout: str) -> np.ndarray:
    """16-bit RGB, RGBA or gray+alpha TIFF, which Pillow would reduce to 8 bits."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        pixels = read_tiff_pixels(source)
    except Exception as exc:  # noqa: BLE001 - a decoder's verdict on hostile bytes, whatever its type: one line
        raise PictureError(f"corrupt or truncated 16-bit TIFF ({type(exc).__name__}: {exc})") from None
    width, height = size
    expected = (height, width, _SIXTEEN_BIT_LAYOUTS[layout][1])
    if pixels.shape != expected or pixels.dtype != np.uint16:
        raise PictureError(f"16-bit TIFF decoded as {pixels.dtype} {pixels.shape}, not the {expected} its header declares")
    return pixels


def _decode_16bit_png(source: Path | io.BytesIO, size: tuple[int, int], layout: str) -> np.ndarray:
    """16-bit RGB, RGBA or gray+alpha PNG, which Pillow would reduce to 8 bits.

    ffmpeg reads the file's bytes from a pipe, as one packet: a path is never parsed (`%d` is a pattern to it).
    """
    data = source.read_bytes() if isinstance(source, Path) else source.getvalue()
    pix_fmt, channels = _SIXTEEN_BIT_LAYOUTS[layout]
    whole = ["-f", "image2pipe", "-frame_size", str(len(data)), "-c:v", "png", "-i", "-"]
    out = _ffmpeg([*whole, "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", pix_fmt, "-"], data)
    width, height = size
    expected = width * height * channels * 2
    if len(out) != expected:
        raise PictureError(f"corrupt or truncated 16-bit image ({len(out)} of {expected} bytes decoded)")
    return np.frombuffer(out, "<u2").reshape(height, width, channels).astype(np.uint16)


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the EXIF orientation to the pixels, so every output is stored upright."""
    if orientation in (2, 4, 5, 7):
        pixels = pixels[:, ::-1]
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else np.ascontiguousarray(pixels)


def _split_alpha(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
        color = pixels[..., :-1]
        return np.ascontiguousarray(color[..., 0] if color.shape[2] == 1 else color), pixels[..., -1].copy()
    return pixels, None


# -- writing ---------------------------------------------------------------------------------


def pillow_encodes(fmt: str) -> bool:
    """Pillow encodes `fmt` (PNG and TIFF have writers of their own): 8-bit RGB is best handed over as RGBX,
    Pillow's own layout, which it encodes in place; the other writers want plain, contiguous RGB."""
    return fmt not in ("PNG", "TIFF")


def encode_picture(picture: Picture, fmt: str, path: Path | BinaryIO, tiff_compression: str = DEFAULT_TIFF_COMPRESSION) -> None:
    """Write `picture` as `fmt` to `path` or a seekable binary stream (the caller makes that a temporary file)."""
    if picture.bits == 16 and fmt not in _SIXTEEN_BIT_FORMATS:
        picture = _to_8bit(picture)
    if fmt in ("JPEG", "BMP") and picture.alpha is not None:  # no alpha in these files: composite on white
        picture = _flatten_on_white(picture)
    if fmt in ("PNG", "TIFF"):  # encoded from the pixels, any depth and layout: no full-size copy
        exif = _resized_exif(picture.exif, picture.size) if picture.exif else None
        if fmt == "PNG":
            write_png(path, picture.color, picture.alpha, picture.icc, exif)
        else:
            write_tiff(path, picture.color, picture.alpha, picture.icc, exif, tiff_compression)
        return
    img = _to_pillow(picture)
    options: dict[str, object] = {}
    if picture.icc and fmt != "BMP":
        options["icc_profile"] = picture.icc
    if picture.exif and fmt != "BMP":
        options["exif"] = _resized_exif(picture.exif, picture.size)
    if fmt == "JPEG":
        options.update(quality=95, subsampling=0)
    elif fmt == "WEBP":
        options.update(quality=95, method=4)
    if img.mode == "RGBX" and fmt == "BMP":
        img = img.convert("RGB")
    img.save(path, format=fmt, **options)


def _resized_exif(exif_bytes: bytes, size: tuple[int, int]) -> bytes:
    """The EXIF with its recorded pixel dimensions brought up to date."""
    exif = Image.Exif()
    exif.load(exif_bytes)
    if _EXIF_IFD not in exif:  # get_ifd would add an empty IFD, which the TIFF writer rejects
        return exif.tobytes()
    details = exif.get_ifd(_EXIF_IFD)
    if _PIXEL_X in details or _PIXEL_Y in details:
        details[_PIXEL_Y], details[_PIXEL_X] = size
    return exif.tobytes()


def to_depth(pixels: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """uint8 or uint16 pixels at the other depth: widened exactly (x 257), or narrowed to the nearest (x * 255 / 65535).

    The one conversion between depths: writers, scores and the pipe all round the same way.
    """
    if pixels.dtype == dtype:
        return pixels
    if dtype == np.uint8:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return pixels.astype(np.uint16) * 257


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    return to_depth(pixels, np.uint8)


def _to_8bit(picture: Picture) -> Picture:
    return replace(picture, color=to_uint8(picture.color), alpha=None if picture.alpha is None else to_uint8(picture.alpha))


def _to_pillow(picture: Picture) -> Image.Image:
    color = picture.color
    if picture.alpha is None and color.ndim == 3 and color.dtype == np.uint8 and color.strides == (color.shape[1] * 4, 4, 1):
        # The RGB view of an RGBX buffer (the engine's output): Pillow encodes it in place, no copy.
        padded = np.lib.stride_tricks.as_strided(color, (*color.shape[:2], 4), (color.shape[1] * 4, 4, 1))
        return Image.frombuffer("RGBX", (color.shape[1], color.shape[0]), padded, "raw", "RGBX", 0, 1)
    if picture.alpha is None:
        return Image.fromarray(color)
    stacked = np.dstack([picture.color, picture.alpha])
    return Image.fromarray(stacked, mode="RGBA" if picture.color.ndim == 3 else "LA")


def _flatten_on_white(picture: Picture) -> Picture:
    """Composite 8-bit colour over white: c * a + 255 * (1 - a), in integers."""
    assert picture.alpha is not None
    a = (picture.alpha if picture.color.ndim == 2 else picture.alpha[..., None]).astype(np.uint32)
    color = (picture.color.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return replace(picture, color=color.astype(np.uint8), alpha=None)


def _ffmpeg(args: list[str], stdin: bytes) -> bytes:
    import imageio_ffmpeg  # only 16-bit RGB(A) decoding needs it: kept out of every other command's imports

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    # A session of its own: a Ctrl-C at the terminal stops the run between files, not an encode in flight.
    result = subprocess.run([exe, "-v", "error", "-nostdin", *args], input=stdin or None, capture_output=True, check=False,
                            start_new_session=True)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip().splitlines()
        raise PictureError(f"ffmpeg failed: {message[-1] if message else result.returncode}")
    return result.stdout
