"""The streaming 16-bit TIFF writer: pixels, profile and EXIF read back exactly; memory one strip; 4 GiB refused."""

from __future__ import annotations

import errno
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from upscaler.io import tiff
from upscaler.io.images import read_picture, read_picture_bytes
from upscaler.io.tiff import write_tiff16


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 40), height=st.integers(1, 40), gray=st.booleans(), with_alpha=st.booleans(),
       icc=st.binary(max_size=300), make=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
       strip_bytes=st.sampled_from([1, 100, 1 << 20]), seed=st.integers(0, 2**32 - 1))
def test_pixels_and_metadata_read_back_exactly(width: int, height: int, gray: bool, with_alpha: bool, icc: bytes,
                                               make: str, strip_bytes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    color = rng.integers(0, 65536, (height, width) if gray else (height, width, 3), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (height, width), dtype=np.uint16) if with_alpha or gray else None
    exif = Image.Exif()
    exif[0x010F] = make
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiff, "_STRIP_BYTES", strip_bytes)  # one row per strip, a few rows, one strip
        out = io.BytesIO()
        write_tiff16(out, color, alpha, icc or None, exif.tobytes())
    back = read_picture_bytes(out.getvalue())
    expected = np.dstack([color] * 3) if gray else color
    assert np.array_equal(back.color, expected)
    assert (back.alpha is None) if alpha is None else (back.alpha is not None and np.array_equal(back.alpha, alpha))
    assert back.icc == (icc or None)
    with Image.open(io.BytesIO(out.getvalue())) as img:
        tags = img.getexif()
        assert tags.get(0x010F) == make and tags.get_ifd(0x8769) == {0x9003: "2024:05:06 07:08:09"}
        assert img.size == (width, height)


def test_the_files_own_layout_wins_over_the_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0100], exif[0x0101] = 1, 1  # ImageWidth and ImageLength left over from some other file
    color = np.full((5, 7, 3), 4242, np.uint16)
    write_tiff16(tmp_path / "t.tif", color, exif=exif.tobytes())
    assert np.array_equal(read_picture(tmp_path / "t.tif").color, color)


class _Recording(io.RawIOBase):
    """A pipe-like stream: it cannot seek, and it remembers the largest single write."""

    def __init__(self) -> None:
        self.largest, self.total = 0, 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        size = memoryview(data).nbytes
        self.largest, self.total = max(self.largest, size), self.total + size
        return size


def test_memory_is_one_strip_and_a_pipe_will_do() -> None:
    color = np.broadcast_to(np.uint16(1000), (3000, 2000, 3))  # 36 MB of pixels, none of them in memory
    sink = _Recording()
    write_tiff16(sink, color, np.broadcast_to(np.uint16(65535), (3000, 2000)))  # type: ignore[arg-type]
    assert sink.total > 3000 * 2000 * 4 * 2 and sink.largest <= tiff._STRIP_BYTES


def test_over_four_gib_is_refused_before_anything_is_written() -> None:
    sink = _Recording()
    with pytest.raises(OSError) as refused:
        write_tiff16(sink, np.broadcast_to(np.uint16(0), (30000, 30000, 3)))  # type: ignore[arg-type]
    assert refused.value.errno == errno.EFBIG and refused.value.strerror == "over classic TIFF's 4 GiB; write PNG instead"
    assert sink.total == 0


def _directory(head: bytes) -> dict[int, tuple[int, int, int]]:
    """The first directory's entries: tag -> (type, count, value or offset)."""
    (at,) = struct.unpack_from("<I", head, 4)
    (count,) = struct.unpack_from("<H", head, at)
    return {tag: (kind, n, value) for tag, kind, n, value in
            (struct.unpack_from("<HHII", head, at + 2 + 12 * i) for i in range(count))}


@pytest.mark.parametrize("icc_size", [1, 4, 5, 6, 301])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_every_offset_is_on_a_word_and_small_profiles_are_inline(icc_size: int, with_alpha: bool) -> None:
    exif = Image.Exif()
    exif[0x010F] = "odd"  # a 4-byte string: the EXIF block's own layout has odd lengths to pad
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    color = np.full((3, 5, 3), 7, np.uint16)
    out = io.BytesIO()
    icc = bytes(i % 251 for i in range(icc_size))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiff, "_STRIP_BYTES", 1)  # a strip per row: StripOffsets is an array
        write_tiff16(out, color, np.zeros((3, 5), np.uint16) if with_alpha else None, icc, exif.tobytes())
    data = out.getvalue()
    entries = _directory(data)
    assert struct.unpack_from("<I", data, 4)[0] % 2 == 0
    kind, count, value = entries[0x8773]  # ICC profile
    assert (kind, count) == (7, icc_size)
    if icc_size <= 4:
        assert struct.pack("<I", value)[:icc_size] == icc
    else:
        assert value % 2 == 0 and data[value : value + icc_size] == icc
    offsets = entries[273]
    assert offsets[1] == 3 and offsets[2] % 2 == 0
    starts = struct.unpack_from("<3I", data, offsets[2])
    sizes = struct.unpack_from("<3I", data, entries[279][2])
    assert all(o % 2 == 0 for o in starts) and sizes == (5 * (3 + with_alpha) * 2,) * 3
    assert starts[-1] + sizes[-1] == len(data)  # the strips end the file, nothing claimed past it
    assert entries[0x8769][2] % 2 == 0  # the Exif sub-IFD
    assert np.array_equal(read_picture_bytes(data).color, color)


def test_offsets_past_two_gib_are_written_unsigned() -> None:
    """A 3.5 GB picture (never in memory: one value broadcast) into a sink that keeps only the head of the file."""

    class Head(_Recording):
        def __init__(self) -> None:
            super().__init__()
            self.head = b""

        def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
            if not self.head:
                self.head = bytes(data)
            return super().write(data)

    sink = Head()
    write_tiff16(sink, np.broadcast_to(np.uint16(1), (24000, 24000, 3)))  # type: ignore[arg-type]
    kind, count, at = _directory(sink.head)[273]
    last = struct.unpack_from(f"<{count}I", sink.head, at)[-1]
    assert last > 1 << 31 and last + (24000 - (count - 1) * _directory(sink.head)[278][2]) * 24000 * 6 == sink.total
