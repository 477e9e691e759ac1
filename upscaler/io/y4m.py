"""YUV4MPEG2 (y4m) streams: what `ffmpeg -f yuv4mpegpipe` writes and reads, frame by frame.

A y4m stream is one text header line (size, rate, interlacing, aspect, chroma layout and
`X` extension tags such as FFmpeg's XCOLORRANGE), then per frame a `FRAME` line and the raw
Y, U, V planes. Frames are read into PyAV frames, so one colour converter serves files and pipes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np

from upscaler.io.colour import (
    RANGE_FULL,
    RANGE_LIMITED,
    ColourTags,
    YuvLayout,
    frame_from_planes,
    yuv_layout,
)

MAGIC = b"YUV4MPEG2"
_MAX_LINE = 4096
_FIELD_ORDERS = {"t": "top field first", "b": "bottom field first", "m": "mixed fields"}
# y4m chroma tags -> pixel formats (4:2:0 siting variants all read as planar 4:2:0).
_CHROMA = {
    "420jpeg": "yuv420p", "420paldv": "yuv420p", "420mpeg2": "yuv420p", "420": "yuv420p",
    "422": "yuv422p", "444": "yuv444p",
    "420p10": "yuv420p10le", "422p10": "yuv422p10le", "444p10": "yuv444p10le",
    "420p12": "yuv420p12le", "422p12": "yuv422p12le", "444p12": "yuv444p12le",
    "420p16": "yuv420p16le", "422p16": "yuv422p16le", "444p16": "yuv444p16le",
}


class Y4MError(ValueError):
    """The stream is not y4m this reader handles; the message names the cause."""


class TruncatedFrame(Y4MError):
    def __init__(self, index: int, got: int, expected: int) -> None:
        super().__init__(f"frame {index + 1} is truncated ({got} of {expected} bytes); the frames before it were written")
        self.index = index


@dataclass(frozen=True)
class Y4MHeader:
    width: int
    height: int
    rate: Fraction = Fraction(25)
    chroma: str = "420jpeg"
    interlace: str = "p"
    aspect: str = "1:1"
    extras: tuple[str, ...] = field(default=())  # X tags and tags this reader does not interpret, kept as written

    @property
    def layout(self) -> YuvLayout:
        layout = yuv_layout(_CHROMA[self.chroma])
        assert layout is not None
        return layout

    @property
    def tags(self) -> ColourTags:
        """Colour range from XCOLORRANGE (limited unless FULL); y4m carries no matrix."""
        full = "XCOLORRANGE=FULL" in self.extras
        return ColourTags(range=RANGE_FULL if full else RANGE_LIMITED)

    @property
    def frame_bytes(self) -> int:
        layout = self.layout
        item = 1 if layout.bits == 8 else 2
        chroma = -(-self.width // layout.chroma_w) * -(-self.height // layout.chroma_h)
        return (self.width * self.height + 2 * chroma) * item

    def scaled(self, scale: int) -> Y4MHeader:
        return replace(self, width=self.width * scale, height=self.height * scale)

    def encode(self) -> bytes:
        parts = [f"W{self.width}", f"H{self.height}", f"F{self.rate.numerator}:{self.rate.denominator}",
                 f"I{self.interlace}", f"A{self.aspect}", f"C{self.chroma}", *self.extras]
        return MAGIC + b" " + " ".join(parts).encode("ascii") + b"\n"


def _readline(stream: BinaryIO) -> bytes:
    line = bytearray()
    while len(line) < _MAX_LINE:
        byte = stream.read(1)
        if not byte:
            break
        if byte == b"\n":
            return bytes(line)
        line += byte
    raise Y4MError("not a y4m stream (no header line)") if not line else Y4MError("y4m header line is too long or unterminated")


def read_header(stream: BinaryIO) -> Y4MHeader:
    first = read_exactly(stream, len(MAGIC))  # a raw pipe may hand out fewer bytes than asked
    if not first:
        raise Y4MError("no input (empty stream)")
    if first != MAGIC:
        raise Y4MError("not a y4m stream (it must start with YUV4MPEG2; for raw frames use --input rgb24 or rgb48)")
    fields: dict[str, str] = {}
    extras: list[str] = []
    for token in _readline(stream).decode("ascii", "replace").split():
        key, value = token[0], token[1:]
        if key in "WHFICA" and key not in fields:
            fields[key] = value
        else:
            extras.append(token)
    try:
        width, height = int(fields["W"]), int(fields["H"])
        num, den = (int(v) for v in fields.get("F", "25:1").split(":"))
    except (KeyError, ValueError):
        raise Y4MError("y4m header lacks a valid W, H or F tag") from None
    chroma = fields.get("C", "420jpeg")
    if chroma not in _CHROMA:
        raise Y4MError(f"y4m chroma C{chroma} is not supported (4:2:0, 4:2:2, 4:4:4 at 8, 10, 12 or 16 bits are)")
    if width <= 0 or height <= 0 or den <= 0 or num <= 0:
        raise Y4MError(f"y4m header has a bad size or rate ({width}x{height}, {num}:{den})")
    interlace = fields.get("I", "p")
    if interlace in _FIELD_ORDERS:  # a model upscales pictures: two fields woven together would be smeared into one
        raise Y4MError(f"y4m is interlaced (I{interlace}: {_FIELD_ORDERS[interlace]}); deinterlace it first, "
                       "e.g. ffmpeg -i IN -vf bwdif -f yuv4mpegpipe -")
    return Y4MHeader(width, height, Fraction(num, den), chroma, interlace, fields.get("A", "1:1"),
                     tuple(extras))


def read_frames(stream: BinaryIO, header: Y4MHeader) -> Iterator[av.VideoFrame]:
    """Frames until the stream ends; TruncatedFrame if it ends inside one."""
    layout, size = header.layout, header.frame_bytes
    index = 0
    while True:
        marker = read_exactly(stream, 5)
        if not marker:
            return
        if marker != b"FRAME":
            raise Y4MError(f"frame {index + 1}: expected a FRAME marker")
        _readline(stream)  # frame parameters, if any, are not used
        data = read_exactly(stream, size)
        if len(data) < size:
            raise TruncatedFrame(index, len(data), size)
        yield frame_from_planes(_split_planes(data, header.width, header.height, layout), layout)
        index += 1


def read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = stream.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _split_planes(data: bytes, width: int, height: int, layout: YuvLayout) -> list[np.ndarray]:
    samples = np.frombuffer(data, layout.dtype)
    cw, ch = -(-width // layout.chroma_w), -(-height // layout.chroma_h)
    luma = width * height
    return [samples[:luma].reshape(height, width), samples[luma:luma + cw * ch].reshape(ch, cw),
            samples[luma + cw * ch:].reshape(ch, cw)]
