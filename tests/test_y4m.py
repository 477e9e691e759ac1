"""The y4m reader and writer in-process: header fields, errors word for word, frame bytes and planes.

The pipe tests (tests/test_pipe.py) run these through the real command and FFmpeg; these pin the
parser's own contract fast enough to run for every mutant of io/y4m.py.
"""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from upscaler.io.colour import RANGE_FULL, RANGE_LIMITED, frame_planes
from upscaler.io.y4m import (
    MAGIC,
    TruncatedFrame,
    Y4MError,
    Y4MHeader,
    read_exactly,
    read_frames,
    read_header,
)


def header_of(text: str) -> Y4MHeader:
    return read_header(io.BytesIO(text.encode()))


class Trickle(io.RawIOBase):
    """A pipe that hands out at most `step` bytes per read, as a slow producer does."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step, self._at = data, step, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._at : self._at + size]
        self._at += len(chunk)
        return chunk


def test_a_full_header_is_read_field_by_field_and_unknown_tags_are_kept_in_order() -> None:
    header = header_of("YUV4MPEG2 W96 H64 F30000:1001 Ip A128:117 C422p10 XYSCSS=422P10 XCOLORRANGE=FULL\n")
    assert header == Y4MHeader(96, 64, Fraction(30000, 1001), "422p10", "p", "128:117",
                               ("XYSCSS=422P10", "XCOLORRANGE=FULL"))
    assert header.tags.range == RANGE_FULL
    assert header.layout.pix_fmt == "yuv422p10le"


def test_defaults_are_25_fps_progressive_square_pixels_420_and_limited_range() -> None:
    header = header_of("YUV4MPEG2 W2 H2\n")
    assert (header.rate, header.interlace, header.aspect, header.chroma, header.extras) == (Fraction(25), "p", "1:1", "420jpeg", ())
    assert header.tags.range == RANGE_LIMITED
    assert header_of("YUV4MPEG2 W2 H2 XCOLORRANGE=LIMITED\n").tags.range == RANGE_LIMITED


def test_a_repeated_tag_keeps_the_first_value_and_the_repeat_as_an_extra() -> None:
    header = header_of("YUV4MPEG2 W8 H4 W16 F24:1\n")
    assert (header.width, header.height, header.rate, header.extras) == (8, 4, Fraction(24), ("W16",))


@pytest.mark.parametrize(("data", "message"), [
    (b"", "no input (empty stream)"),
    (b"RIFF....WAVE", "not a y4m stream (it must start with YUV4MPEG2; for raw frames use --input rgb24 or rgb48)"),
    (MAGIC, "not a y4m stream (no header line)"),
    (MAGIC + b" W8 H8", "y4m header line is too long or unterminated"),
    (MAGIC + b" W8 " + b"X" * 5000 + b"\n", "y4m header line is too long or unterminated"),
    (MAGIC + b" H8\n", "y4m header lacks a valid W, H or F tag"),
    (MAGIC + b" W8\n", "y4m header lacks a valid W, H or F tag"),
    (MAGIC + b" Wx H8\n", "y4m header lacks a valid W, H or F tag"),
    (MAGIC + b" W8 H8 F25\n", "y4m header lacks a valid W, H or F tag"),
    (MAGIC + b" W8 H8 F25:1:1\n", "y4m header lacks a valid W, H or F tag"),
    (MAGIC + b" W8 H8 Cmono\n", "y4m chroma Cmono is not supported (4:2:0, 4:2:2, 4:4:4 at 8, 10, 12 or 16 bits are)"),
    (MAGIC + b" W0 H8\n", "y4m header has a bad size or rate (0x8, 25:1)"),
    (MAGIC + b" W8 H-2\n", "y4m header has a bad size or rate (8x-2, 25:1)"),
    (MAGIC + b" W8 H0\n", "y4m header has a bad size or rate (8x0, 25:1)"),
    (MAGIC + b" W8 H8 F25:0\n", "y4m header has a bad size or rate (8x8, 25:0)"),
    (MAGIC + b" W8 H8 F0:1\n", "y4m header has a bad size or rate (8x8, 0:1)"),
    (MAGIC + b" W8 H8 It\n", "y4m is interlaced (It: top field first); deinterlace it first, e.g. ffmpeg -i IN -vf bwdif -f yuv4mpegpipe -"),
    (MAGIC + b" W8 H8 Ib\n", "y4m is interlaced (Ib: bottom field first); deinterlace it first, e.g. ffmpeg -i IN -vf bwdif -f yuv4mpegpipe -"),
    (MAGIC + b" W8 H8 Im\n", "y4m is interlaced (Im: mixed fields); deinterlace it first, e.g. ffmpeg -i IN -vf bwdif -f yuv4mpegpipe -"),
])
def test_a_bad_header_is_refused_with_its_cause(data: bytes, message: str) -> None:
    with pytest.raises(Y4MError) as caught:
        read_header(io.BytesIO(data))
    assert str(caught.value) == message


def test_a_header_line_of_4095_bytes_is_read_and_one_of_4096_is_not() -> None:
    head = " W8 H8 X"
    fits = MAGIC + (head + "a" * (4095 - len(head))).encode() + b"\n"
    assert header_of(fits.decode()).extras[0].startswith("Xa")
    with pytest.raises(Y4MError, match="too long"):
        read_header(io.BytesIO(MAGIC + (head + "a" * (4096 - len(head))).encode() + b"\n"))


def test_the_header_is_read_through_a_pipe_that_hands_out_one_byte_at_a_time() -> None:
    stream = Trickle(b"YUV4MPEG2 W4 H2 F50:1 C444\nFRAME\n" + bytes(range(24)), step=1)
    header = read_header(stream)  # type: ignore[arg-type]
    assert (header.width, header.height, header.rate, header.chroma) == (4, 2, Fraction(50), "444")
    assert stream.read(6) == b"F"  # the header line was consumed exactly, up to its newline


@pytest.mark.parametrize(("chroma", "pix_fmt", "frame_bytes"), [
    ("420jpeg", "yuv420p", 5 * 3 + 2 * 3 * 2), ("420mpeg2", "yuv420p", 15 + 12), ("420paldv", "yuv420p", 27), ("420", "yuv420p", 27),
    ("422", "yuv422p", 15 + 2 * 3 * 3), ("444", "yuv444p", 15 * 3),
    ("420p10", "yuv420p10le", 27 * 2), ("422p12", "yuv422p12le", 33 * 2), ("444p16", "yuv444p16le", 45 * 2),
])
def test_an_odd_sized_frame_rounds_its_chroma_planes_up(chroma: str, pix_fmt: str, frame_bytes: int) -> None:
    header = Y4MHeader(5, 3, chroma=chroma)
    assert header.layout.pix_fmt == pix_fmt
    assert header.frame_bytes == frame_bytes


def test_scaled_multiplies_the_size_and_keeps_everything_else() -> None:
    header = Y4MHeader(6, 4, Fraction(24000, 1001), "444p10", "p", "4:3", ("XCOLORRANGE=FULL",))
    assert header.scaled(4) == Y4MHeader(24, 16, Fraction(24000, 1001), "444p10", "p", "4:3", ("XCOLORRANGE=FULL",))


def test_encode_writes_ffmpegs_field_order_and_reads_back_the_same() -> None:
    header = Y4MHeader(6, 4, Fraction(24000, 1001), "444p10", "p", "4:3", ("XCOLORRANGE=FULL",))
    assert header.encode() == b"YUV4MPEG2 W6 H4 F24000:1001 Ip A4:3 C444p10 XCOLORRANGE=FULL\n"
    assert read_header(io.BytesIO(header.encode())) == header


@given(width=st.integers(1, 9), height=st.integers(1, 9), chroma=st.sampled_from(["420jpeg", "422", "444", "420p10", "444p16"]),
       frames=st.integers(0, 3), seed=st.integers(0, 2**32 - 1))
def test_frames_come_back_plane_by_plane_exactly(width: int, height: int, chroma: str, frames: int, seed: int) -> None:
    header = Y4MHeader(width, height, chroma=chroma)
    layout = header.layout
    rng = np.random.default_rng(seed)
    top = 2 ** layout.bits - 1
    payloads = [rng.integers(0, top + 1, header.frame_bytes // np.dtype(layout.dtype).itemsize).astype(layout.dtype)
                for _ in range(frames)]
    stream = io.BytesIO(b"".join(b"FRAME\n" + p.tobytes() for p in payloads))
    decoded = list(read_frames(stream, header))
    assert len(decoded) == frames
    cw, ch = -(-width // layout.chroma_w), -(-height // layout.chroma_h)
    for frame, payload in zip(decoded, payloads, strict=True):
        assert (frame.width, frame.height, frame.format.name) == (width, height, layout.pix_fmt)
        y, u, v = frame_planes(frame, layout)
        assert y.shape == (height, width) and u.shape == v.shape == (ch, cw)
        np.testing.assert_array_equal(np.concatenate([y.ravel(), u.ravel(), v.ravel()]), payload)


def test_frame_parameters_after_the_marker_are_skipped() -> None:
    header = Y4MHeader(2, 2, chroma="444")
    stream = io.BytesIO(b"FRAME Ixyz XFOO=1\n" + bytes(range(12)))
    (frame,) = read_frames(stream, header)
    assert [p.ravel().tolist() for p in frame_planes(frame, header.layout)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_frames_arrive_whole_through_a_pipe_that_trickles() -> None:
    header = Y4MHeader(4, 4, chroma="420jpeg")
    body = b"".join(b"FRAME\n" + bytes([i]) * header.frame_bytes for i in range(3))
    frames = list(read_frames(Trickle(body, step=5), header))  # type: ignore[arg-type]
    assert [int(frame_planes(f, header.layout)[1][0, 0]) for f in frames] == [0, 1, 2]


def test_a_missing_frame_marker_names_the_frame() -> None:
    header = Y4MHeader(2, 2, chroma="444")
    stream = io.BytesIO(b"FRAME\n" + bytes(12) + b"FRAMX\n" + bytes(12))
    frames = read_frames(stream, header)
    next(frames)
    with pytest.raises(Y4MError) as caught:
        next(frames)
    assert str(caught.value) == "frame 2: expected a FRAME marker"


@pytest.mark.parametrize(("frames_before", "got"), [(0, 0), (0, 7), (2, 11)])
def test_a_frame_cut_short_says_how_much_arrived_and_which_frame(frames_before: int, got: int) -> None:
    header = Y4MHeader(2, 2, chroma="444")
    stream = io.BytesIO(b"".join(b"FRAME\n" + bytes(12) for _ in range(frames_before)) + b"FRAME\n" + bytes(got))
    frames = read_frames(stream, header)
    assert sum(1 for _ in range(frames_before) if next(frames)) == frames_before
    with pytest.raises(TruncatedFrame) as caught:
        next(frames)
    assert caught.value.index == frames_before
    assert str(caught.value) == f"frame {frames_before + 1} is truncated ({got} of 12 bytes); the frames before it were written"


def test_read_exactly_gathers_short_reads_and_stops_at_the_end() -> None:
    assert read_exactly(Trickle(b"abcdefghij", step=3), 8) == b"abcdefgh"  # type: ignore[arg-type]
    assert read_exactly(Trickle(b"abc", step=2), 8) == b"abc"  # type: ignore[arg-type]
    assert read_exactly(io.BytesIO(b"abc"), 0) == b""


def test_the_smallest_legal_header_is_one_pixel_at_one_frame_per_second() -> None:
    header = header_of("YUV4MPEG2 W1 H1 F1:1 C444\n")
    assert (header.width, header.height, header.rate, header.frame_bytes) == (1, 1, Fraction(1), 3)


def test_a_tag_with_bytes_that_are_not_ascii_is_kept_not_a_crash() -> None:
    header = read_header(io.BytesIO(MAGIC + b" W4 H2 XNAME=caf\xc3\xa9\n"))
    assert (header.width, header.extras) == (4, ("XNAME=caf\ufffd\ufffd",))
