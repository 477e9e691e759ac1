"""The pipe job: frames from a byte stream (y4m, or raw RGB of a given size) through the engine to another.

Frames are decoded on one thread, upscaled in the caller's, encoded on a third (`Stages`), so a
pipeline `ffmpeg | upscale pipe | ffmpeg` keeps all three busy. A y4m stream keeps its chroma
layout, bit depth, rate, aspect and tags; raw frames carry none of those, so y4m out needs y4m in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from upscaler.io import y4m
from upscaler.io.colour import MATRIX_NAMES, guess_matrix, open_converter
from upscaler.io.images import to_depth
from upscaler.io.stages import Stages

if TYPE_CHECKING:
    from upscaler.jobs import FrameEngine

RAW_DEPTHS: dict[str, type[np.unsignedinteger]] = {"rgb24": np.uint8, "rgb48": np.uint16}
QUEUE_DEPTH = 4  # frames each of the pipe's two queues holds (io/stages.py)


@dataclass(frozen=True)
class PipeSource:
    """What the input stream is: a y4m header, or raw RGB frames of a size and depth."""

    width: int
    height: int
    header: y4m.Y4MHeader | None = None
    raw_dtype: type[np.unsignedinteger] | None = None

    def bytes_in_flight(self, scale: int) -> int:
        """The most host memory its frames can hold at once: both queues full, one frame read, upscaled, written.

        Frames are whole (a pipe carries no tiles), so this is what bounds the pipe's memory, and it is
        known from the header before any frame is read.
        """
        itemsize = (1 if self.header.layout.bits == 8 else 2) if self.header is not None else np.dtype(self.raw_dtype).itemsize
        rgb_in = self.width * self.height * 3 * itemsize
        return (QUEUE_DEPTH + 2) * rgb_in * (1 + scale * scale)


def open_source(stdin: BinaryIO, kind: str, size: tuple[int, int] | None) -> PipeSource:
    """Read the y4m header (Y4MError if there is none), or take the raw frames' size as given."""
    if kind == "y4m":
        header = y4m.read_header(stdin)
        return PipeSource(header.width, header.height, header=header)
    assert size is not None
    return PipeSource(size[0], size[1], raw_dtype=RAW_DEPTHS[kind])


def raw_frames(stream: BinaryIO, width: int, height: int, dtype: type[np.unsignedinteger]) -> Iterator[np.ndarray]:
    """HxWx3 frames of `dtype` (little-endian) until the stream ends; TruncatedFrame for a partial last frame,
    Y4MError for a stream with no frame at all (raw frames have no header whose absence would tell)."""
    size = width * height * 3 * np.dtype(dtype).itemsize
    index = 0
    while data := y4m.read_exactly(stream, size):
        if len(data) < size:
            raise y4m.TruncatedFrame(index, len(data), size)
        yield np.frombuffer(data, dtype).astype(dtype, copy=True).reshape(height, width, 3)
        index += 1
    if index == 0:
        raise y4m.Y4MError("no input (empty stream)")


def run_pipe(engine: FrameEngine, source: PipeSource, stdin: BinaryIO, stdout: BinaryIO, output: str, matrix: str,
             on_frame: Callable[[], None]) -> None:
    """Every frame of `stdin` upscaled onto `stdout` as `output` (y4m, rgb24, rgb48); `matrix` auto or a name.

    BrokenPipeError when the reader goes, Y4MError for a bad or cut stream: the caller reports them.
    """
    scale, header = engine.scale, source.header
    if header is not None:
        fixed = MATRIX_NAMES.get(matrix)
        tags_in = replace(header.tags, matrix=fixed or guess_matrix(source.height))
        tags_out = replace(header.tags, matrix=fixed or guess_matrix(source.height * scale))
        pix_fmt = header.layout.pix_fmt
        converter = open_converter(engine.device, tags_in, pix_fmt, source.height, tags_out, pix_fmt, source.height * scale)
        frames = ((None, converter.to_rgb(frame)) for frame in y4m.read_frames(stdin, header))
    else:
        assert source.raw_dtype is not None
        frames = ((None, frame) for frame in raw_frames(stdin, source.width, source.height, source.raw_dtype))

    def write(_: None, rgb: np.ndarray) -> None:
        if output == "y4m":
            stdout.write(b"FRAME\n")
            stdout.writelines(np.ascontiguousarray(plane).data for plane in converter.planes_from_rgb(rgb))
        else:
            stdout.write(np.ascontiguousarray(to_depth(rgb, RAW_DEPTHS[output])).data)
        on_frame()

    if output == "y4m":
        assert header is not None
        stdout.write(header.scaled(scale).encode())
    Stages[None](QUEUE_DEPTH).run(frames, engine.stream, write)
    stdout.flush()
