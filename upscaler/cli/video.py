"""`upscale video` and `upscale pipe`: frames streamed through the engine, from files or from stdin."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, BinaryIO

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from upscaler.cli.app import EXIT_FAILED, EXIT_INTERRUPTED, app, console, fail
from upscaler.cli.options import ClusterOption, open_engine_or_fail, run_options
from upscaler.engine.settings import RunSettings

_PIPE_BYTES = 1 << 20


class Codec(str, Enum):
    auto = "auto"
    libx264 = "libx264"
    libx265 = "libx265"
    libsvtav1 = "libsvtav1"
    ffv1 = "ffv1"
    h264_nvenc = "h264_nvenc"
    hevc_nvenc = "hevc_nvenc"


class PipeFormat(str, Enum):
    y4m = "y4m"
    rgb24 = "rgb24"
    rgb48 = "rgb48"


class Matrix(str, Enum):
    auto = "auto"
    bt709 = "bt709"
    bt601 = "bt601"
    bt2020 = "bt2020"


def _progress() -> Progress:
    columns = (
        TextColumn("[bold]upscale[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
        TextColumn("{task.fields[rate]:.2f} fps"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=False)


class _Rate:
    """Frames done and frames per second since the start, for the progress bar and the summary."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.frames = 0

    def tick(self, frames: int = 1) -> float:
        self.frames += frames
        return self.frames / max(self.elapsed, 1e-9)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _summary(title: str, rows: list[tuple[str, str]], rate: _Rate, frame_pixels: int) -> None:
    """The command's own rows, then wall time, frames/s and input megapixels/s of this run."""
    seconds = max(rate.elapsed, 1e-9)
    rows = [*rows, ("wall time", f"{rate.elapsed:.2f} s"), ("frames/s", f"{rate.frames / seconds:.2f}"),
            ("input megapixels/s", f"{rate.frames * frame_pixels / 1e6 / seconds:.3f}")]
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


@app.command("video")
@run_options
def upscale_video(
    source: Annotated[Path, typer.Argument(help="Video to upscale (anything FFmpeg reads).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output file; its suffix picks the container (.mkv holds every kind of stream).")],
    settings: RunSettings,
    codec: Annotated[Codec, typer.Option(help="Video encoder; auto: NVENC on CUDA where available, else libx264 (8-bit) or libx265 (10-bit).")] = Codec.auto,
    crf: Annotated[int | None, typer.Option(min=0, max=63, help="Quality (lower is better) [default: the encoder's sensible one].")] = None,
    preset: Annotated[str | None, typer.Option(help="Encoder speed preset (e.g. medium, slow; p1-p7 for NVENC).")] = None,
    pix_fmt: Annotated[str | None, typer.Option("--pix-fmt", help="Output pixel format [default: the source's chroma family and depth].")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue an interrupted run of the same command from its last complete segment.")] = True,
    segment_seconds: Annotated[float, typer.Option(min=0.0, help="Resume granularity and unit of cluster work: segments are cut at the first keyframe after this long.")] = 10.0,
    cluster: ClusterOption = None,
) -> None:
    """Upscale a video: audio, subtitles and attachments copied, timestamps, colour and rotation kept.

    OUT appears only when complete. The work is kept in segments in a hidden folder beside OUT;
    after Ctrl-C, a kill or a crash, the same command encodes only the missing segments. With
    --cluster, Ray workers encode the segments in parallel and this process joins them.
    """
    try:
        _video(source, out, settings, codec, crf, preset, pix_fmt, resume, segment_seconds, cluster)
    except KeyboardInterrupt:
        raise fail("interrupted before any frame was upscaled", EXIT_INTERRUPTED) from None


def _video(source: Path, out: Path, settings: RunSettings, codec: Codec, crf: int | None, preset: str | None,
           pix_fmt: str | None, resume: bool, segment_seconds: float, cluster: str | None) -> None:
    from upscaler.io import video as v

    if not source.is_file():
        raise fail(f"{source}: no such file", EXIT_FAILED)
    if out.exists() and out.resolve() == source.resolve():
        raise fail(f"{out}: is the input; choose another output name")
    try:
        info = v.probe(source)
        plan = v.plan_segments(info, segment_seconds)
    except v.VideoError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    engine = open_engine_or_fail(settings)
    scale = engine.scale
    try:
        codec_name = v.choose_codec(codec.value, info.bits, engine.plan.device.type == "cuda")
        encoding = v.encode_settings(codec_name, crf, preset, pix_fmt or v.default_pix_fmt(info.pix_fmt, codec_name),
                                     info.hdr, out)
        encoding.check(info, info.width * scale, info.height * scale)
        warnings = v.check_streams(info, out)
    except v.VideoError as exc:
        raise fail(str(exc)) from None
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    with ExitStack() as resources:
        backend = engine.description
        if cluster is not None:
            from upscaler.cluster.video import SegmentPool

            try:
                pool = resources.enter_context(SegmentPool.started(cluster, settings))
            except RuntimeError as exc:  # no Ray, a bad address, an engine that does not open on the workers
                raise fail(str(exc)) from None
            backend = pool.info.backend  # the workers' own, so a resume finds the same key whatever their number
        key = v.job_key(source, encoding, engine.model.source, scale, backend, segment_seconds)
        work = v.WorkFolder(out, key)
        if resume and work.load():
            console.print(f"resuming: {len(work.segments)} segment(s), {work.frames} frame(s) already done", highlight=False)
        elif not resume:
            work.clear()
        rate = _Rate()
        interrupted = False
        with _progress() as progress:
            task = progress.add_task("video", total=info.frames_estimate or None, completed=work.frames, rate=0.0)

            def on_frames(count: int) -> None:
                progress.update(task, advance=count, rate=rate.tick(count))

            try:
                if cluster is None:
                    converter = v.converter_for(info, encoding, scale, engine.plan.device)
                    stats = v.encode_segments(info, work, plan, encoding, engine.stream, scale, converter,
                                              lambda: on_frames(1))
                else:
                    job = v.SegmentJob(replace(info, path=info.path.absolute()), encoding, scale, work.path.absolute())
                    stats = pool.encode(job, work, plan, on_frames)
                    backend = f"{backend}; {pool.workers} Ray worker(s)"
                v.mux(info, work, encoding, scale, out)
            except KeyboardInterrupt:
                interrupted = True
            except v.VideoError as exc:
                raise fail(str(exc), EXIT_FAILED) from None
            except OSError as exc:  # a full disk, a folder gone: complete segments stay for a re-run
                raise fail(f"{exc.filename or out}: {exc.strerror or exc}", EXIT_FAILED) from None
    if interrupted:
        raise fail(f"interrupted with {work.frames} frame(s) in {len(work.segments)} complete segment(s); "
                   "run the same command again to resume", EXIT_INTERRUPTED)
    work.remove()
    _summary("upscale video", [
        ("model", engine.model.source), ("backend", backend), ("codec", f"{encoding.codec} {encoding.pix_fmt}"),
        ("output", str(out)), ("frames written", str(stats.resumed_frames + stats.upscaled)),
        ("frames decoded this run", str(stats.decoded)),
        ("segments encoded this run", f"{stats.encoded_segments} of {len(plan)}"),
        ("resumed from", f"{stats.resumed_segments} segment(s), {stats.resumed_frames} frame(s)"),
    ], rate, info.width * info.height)


def _parse_size(size: str | None) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in (size or "").lower().split("x"))
    except ValueError:
        raise fail("--size WIDTHxHEIGHT is required with raw --input (e.g. --size 960x540)") from None
    if width <= 0 or height <= 0:
        raise fail(f"--size {size}: width and height must be positive")
    return width, height


def _raw_frames(stream: BinaryIO, width: int, height: int, dtype: type[np.unsignedinteger]) -> Iterator[np.ndarray]:
    from upscaler.io.y4m import TruncatedFrame, read_exactly

    size = width * height * 3 * np.dtype(dtype).itemsize
    index = 0
    while data := read_exactly(stream, size):
        if len(data) < size:
            raise TruncatedFrame(index, len(data), size)
        yield np.frombuffer(data, dtype).astype(dtype, copy=True).reshape(height, width, 3)
        index += 1


def _to_depth(rgb: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    if rgb.dtype == dtype:
        return rgb
    if dtype == np.uint8:
        return ((rgb.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return rgb.astype(np.uint16) * 257


@app.command("pipe")
@run_options
def upscale_pipe(
    settings: RunSettings,
    input_format: Annotated[PipeFormat, typer.Option("--input", help="What stdin carries: y4m, or raw rgb24/rgb48 (little-endian) frames of --size.")] = PipeFormat.y4m,
    output_format: Annotated[PipeFormat | None, typer.Option("--output", help="What stdout gets [default: the input's kind].")] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT of raw input frames.")] = None,
    matrix: Annotated[Matrix, typer.Option(help="YUV matrix of y4m frames (y4m does not say); auto: BT.601 below 720 lines, BT.709 from there, as players assume.")] = Matrix.auto,
) -> None:
    """Upscale frames from stdin to stdout: `ffmpeg -i IN -f yuv4mpegpipe - | upscale pipe | ffmpeg -f yuv4mpegpipe -i - OUT`.

    Only frames go to stdout; messages and progress go to stderr. A y4m stream keeps its chroma
    layout, bit depth, frame rate, aspect and tags.
    """
    try:
        _pipe(settings, input_format, output_format or input_format, size, matrix)
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None


def _pipe(settings: RunSettings, input_format: PipeFormat, output_format: PipeFormat, size: str | None,
          matrix: Matrix) -> None:
    from upscaler.io import y4m
    from upscaler.io.colour import MATRIX_NAMES, guess_matrix, open_converter
    from upscaler.io.stages import Stages

    if output_format is PipeFormat.y4m and input_format is not PipeFormat.y4m:
        raise fail("--output y4m needs y4m input (raw frames carry no rate, layout or colour tags)")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    if stdin.isatty() or stdout.isatty():
        which = "stdin" if stdin.isatty() else "stdout"
        raise fail(f"{which} is a terminal; pipe frames through: ffmpeg -i IN -f yuv4mpegpipe - | upscale pipe | "
                   "ffmpeg -f yuv4mpegpipe -i - OUT")
    for stream in (stdin, stdout):
        _widen_pipe(stream)
    header: y4m.Y4MHeader | None = None
    if input_format is PipeFormat.y4m:
        try:
            header = y4m.read_header(stdin)
        except y4m.Y4MError as exc:
            raise fail(f"stdin: {exc}", EXIT_FAILED) from None
        width, height = header.width, header.height
    else:
        width, height = _parse_size(size)
    engine = open_engine_or_fail(settings)
    scale = engine.scale
    out_dtype = np.uint16 if output_format is PipeFormat.rgb48 else np.uint8
    if header is not None:
        layout = header.layout
        fixed = MATRIX_NAMES.get(matrix.value)
        tags_in = replace(header.tags, matrix=fixed or guess_matrix(height))
        tags_out = replace(header.tags, matrix=fixed or guess_matrix(height * scale))
        converter = open_converter(engine.plan.device, tags_in, layout.pix_fmt, height, tags_out, layout.pix_fmt, height * scale)
        frames = ((None, converter.to_rgb(frame)) for frame in y4m.read_frames(stdin, header))
    else:
        in_dtype = np.uint16 if input_format is PipeFormat.rgb48 else np.uint8
        frames = ((None, frame) for frame in _raw_frames(stdin, width, height, in_dtype))

    def write(_: None, rgb: np.ndarray) -> None:
        if header is not None and output_format is PipeFormat.y4m:
            planes = converter.planes_from_rgb(rgb)
            stdout.write(b"FRAME\n")
            for plane in planes:
                stdout.write(np.ascontiguousarray(plane).data)
        else:
            stdout.write(np.ascontiguousarray(_to_depth(rgb, out_dtype)).data)
        progress.update(task, advance=1, rate=rate.tick())

    rate = _Rate()
    code, message = 0, ""
    with _progress() as progress:
        task = progress.add_task("pipe", total=None, rate=0.0)
        try:
            if header is not None and output_format is PipeFormat.y4m:
                stdout.write(header.scaled(scale).encode())
            Stages[None]().run(frames, engine.stream, write)
            stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            message = f"stopped: the reader closed the pipe after {rate.frames} frame(s)"
        except y4m.Y4MError as exc:
            code, message = EXIT_FAILED, f"stdin: {exc}"
        except KeyboardInterrupt:
            code, message = EXIT_INTERRUPTED, f"interrupted after {rate.frames} frame(s)"
    if code:
        _flush_quietly(stdout)
        raise fail(message, code)
    if message:
        console.print(message, highlight=False)
        return
    _summary("upscale pipe", [("model", engine.model.source), ("backend", engine.description),
                              ("frames", str(rate.frames))], rate, width * height)


def _widen_pipe(stream: BinaryIO) -> None:
    """A 1 MiB pipe buffer instead of 64 KiB: a 4K frame crosses in a dozen writes, not two hundred."""
    try:
        import fcntl

        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except (ImportError, OSError, AttributeError, ValueError):
        pass  # not a pipe, not Linux, or over the system's limit: the default works too


def _flush_quietly(stdout: BinaryIO) -> None:
    try:
        stdout.flush()
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush raises nothing once the reader is gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
