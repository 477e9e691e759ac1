"""TIFF through tifffile: strips compressed with deflate (the default), LZW or zstd; BigTIFF past 4 GiB; ICC and EXIF kept.

Strips, not tiles: ffmpeg's TIFF decoder (and older readers) read tiled files wrongly. Each strip
is cut from views into the picture and encoded only when tifffile writes it, so writing holds one
strip beside the pixels, whatever their size. tifffile writes no Exif sub-IFD (its TiffWriter says
so), so EXIF goes in after the pixels: Pillow lays the EXIF out at the end of the file, then a
new first directory follows it, holding tifffile's entries and the EXIF's (the file's own layout
wins), and the header is pointed at it; tifffile's first directory stays behind unused, a few
hundred bytes. A BigTIFF's sub-IFDs would need the 8-byte offsets that Pillow does not write,
so a picture past classic TIFF's 4 GiB keeps its ICC profile but not its EXIF.

Reading: the 16-bit layouts Pillow would reduce to 8 bits are decoded here, in-process.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image

from upscaler.io.formats import DEFAULT_TIFF_COMPRESSION, TIFF_COMPRESSIONS

# Tags that describe how a file's pixels are stored, not the photo: a TIFF's EXIF (Pillow's getexif())
# returns them, and carried into another file they would contradict its real layout.
LAYOUT_TAGS = frozenset({256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 338, 339, 513, 514,
                         34675})  # 34675: the file's own ICC profile, carried (or dropped) as `icc` instead
_STRIP_BYTES = 1 << 18  # tifffile's own choice for compressed strips: about 256 KiB of pixels each
_CLASSIC_LIMIT = (1 << 32) - (1 << 25)  # tifffile's own margin below classic TIFF's 32-bit offsets
_ENTRY = struct.Struct("<HHI4s")


def write_tiff(out: Path | BinaryIO, color: np.ndarray, alpha: np.ndarray | None = None, icc: bytes | None = None,
               exif: bytes | None = None, compression: str = DEFAULT_TIFF_COMPRESSION) -> None:
    """HxWx3 or HxW `color` (uint8 or uint16) and an optional HxW `alpha` of the same type, to a path or a seekable stream it can read back.

    16-bit gray with alpha is stored as RGB + alpha: Pillow, and most readers, open no 16-bit gray-alpha TIFF.
    """
    height, width = color.shape[:2]
    if alpha is None:
        planes = [color]
    else:
        planes = [color] if color.ndim == 3 else [color[..., None]] * (3 if color.itemsize == 2 else 1)
        planes.append(alpha[..., None])
    channels = sum(plane.shape[2] if plane.ndim == 3 else 1 for plane in planes)
    rows = max(1, min(height, _STRIP_BYTES // (width * channels * color.itemsize)))
    bigtiff = height * width * channels * color.itemsize > _CLASSIC_LIMIT
    tag = TIFF_COMPRESSIONS[compression]
    with open(out, "w+b") if isinstance(out, Path) else nullcontext(out) as stream:
        start = stream.tell()
        # Named here: tifffile takes a stream's `name` for a path, and os.fdopen's (the atomic writer's) is an int.
        handle = tifffile.FileHandle(stream, "wb", name="upscaler output", size=0)
        with tifffile.TiffWriter(handle, bigtiff=bigtiff, byteorder="<") as tif:
            tif.write(_strips(planes, rows, tag), shape=(height, width, channels) if channels > 1 else (height, width),
                      dtype=color.dtype, photometric="minisblack" if channels < 3 else "rgb",
                      planarconfig="contig" if channels > 1 else None,
                      extrasamples=["unassalpha"] if alpha is not None else None, rowsperstrip=rows,
                      compression=tag, predictor=tag != 1, iccprofile=icc, metadata=None, software=False)
        if exif and not bigtiff:
            _attach_exif(stream, start, exif)


def _strips(planes: list[np.ndarray], rows: int, compression: int) -> Iterator[bytes]:
    """The picture's strips, top to bottom, each interleaved from the planes and encoded only when it is written.

    tifffile takes a single page's strips from an iterator only as encoded bytes, so the horizontal
    predictor and the codec are applied here, with tifffile's own functions for them.
    """
    encode = tifffile.TIFF.COMPRESSORS[compression] if compression != 1 else None
    for top in range(0, planes[0].shape[0], rows):
        parts = [plane[top : top + rows] for plane in planes]
        strip = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2), dtype="<" + parts[0].dtype.char)
        if encode is None:
            yield strip.tobytes()
        else:
            yield encode(tifffile.TIFF.PREDICTORS[2](strip, axis=1))


def _attach_exif(stream: BinaryIO, start: int, exif: bytes) -> None:
    """Append the EXIF and a first directory that carries it (offsets count from `start`, the TIFF's first byte)."""
    stream.seek(start)
    head = stream.read(8)
    (first,) = struct.unpack_from("<I", head, 4)
    stream.seek(start + first)
    (count,) = struct.unpack("<H", stream.read(2))
    entries = _entries(stream.read(count * _ENTRY.size))
    stream.seek(0, io.SEEK_END)
    at = _aligned(stream, start)
    tags = Image.Exif()
    tags.load(exif)
    tags.endian = "<"
    laid_out = tags.tobytes(at)[len(b"Exif\x00\x00") + 8 :]  # its directory at `at`, sub-IFDs after it
    (exif_count,) = struct.unpack_from("<H", laid_out)
    for tag, entry in _entries(laid_out[2 : 2 + exif_count * _ENTRY.size]).items():
        if tag not in LAYOUT_TAGS:
            entries[tag] = entry
    stream.write(laid_out)
    directory = _aligned(stream, start)
    stream.write(struct.pack("<H", len(entries)) + b"".join(entries[tag] for tag in sorted(entries)) + bytes(4))
    stream.seek(start + 4)
    stream.write(struct.pack("<I", directory))
    stream.seek(0, io.SEEK_END)


def _entries(data: bytes) -> dict[int, bytes]:
    """12-byte classic-TIFF directory entries by tag."""
    return {_ENTRY.unpack_from(data, i)[0]: data[i : i + _ENTRY.size] for i in range(0, len(data), _ENTRY.size)}


def _aligned(stream: BinaryIO, start: int) -> int:
    """The stream's end, padded to a word boundary (TIFF offsets point at words), as an offset in the TIFF."""
    at = stream.tell() - start
    if at % 2:
        stream.write(b"\x00")
        at += 1
    return at


def read_tiff_pixels(source: Path | io.BytesIO) -> np.ndarray:
    """The first page's samples, HxWxS in native byte order (raises ValueError and kin for a broken file)."""
    with tifffile.TiffFile(source) as tif:
        page = tif.pages.first
        pixels = page.asarray()
        if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and pixels.ndim == 3:
            pixels = np.moveaxis(pixels, 0, 2)
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
