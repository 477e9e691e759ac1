"""`upscale video` and `upscale pipe`: frames streamed through the engine, from files or from stdin."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer

from upscaler.cli.app import EXIT_FAILED, EXIT_INTERRUPTED, app, console, fail, warn
from upscaler.cli.options import ClusterOption, open_engine_or_fail, run_options
from upscaler.cli.report import Rate, print_summary, progress
from upscaler.engine.settings import RunSettings

if TYPE_CHECKING:  # torch and PyAV load when a command runs, not for --help
    from upscaler.cluster.video import SegmentPool
    from upscaler.engine.engine import Engine
    from upscaler.io.video import EncodeSettings, SourceVideo
    from upscaler.jobs.video import PlannedSegment, RunStats, WorkFolder

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


@app.command("video")
@run_options
def upscale_video(
    source: Annotated[Path, typer.Argument(help="Video to upscale (anything FFmpeg reads).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output file; its suffix picks the container (.mkv holds every kind of stream).")],
    settings: RunSettings,
    codec: Annotated[Codec, typer.Option(help="Video encoder; auto: NVENC on CUDA where available, else libx264 (8-bit) or libx265 (10-bit).")] = Codec.auto,
    crf: Annotated[int | None, typer.Option(min=0, max=63, help="Quality (lower is better) \\[default: the encoder's sensible one].")] = None,
    preset: Annotated[str | None, typer.Option(help="Encoder speed preset (e.g. medium, slow; p1-p7 for NVENC).")] = None,
    pix_fmt: Annotated[str | None, typer.Option("--pix-fmt", help="Output pixel format \\[default: the source's chroma family and depth].")] = None,
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
    from upscaler.io.video import VideoError, choose_encoding, probe
    from upscaler.jobs.video import plan_segments

    if not source.is_file():
        raise fail(f"{source}: no such file", EXIT_FAILED)
    if out.exists() and out.resolve() == source.resolve():
        raise fail(f"{out}: is the input; choose another output name")
    _check_out(out)
    try:
        info = probe(source)
        plan = plan_segments(info, segment_seconds)
    except VideoError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    engine = open_engine_or_fail(settings)
    _prepare_out(out)
    try:
        encoding, warnings = choose_encoding(info, out, engine.scale, engine.device.type == "cuda", codec.value, crf, preset, pix_fmt)
    except VideoError as exc:
        raise fail(str(exc)) from None
    for warning in warnings:
        warn(warning)
    with ExitStack() as resources:
        pool = _started_pool(resources, cluster, settings) if cluster is not None else None
        stats, work, backend, rate = _encode(engine, pool, info, plan, encoding, out, resume, segment_seconds)
    work.remove()
    print_summary("upscale video", [
        ("model", engine.model.source), ("backend", backend), ("codec", f"{encoding.codec} {encoding.pix_fmt}"),
        ("output", str(out)), ("frames written", str(stats.resumed_frames + stats.upscaled)),
        ("frames decoded this run", str(stats.decoded)),
        ("segments encoded this run", f"{stats.encoded_segments} of {len(plan)}"),
        ("resumed from", f"{stats.resumed_segments} segment(s), {stats.resumed_frames} frame(s)"),
    ], rate.elapsed, rate.items, "frames/s", rate.items * info.width * info.height)


def _check_out(out: Path) -> None:
    """Refuse, before any work, an OUT the result could not be renamed onto, found after the whole encode
    otherwise: a folder, a link (never written through), a device, or something in the way of its work folder."""
    from upscaler.jobs.video import work_folder_path

    work = work_folder_path(out)
    for path in (out, work):
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:  # a file in place of a folder above it, a folder that cannot be searched, a long name
            where = "there" if path == out else f"its work folder {work}"
            raise fail(f"{out}: cannot write {where} ({exc.strerror or exc})") from None
        if path == work:
            if not stat.S_ISDIR(mode):
                raise fail(f"{work}: is in the way of {out}'s work folder (not a folder); remove it or choose another -o")
        elif stat.S_ISLNK(mode):
            raise fail(f"{out}: is a symbolic link; it is not replaced (remove it or choose another -o)")
        elif stat.S_ISDIR(mode):
            raise fail(f"{out}: is a folder; -o names the video file to write")
        elif not stat.S_ISREG(mode):
            raise fail(f"{out}: is not a regular file; it is not replaced (choose another -o)")


def _prepare_out(out: Path) -> None:
    """OUT's folder made and proven writable, temporaries of dead runs removed: once the model opened
    (a bad model leaves no folder behind), before any frame."""
    from upscaler.io.files import prepare_folder

    try:
        prepare_folder(out.parent, recursive=False)
    except OSError as exc:
        raise fail(f"{out}: cannot write there ({exc.strerror or exc})") from None


@contextmanager
def _released_on_failure(work: WorkFolder) -> Iterator[None]:
    """Let go of the work folder's lock if the job fails (this process may go on); a job that completes
    holds it until the folder is removed, so no other run claims the folder in between."""
    try:
        yield
    except BaseException:
        work.release()
        raise


def _started_pool(resources: ExitStack, cluster: str, settings: RunSettings) -> SegmentPool:
    from upscaler.cluster.video import SegmentPool

    try:
        return resources.enter_context(SegmentPool.started(cluster, settings))
    except RuntimeError as exc:  # no Ray, a bad address, an engine that does not open on the workers
        raise fail(str(exc)) from None


def _encode(engine: Engine, pool: SegmentPool | None, info: SourceVideo, plan: list[PlannedSegment], encoding: EncodeSettings,
            out: Path, resume: bool, segment_seconds: float) -> tuple[RunStats, WorkFolder, str, Rate]:
    """The job, here or on the pool, with a progress bar; resumes the work folder of the same identity."""
    from upscaler.io.video import VideoError
    from upscaler.jobs.video import (
        SegmentJob,
        WorkFolderBusy,
        encode_segments,
        job_key,
        mux,
        open_work,
        work_folder_path,
    )

    frame = (info.height, info.width)
    try:
        identity = engine.identity(frame) if pool is None else pool.identity(frame)  # the workers make the pixels there
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    try:
        work = open_work(out, job_key(info, encoding, identity, segment_seconds), resume)
    except WorkFolderBusy as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except OSError as exc:
        raise fail(f"{out}: cannot write its work folder {work_folder_path(out)} ({exc.strerror or exc})") from None
    if work.segments:
        console.print(f"resuming: {len(work.segments)} segment(s), {work.frames} frame(s) already done", highlight=False)
    backend = engine.description if pool is None else f"{pool.info.backend}; {pool.workers} Ray worker(s)"
    rate = Rate()
    with _released_on_failure(work), progress("frames", "fps") as bar:
        task = bar.add_task("video", total=info.frames_estimate or None, completed=work.frames, rate=0.0)

        def on_frames(count: int) -> None:
            bar.update(task, advance=count, rate=rate.tick(count))

        try:
            if pool is None:
                stats = encode_segments(info, work, plan, encoding, engine, lambda: on_frames(1))
            else:
                job = SegmentJob(replace(info, path=info.path.absolute()), encoding, engine.scale, work.path.absolute())
                stats = pool.encode(job, work, plan, on_frames)
            mux(info, work, encoding, engine.scale, out)
        except KeyboardInterrupt:
            raise fail(f"interrupted with {work.frames} frame(s) in {len(work.segments)} complete segment(s); "
                       "run the same command again to resume", EXIT_INTERRUPTED) from None
        except VideoError as exc:
            raise fail(str(exc), EXIT_FAILED) from None
        except OSError as exc:  # a full disk, a folder gone: complete segments stay for a re-run
            raise fail(f"{exc.filename or out}: {exc.strerror or exc}", EXIT_FAILED) from None
    return stats, work, backend, rate


def _parse_size(size: str | None) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in (size or "").lower().split("x"))
    except ValueError:
        raise fail("--size WIDTHxHEIGHT is required with raw --input (e.g. --size 960x540)") from None
    if width <= 0 or height <= 0:
        raise fail(f"--size {size}: width and height must be positive")
    return width, height


@app.command("pipe")
@run_options
def upscale_pipe(
    settings: RunSettings,
    input_format: Annotated[PipeFormat, typer.Option("--input", help="What stdin carries: y4m, or raw rgb24/rgb48 (little-endian) frames of --size.")] = PipeFormat.y4m,
    output_format: Annotated[PipeFormat | None, typer.Option("--output", help="What stdout gets \\[default: the input's kind].")] = None,
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
    from upscaler.io.y4m import Y4MError
    from upscaler.jobs.pipe import open_source, run_pipe

    if output_format is PipeFormat.y4m and input_format is not PipeFormat.y4m:
        raise fail("--output y4m needs y4m input (raw frames carry no rate, layout or colour tags)")
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    if stdin.isatty() or stdout.isatty():
        which = "stdin" if stdin.isatty() else "stdout"
        raise fail(f"{which} is a terminal; pipe frames through: ffmpeg -i IN -f yuv4mpegpipe - | upscale pipe | "
                   "ffmpeg -f yuv4mpegpipe -i - OUT")
    for stream in (stdin, stdout):
        _widen_pipe(stream)
    raw_size = None if input_format is PipeFormat.y4m else _parse_size(size)
    try:
        source = open_source(stdin, input_format.value, raw_size)
    except Y4MError as exc:
        raise fail(f"stdin: {exc}", EXIT_FAILED) from None
    engine = open_engine_or_fail(settings)
    _check_frame_memory(source.bytes_in_flight(engine.scale), source.width, source.height, engine.scale)
    rate = Rate()
    code, message = 0, ""
    with progress("frames", "fps") as bar:
        task = bar.add_task("pipe", total=None, rate=0.0)
        try:
            run_pipe(engine, source, stdin, stdout, output_format.value, matrix.value,
                     lambda: bar.update(task, advance=1, rate=rate.tick()))
        except BrokenPipeError:
            _silence_stdout()
            message = f"stopped: the reader closed the pipe after {rate.items} frame(s)"
        except Y4MError as exc:
            code, message = EXIT_FAILED, f"stdin: {exc}"
        except KeyboardInterrupt:
            code, message = EXIT_INTERRUPTED, f"interrupted after {rate.items} frame(s)"
    if code:
        _flush_quietly(stdout)
        raise fail(message, code)
    if message:
        console.print(message, highlight=False)
        return
    print_summary("upscale pipe", [("model", engine.model.source), ("backend", engine.description), ("frames", str(rate.items))],
            rate.elapsed, rate.items, "frames/s", rate.items * source.width * source.height)


def _check_frame_memory(needed: int, width: int, height: int, scale: int) -> None:
    """Refuse, before the first frame, frames whose queues could not fit in this machine's memory."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return  # no such figure on this platform: the frames will tell
    if needed > total:
        raise fail(f"frames of {width}x{height} upscale to {width * scale}x{height * scale}: the frames in flight need "
                   f"{needed / 2**30:.1f} GiB, more than this machine's {total / 2**30:.1f} GiB; split the video "
                   "into tiles with ffmpeg's crop filter, or upscale a smaller size")


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
