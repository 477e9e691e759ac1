"""ICC and EXIF for a TIFF that another encoder wrote, added as tags without moving a byte of it.

ffmpeg writes the 16-bit RGB(A) TIFF that Pillow cannot, but keeps no ICC profile and no EXIF.
The file's strips and its first IFD's entries stay where they are. Appended after them: the
EXIF tags (serialised by Pillow with their Exif sub-IFD, offsets already absolute), the
profile, and a new first IFD listing the old entries and the new ones. The header is then
pointed at the new IFD. Where both have a tag, the file's own entry wins: it describes the
pixels.
"""

from __future__ import annotations

import struct

from PIL import Image

_HEADER = b"II*\x00"  # little-endian TIFF, as ffmpeg writes it
_ICC_PROFILE = 34675
_UNDEFINED = 7
_ENTRY = 12


def add_metadata(tiff: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    """`tiff` with `icc` and the tags of `exif` (an EXIF block as Pillow writes it) in its first IFD."""
    if not icc and not exif:
        return tiff
    if not tiff.startswith(_HEADER):
        raise ValueError("not a little-endian TIFF")
    out = bytearray(tiff)
    (first,) = struct.unpack_from("<I", out, 4)
    entries = _entries(out, first)
    if exif:
        tags = Image.Exif()
        tags.load(exif)
        tags.endian = "<"
        _align(out)
        serialised = tags.tobytes(len(out))[len(b"Exif\x00\x00") + 8 :]  # the IFD alone, laid out for this offset
        start = len(out)
        out += serialised
        for tag, entry in _entries(out, start).items():
            entries.setdefault(tag, entry)
    if icc:
        _align(out)
        value = icc.ljust(4, b"\x00") if len(icc) <= 4 else struct.pack("<I", len(out))  # four bytes or fewer: inline
        entries[_ICC_PROFILE] = struct.pack("<HHI", _ICC_PROFILE, _UNDEFINED, len(icc)) + value
        if len(icc) > 4:
            out += icc
    _align(out)
    struct.pack_into("<I", out, 4, len(out))
    out += struct.pack("<H", len(entries)) + b"".join(entries[tag] for tag in sorted(entries)) + struct.pack("<I", 0)
    return bytes(out)


def _entries(data: bytearray, ifd: int) -> dict[int, bytes]:
    """The 12-byte entries of the IFD at `ifd`, by tag."""
    (count,) = struct.unpack_from("<H", data, ifd)
    raw = [bytes(data[ifd + 2 + i * _ENTRY : ifd + 2 + (i + 1) * _ENTRY]) for i in range(count)]
    return {struct.unpack_from("<H", entry)[0]: entry for entry in raw}


def _align(data: bytearray) -> None:
    """TIFF offsets point at word boundaries."""
    if len(data) % 2:
        data += b"\x00"
