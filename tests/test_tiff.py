"""Metadata added to a TIFF another encoder wrote: nothing of the file moves, every tag reads back."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from upscaler.io.tiff import add_metadata

from .conftest import photo_array


def _tiff(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="TIFF")  # little-endian, as ffmpeg's
    return out.getvalue()


@settings(max_examples=40, deadline=None)
@given(icc=st.binary(min_size=0, max_size=300), make=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
       width=st.integers(1, 9), height=st.integers(1, 9), odd_tail=st.booleans())
def test_added_tags_read_back_and_the_pixels_are_untouched(icc: bytes, make: str, width: int, height: int,
                                                           odd_tail: bool) -> None:
    pixels = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    original = _tiff(pixels) + (b"\x00" if odd_tail else b"")  # an odd length: what comes next must be realigned
    exif = Image.Exif()
    exif[0x010F] = make
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    tagged = add_metadata(original, icc or None, exif.tobytes())
    assert tagged[: len(original)][8:] == original[8:]  # only the header's IFD offset changes; the rest is appended
    (first,) = struct.unpack_from("<I", tagged, 4)
    assert first % 2 == 0
    with Image.open(io.BytesIO(tagged)) as img:
        assert np.array_equal(np.asarray(img), pixels)
        assert img.info.get("icc_profile") == (icc or None)
        tags = img.getexif()
        assert tags.get(0x010F) == make and tags.get_ifd(0x8769) == {0x9003: "2024:05:06 07:08:09"}


def test_the_files_own_tags_win_and_nothing_to_add_changes_nothing() -> None:
    original = _tiff(photo_array("chelsea.png"))
    assert add_metadata(original, None, None) is original
    exif = Image.Exif()
    exif[0x0100] = 1  # ImageWidth: a layout tag the EXIF must not override
    with Image.open(io.BytesIO(add_metadata(original, None, exif.tobytes()))) as img:
        assert img.size == (112, 75) and np.array_equal(np.asarray(img), photo_array("chelsea.png"))


def test_only_little_endian_files_are_taken() -> None:
    big_endian = b"MM\x00*" + _tiff(photo_array("chelsea.png"))[4:]
    with pytest.raises(ValueError, match="^not a little-endian TIFF$"):
        add_metadata(big_endian, b"profile", None)
