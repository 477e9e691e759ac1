"""A streaming TIFF writer for 16-bit RGB(A), which Pillow cannot write: ICC and EXIF kept, memory one strip.

Little-endian baseline TIFF with uncompressed strips of about 1 MiB, written straight from the
pixel arrays. The directory (with every strip's offset and size) comes before the pixels, so
the file can go to a pipe, and encoding needs memory for one strip whatever the picture's size.
Uncompressed, because compressed strip sizes would only be known after the pixels; TIFF's
PackBits (what ffmpeg wrote before) barely shrinks 16-bit photos anyway. EXIF tags are
serialised by Pillow, Exif sub-IFD included, at the offset where they land. The file's own
layout tags win over any of the same number in the EXIF.
"""

from __future__ import annotations

import errno
import struct
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

_HEADER = b"II*\x00"  # little-endian
_STRIP_BYTES = 1 << 20
_SHORT, _LONG, _UNDEFINED = 3, 4, 7
_WIDTH, _HEIGHT, _BITS, _COMPRESSION, _PHOTOMETRIC = 256, 257, 258, 259, 262
_STRIP_OFFSETS, _SAMPLES, _ROWS_PER_STRIP, _STRIP_COUNTS, _PLANAR, _EXTRA_SAMPLES = 273, 277, 278, 279, 284, 338
_ICC_PROFILE = 34675
_UNASSOCIATED_ALPHA = 2
_LARGEST = (1 << 32) - 1  # classic TIFF's offsets are 32 bits


def write_tiff16(path: Path | BinaryIO, color: np.ndarray, alpha: np.ndarray | None = None, icc: bytes | None = None,
                 exif: bytes | None = None) -> None:
    """Write HxWx3 (or HxW gray, stored as RGB) uint16 `color` with an optional HxW uint16 `alpha`."""
    height, width = color.shape[:2]
    channels = 3 + (alpha is not None)
    row_bytes = width * channels * 2
    rows = max(1, min(height, _STRIP_BYTES // row_bytes))
    head = bytearray(_HEADER + bytes(4))  # the directory's offset goes in the last four bytes
    entries: dict[int, bytes] = {}
    if exif:
        tags = Image.Exif()
        tags.load(exif)
        tags.endian = "<"
        start = len(head)
        head += tags.tobytes(start)[len(b"Exif\x00\x00") + 8 :]  # its directory alone, laid out for this offset
        entries.update(_entries(head, start))
        _align(head)
    if icc:
        entries[_ICC_PROFILE] = _entry(_ICC_PROFILE, _UNDEFINED, len(icc), icc if len(icc) <= 4 else len(head))
        if len(icc) > 4:
            head += icc
            _align(head)
    strips = [(top, min(rows, height - top)) for top in range(0, height, rows)]
    own: dict[int, tuple[int, list[int]]] = {
        _WIDTH: (_LONG, [width]), _HEIGHT: (_LONG, [height]), _BITS: (_SHORT, [16] * channels),
        _COMPRESSION: (_SHORT, [1]), _PHOTOMETRIC: (_SHORT, [2]), _STRIP_OFFSETS: (_LONG, [0] * len(strips)),
        _SAMPLES: (_SHORT, [channels]), _ROWS_PER_STRIP: (_LONG, [rows]),
        _STRIP_COUNTS: (_LONG, [count * row_bytes for _, count in strips]), _PLANAR: (_SHORT, [1]),
    }
    if alpha is not None:
        own[_EXTRA_SAMPLES] = (_SHORT, [_UNASSOCIATED_ALPHA])
    for tag in own:
        entries.pop(tag, None)
    directory_at = len(head)
    arrays_at = directory_at + 2 + 12 * (len(entries) + len(own)) + 4
    pixels_at = arrays_at + sum(size for kind, values in own.values() if (size := len(_values(kind, values))) > 4)
    if pixels_at + height * row_bytes > _LARGEST:
        raise OSError(errno.EFBIG, "over classic TIFF's 4 GiB; write PNG instead")
    own[_STRIP_OFFSETS] = (_LONG, [pixels_at + top * row_bytes for top, _ in strips])
    arrays = bytearray()
    for tag, (kind, values) in own.items():
        data = _values(kind, values)
        entries[tag] = _entry(tag, kind, len(values), data if len(data) <= 4 else arrays_at + len(arrays))
        if len(data) > 4:
            arrays += data  # shorts and longs: always an even length, so every offset stays on a word
    struct.pack_into("<I", head, 4, directory_at)
    directory = struct.pack("<H", len(entries)) + b"".join(entries[tag] for tag in sorted(entries)) + struct.pack("<I", 0)
    with open(path, "wb") if isinstance(path, Path) else nullcontext(path) as out:
        out.write(bytes(head) + directory + bytes(arrays))
        for top, count in strips:
            out.write(_strip(color[top : top + count], None if alpha is None else alpha[top : top + count]).data)


def _strip(color: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Rows as the file stores them: samples interleaved, little-endian."""
    planes = [color] if color.ndim == 3 else [color[..., None]] * 3
    if alpha is not None:
        planes.append(alpha[..., None])
    return np.ascontiguousarray(np.concatenate(planes, axis=2) if len(planes) > 1 else planes[0], dtype="<u2")


def _values(kind: int, values: list[int]) -> bytes:
    return struct.pack(f"<{len(values)}{'H' if kind == _SHORT else 'I'}", *values)


def _entry(tag: int, kind: int, count: int, value: bytes | int) -> bytes:
    """One 12-byte directory entry: a value of four bytes or fewer inline, else the offset of its bytes."""
    inline = value.ljust(4, b"\x00") if isinstance(value, bytes) else struct.pack("<I", value)
    return struct.pack("<HHI", tag, kind, count) + inline


def _entries(data: bytearray, directory: int) -> dict[int, bytes]:
    """The 12-byte entries of the directory at `directory`, by tag."""
    (count,) = struct.unpack_from("<H", data, directory)
    raw = [bytes(data[directory + 2 + i * 12 : directory + 14 + i * 12]) for i in range(count)]
    return {struct.unpack_from("<H", entry)[0]: entry for entry in raw}


def _align(data: bytearray) -> None:
    """TIFF offsets point at word boundaries."""
    if len(data) % 2:
        data += b"\x00"
