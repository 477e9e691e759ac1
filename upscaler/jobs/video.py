"""The video job: decode, upscale, encode in resumable segments, copy every other stream, mux.

The picture stream is decoded, upscaled and encoded; every other stream OUT's container holds
(`check_streams` decides before any work) is copied packet for packet, cover art as cover art.
Frames keep their own timestamps (repeated or backwards ones repaired) and durations (variable
frame rate stays variable), the colour tags (an RGB or untagged source's output gets the Y'CbCr
matrix it is converted to, `encoded_tags`), rotation and HDR mastering data are carried over, and
10-bit stays 10-bit.

The encoded picture is kept in segments cut at the source's keyframes, planned before any
decoding from the keyframe packets (`plan_segments`), each in a hidden work folder beside OUT and
each written under a temporary name and renamed when complete. A planned segment is encoded on
its own by seeking to its keyframe (`encode_run`), so a cluster can share them out; after Ctrl-C,
SIGKILL or a crash, the same command encodes only the missing segments; the
final file is muxed from the segments and the source's other streams under a temporary name and
renamed to OUT only when complete. Segments are encoded by fresh, identically configured encoders,
so the frames are the same however many times the work was interrupted.
"""

from __future__ import annotations

import fcntl
import json
import mimetypes
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import av
import av.error
import numpy as np
from av.stream import Disposition
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from upscaler.io.colour import Converter, encoded_tags, open_converter
from upscaler.io.files import AtomicFile, prepare_folder, write_atomically, write_bytes_atomically
from upscaler.io.stages import Stages
from upscaler.io.video import (
    COVER_ART,
    EncodeSettings,
    SourceVideo,
    VideoError,
    check_length,
    configure_encoder,
    declared_length,
    error_cause,
    open_input,
    open_output,
)

if TYPE_CHECKING:
    import torch

    from upscaler.jobs import FrameEngine

_NOPTS = -(2**63)
_RECORD = struct.Struct("<qqqiI")  # pts, dts, duration, keyframe, size
_PACKETS_MAGIC = b"UPSCALE-PACKETS-1\n"
_MANIFEST = "manifest.json"
_HIDDEN = ".upscale-"  # the work folder and the segment being written hide beside OUT
_LOCK = "lock"  # in the work folder, flock-ed by the run writing it (not hidden: `load` keeps it)


# --- the work folder ------------------------------------------------------------------------------


@dataclass
class Segment:
    first_pts: int
    frames: int
    next_pts: int | None  # first frame of the next segment; None: this one ends the video


@dataclass(frozen=True)
class PlannedSegment:
    """Where a segment starts and stops in the source, known before decoding."""

    index: int
    first_pts: int | None  # its keyframe; None: the video's start
    next_pts: int | None  # the next segment's keyframe; None: the video's end


def plan_segments(source: SourceVideo, segment_s: float) -> list[PlannedSegment]:
    """Segments cut at the first keyframe at least `segment_s` after the previous cut.

    Read from the keyframe packets (demuxing, no decoding), so the whole video is planned in a
    moment; a source whose packets carry no timestamps is one segment. A source that stops short
    of the length its container declares is refused here, before any work.
    """
    with open_input(source.path) as container:
        stream = cast(VideoStream, container.streams[source.stream_index])
        try:
            keys = _keyframes(source, container, stream)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{source.path}: cannot read its packets ({error_cause(exc)})") from None
    cuts: list[int] = []
    for pts in keys[1:]:
        if (pts - (cuts[-1] if cuts else keys[0])) * source.time_base >= segment_s:
            cuts.append(pts)
    starts: list[int | None] = [None, *cuts]
    return [PlannedSegment(i, first, next_pts)
            for i, (first, next_pts) in enumerate(zip(starts, [*cuts, None], strict=True))]


def _keyframes(source: SourceVideo, container: av.container.InputContainer, stream: VideoStream) -> list[int]:
    """The video's keyframe timestamps, from one pass over every stream's packets (the container's
    declared length may be any stream's), which also finds a source cut short (`check_length`)."""
    declared = declared_length(container, stream)
    keys: set[int] = set()
    frames = 0
    ends: dict[int, int] = {}  # stream index: where its packets end, in its time base
    for packet in container.demux():
        video = packet.stream_index == stream.index
        if video and (not packet.size or packet.is_corrupt):
            continue  # the demuxer's end-of-stream marker, or a frame the cut left partial
        if video:
            frames += 1
            if packet.is_keyframe and packet.pts is not None:
                keys.add(packet.pts)
        if packet.pts is not None:
            end = packet.pts + (packet.duration or 0)
            ends[packet.stream_index] = max(end, ends.get(packet.stream_index, end))
    seconds = {i: float(end * (container.streams[i].time_base or 0)) for i, end in ends.items()}
    check_length(source.path, declared, frames, seconds.get(stream.index), max(seconds.values(), default=None))
    return sorted(keys)


def work_folder_path(out: Path) -> Path:
    return out.with_name(f"{_HIDDEN}work-{out.name}")


class WorkFolderBusy(VideoError):
    """Another run holds OUT's work folder."""


class WorkFolder:
    """Hidden folder beside OUT: a manifest of complete segments and their packet files, and the lock
    of the run that writes them."""

    def __init__(self, out: Path, key: dict[str, object]) -> None:
        self.out = out
        self.path = work_folder_path(out)
        self.key = key
        self.segments: dict[int, Segment] = {}
        self.extradata: bytes | None = None
        self._lock: int | None = None

    def claim(self) -> None:
        """Make the folder if missing and lock it for this run.

        Without the lock a second run on OUT would clear or splice this one's segments; it fails at
        once instead (WorkFolderBusy). The lock goes with the process, however it ends.
        """
        lock = self.path / _LOCK
        while self._lock is None:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkFolderBusy(f"another `upscale video` run is writing {self.out} (its work folder {self.path} "
                                     "is locked); wait for it to finish, or choose another -o") from None
            try:
                current: os.stat_result | None = os.stat(lock)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                self._lock = fd
            else:
                os.close(fd)  # the run that held it removed the folder meanwhile: claim a fresh one

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def load(self) -> bool:
        """Pick up a previous run's segments if it was the same job; False if starting afresh."""
        try:
            manifest = json.loads((self.path / _MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = None
        if not manifest or manifest.get("key") != self.key:
            self.clear()
            return False
        for leftover in self.path.glob(f"{_HIDDEN}*"):  # a segment a killed run was writing
            leftover.unlink()
        listed = {i: Segment(**s) for i, s in enumerate(manifest["segments"]) if s is not None}
        self.segments = {i: s for i, s in listed.items() if self.segment_path(i).is_file()}
        extradata = manifest.get("extradata")
        self.extradata = bytes.fromhex(extradata) if extradata is not None else None
        return bool(self.segments)

    def clear(self) -> None:
        """Empty the folder (made if missing), keeping the lock of the run that holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        for entry in self.path.iterdir():
            if entry.name == _LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.segments = {}
        self._save()

    def missing(self, plan: list[PlannedSegment]) -> list[PlannedSegment]:
        return [planned for planned in plan if planned.index not in self.segments]

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments.values())

    def segment_path(self, index: int) -> Path:
        return self.path / _segment_name(index)

    def add(self, index: int, segment: Segment, extradata: bytes | None) -> None:
        """Record a segment whose file is in place (only one process, the driver, writes the manifest)."""
        self.segments[index] = segment
        self.extradata = extradata
        self._save()

    def _save(self) -> None:
        listed = [asdict(self.segments[i]) if i in self.segments else None for i in range(max(self.segments, default=-1) + 1)]
        manifest = {"key": self.key, "segments": listed,
                    "extradata": None if self.extradata is None else self.extradata.hex()}
        write_bytes_atomically(self.path / _MANIFEST, json.dumps(manifest, indent=1).encode())

    def remove(self) -> None:
        """Delete the folder (OUT is complete), then let go of its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()


def _segment_name(index: int) -> str:
    return f"segment-{index:05d}.packets"


def job_key(source: SourceVideo, settings: EncodeSettings, engine_identity: dict[str, object], segment_s: float) -> dict[str, object]:
    """What must match for a previous run's segments to be reused: the same source and video stream
    in it, engine identity and encoder.

    `engine_identity` is `Engine.identity` for the source's frame size: every setting that changes a
    pixel, and none that does not (streams, CUDA graphs), so a resume never splices frames made two ways.
    """
    stat = source.path.stat()
    return {"source": str(source.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "stream": source.stream_index,
            "engine": engine_identity, "codec": settings.codec, "pix_fmt": settings.pix_fmt, "options": settings.options,
            "container": settings.container, "segment_s": segment_s}


# --- packets on disk ------------------------------------------------------------------------------


def _write_packet(file: BinaryIO, packet: av.Packet, duration: int) -> None:
    data = bytes(packet)
    pts = _NOPTS if packet.pts is None else packet.pts
    dts = _NOPTS if packet.dts is None else packet.dts
    file.write(_RECORD.pack(pts, dts, duration, int(packet.is_keyframe), len(data)))
    file.write(data)


def _read_packets(path: Path) -> Iterator[tuple[int | None, int | None, int, bool, bytes]]:
    with path.open("rb") as file:
        if file.read(len(_PACKETS_MAGIC)) != _PACKETS_MAGIC:
            raise VideoError(f"{path}: not a segment file")
        while header := file.read(_RECORD.size):
            pts, dts, duration, key, size = _RECORD.unpack(header)
            yield (None if pts == _NOPTS else pts, None if dts == _NOPTS else dts, duration, bool(key), file.read(size))


# --- decode, upscale, encode ----------------------------------------------------------------------


@dataclass(frozen=True)
class FrameInfo:
    pts: int
    duration: int
    segment: PlannedSegment
    ends_segment: bool = False


@dataclass
class RunStats:
    decoded: int = 0  # frames the decoder produced this run (resuming skips the finished segments)
    upscaled: int = 0
    resumed_frames: int = 0
    resumed_segments: int = 0
    encoded_segments: int = 0


SegmentDone = Callable[[int, Segment, bytes | None], None]


class _SegmentEncoder:
    """The encoder side: frames in, one packet file per segment, each renamed into place when complete."""

    def __init__(self, folder: Path, source: SourceVideo, settings: EncodeSettings, width: int, height: int,
                 converter: Converter, on_segment: SegmentDone) -> None:
        self.folder, self.source, self.settings = folder, source, settings
        self.size = (width, height)
        self.converter = converter
        self.on_segment = on_segment
        self._ctx: VideoCodecContext | None = None
        self._file: AtomicFile | None = None
        self._first_pts = 0
        self._frames = 0
        self._durations: dict[int, int] = {}

    def add(self, info: FrameInfo, rgb: np.ndarray) -> None:
        if self._ctx is None:
            self._begin(info.segment.index, info.pts)
        frame = self.converter.from_rgb(rgb)
        frame.pts, frame.time_base = info.pts, self.source.time_base
        self._durations[info.pts] = info.duration
        self._emit(self._ctx.encode(frame))  # type: ignore[union-attr]
        self._frames += 1
        if info.ends_segment:
            self._finish(info.segment)

    def _begin(self, index: int, first_pts: int) -> None:
        self._ctx = self.settings.open(self.source, *self.size)
        self._file = AtomicFile(self.folder / _segment_name(index))
        self._file.stream.write(_PACKETS_MAGIC)
        self._first_pts, self._frames = first_pts, 0

    def _emit(self, packets: list[av.Packet]) -> None:
        for packet in packets:
            duration = self._durations.pop(packet.pts, 0) if packet.pts is not None else 0
            _write_packet(self._file.stream, packet, duration)  # type: ignore[union-attr]

    def _finish(self, planned: PlannedSegment) -> None:
        assert self._ctx is not None and self._file is not None
        self._emit(self._ctx.encode(None))
        file, self._file = self._file, None
        file.commit()
        self.on_segment(planned.index, Segment(self._first_pts, self._frames, planned.next_pts), self._ctx.extradata)
        self._ctx = None

    def abandon(self) -> None:
        """Drop the segment in progress (interrupted): the next run encodes it again."""
        if self._file is not None:
            self._file.abandon()
        self._ctx, self._file = None, None


def _decoded_frames(source: SourceVideo, run: list[PlannedSegment], stats: RunStats,
                    converter: Converter) -> Iterator[tuple[FrameInfo, np.ndarray]]:
    """The frames of consecutive planned segments, RGB, from one seek to the first one's keyframe.

    A frame belongs to the last segment whose keyframe it does not precede, so the leading frames
    of an open GOP stay with the segment before, as a straight decode shows them; so do frames that
    repeat the keyframe's timestamp without being it (`_reaches`). Timestamps
    strictly increase within a segment, as encoders and muxers need: a repeated or backwards one
    becomes the previous one + 1 (as ffmpeg repairs them), the frame keeping its duration. Each
    segment starts from its own first timestamp, so its frames are the same whichever run encodes
    it; `_video_packets` moves a segment on where the one before reaches past its start.
    """
    start, stop = run[0].first_pts, run[-1].next_pts
    with open_input(source.path) as container:
        stream = cast(VideoStream, container.streams[source.stream_index])
        stream.thread_type = "AUTO"
        if start is not None:
            container.seek(start, backward=True, any_frame=False, stream=stream)
        segments = iter(run)
        segment = next(segments)
        pending: tuple[FrameInfo, np.ndarray] | None = None
        floor = start  # until the first frame from the run's keyframe on: None once there
        last_pts: int | None = None  # the segment's previous frame, as encoded
        try:
            for frame in cast(Iterator[av.VideoFrame], container.decode(stream)):
                stats.decoded += 1
                raw = frame.pts
                if floor is not None:
                    if raw is None or not _reaches(frame, raw, floor):
                        continue  # decoded from the seek point on, before the keyframe
                    floor = None
                if raw is not None and stop is not None and _reaches(frame, raw, stop):
                    break
                while raw is not None and segment.next_pts is not None and _reaches(frame, raw, segment.next_pts):
                    segment, last_pts = next(segments), None
                if raw is not None and (last_pts is None or raw > last_pts):
                    pts = raw
                else:
                    pts = 0 if last_pts is None else last_pts + 1
                last_pts = pts
                if pending is not None:
                    info, rgb = pending
                    yield FrameInfo(info.pts, info.duration, info.segment, info.segment != segment), rgb
                pending = (FrameInfo(pts, frame.duration or 0, segment), converter.to_rgb(frame))
        except av.error.FFmpegError as exc:
            reached = start if pending is None else pending[0].pts + pending[0].duration
            raise _stopped(source, container, stream, reached, exc) from None
        if pending is not None:
            info, rgb = pending
            yield FrameInfo(info.pts, info.duration, info.segment, ends_segment=True), rgb


def _reaches(frame: av.VideoFrame, raw: int, cut: int) -> bool:
    """Whether a frame stamped `raw` is at or past the segment cut at keyframe `cut`.

    A frame that repeats the cut's timestamp but is not the keyframe is decoded before it (a seek to
    the keyframe never sees it), so it stays with the segment before in every run; taken by its
    timestamp alone, a straight run put it after the cut and a resumed one lost it.
    """
    return raw > cut or (raw == cut and frame.key_frame)


def _stopped(source: SourceVideo, container: av.container.InputContainer, stream: VideoStream, reached: int | None,
             exc: av.error.FFmpegError) -> VideoError:
    """A decode error named by where the decoded frames reach (a frame number and a time from the video's
    start, the same in any run and on any worker) against the length the container declares."""
    start = stream.start_time or 0
    until = start if reached is None else reached
    declared = declared_length(container, stream)
    of = f" of the {declared} its container declares" if declared else ""
    return VideoError(f"{source.path}: decoding stopped after frame {_frames_before(source, until)} "
                      f"({float((until - start) * source.time_base):.2f} s){of} ({error_cause(exc)})")


def _frames_before(source: SourceVideo, until: int) -> int:
    """How many of the video's frames are shown before timestamp `until`, counted from its packets."""
    count = 0
    with open_input(source.path) as container:
        try:
            for packet in container.demux(container.streams[source.stream_index]):
                if packet.pts is not None and packet.pts < until:
                    count += 1
        except av.error.FFmpegError:
            pass  # a packet the demuxer cannot read: those before it are counted
    return count


def _runs(segments: list[PlannedSegment]) -> list[list[PlannedSegment]]:
    """Consecutive segments grouped, each group decoded in one pass."""
    runs: list[list[PlannedSegment]] = []
    for planned in segments:
        if runs and runs[-1][-1].index + 1 == planned.index:
            runs[-1].append(planned)
        else:
            runs.append([planned])
    return runs


def encode_run(
    source: SourceVideo, folder: Path, segments: list[PlannedSegment], settings: EncodeSettings,
    upscale: Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]], scale: int, converter: Converter,
    on_segment: SegmentDone, on_frame: Callable[[], None], stats: RunStats,
) -> None:
    """Encode consecutive planned `segments` into `folder`, each file renamed into place when complete."""
    done: set[int] = set()

    def finished(index: int, segment: Segment, extradata: bytes | None) -> None:
        done.add(index)
        stats.encoded_segments += 1
        on_segment(index, segment, extradata)

    encoder = _SegmentEncoder(folder, source, settings, source.width * scale, source.height * scale, converter, finished)

    def sink(info: FrameInfo, rgb: np.ndarray) -> None:
        encoder.add(info, rgb)
        stats.upscaled += 1
        on_frame()

    try:
        Stages[FrameInfo]().run(_decoded_frames(source, segments, stats, converter), upscale, sink)
    except av.error.FFmpegError as exc:
        encoder.abandon()
        raise VideoError(f"{source.path}: the {settings.codec} encoder failed ({error_cause(exc)})") from None
    except BaseException:
        encoder.abandon()
        raise
    empty = [planned.index for planned in segments if planned.index not in done]
    if empty:
        raise VideoError(f"{source.path}: segment {empty[0]} decoded to no frames")


def encode_segments(source: SourceVideo, work: WorkFolder, plan: list[PlannedSegment], settings: EncodeSettings,
                    engine: FrameEngine, on_frame: Callable[[], None]) -> RunStats:
    """Encode every planned segment the work folder lacks, here; returns what this run did."""
    stats = RunStats(resumed_frames=work.frames, resumed_segments=len(work.segments))
    converter = converter_for(source, settings, engine.scale, engine.device)
    for run in _runs(work.missing(plan)):
        encode_run(source, work.path, run, settings, engine.stream, engine.scale, converter, work.add, on_frame, stats)
    return stats


def open_work(out: Path, key: dict[str, object], resume: bool) -> WorkFolder:
    """OUT's work folder, locked for this run: what a previous run of the same job left (if `resume`), else emptied.

    Raises WorkFolderBusy while another run holds it, OSError where it cannot be made or written.
    """
    work = WorkFolder(out, key)
    work.claim()
    try:
        prepare_folder(work.path, recursive=False)  # proven writable before any frame, under the lock
        if resume:
            work.load()  # empties the folder itself when the job differs
        else:
            work.clear()
    except BaseException:
        work.release()
        raise
    return work


@dataclass(frozen=True)
class SegmentJob:
    """What a worker elsewhere needs to encode any planned segment of this video (paths every worker sees)."""

    source: SourceVideo
    settings: EncodeSettings
    scale: int
    folder: Path


def converter_for(source: SourceVideo, settings: EncodeSettings, scale: int, device: torch.device) -> Converter:
    """Source pixels to RGB and back to the encoder's format, in the matrix and range the output is tagged with."""
    tags_out = encoded_tags(source.tags, source.pix_fmt, settings.pix_fmt, source.height * scale)
    return open_converter(device, source.tags, source.pix_fmt, source.height, tags_out, settings.pix_fmt,
                          source.height * scale)


# --- the final file -------------------------------------------------------------------------------


def mux(source: SourceVideo, work: WorkFolder, settings: EncodeSettings, scale: int, out: Path) -> None:
    """Segments plus the source's streams OUT keeps (`EncodeSettings.kept`) into OUT, renamed into place when complete."""
    try:
        write_atomically(out, lambda tmp: _mux_into(source, work, settings, scale, tmp, out))
    except av.error.FFmpegError as exc:
        raise VideoError(f"{out}: writing it failed ({error_cause(exc)})") from None


def _mux_into(source: SourceVideo, work: WorkFolder, settings: EncodeSettings, scale: int, tmp: BinaryIO, out: Path) -> None:
    with open_input(source.path) as container, open_output(out, tmp, settings.container) as output:
        copied = {}
        for stream in container.streams:
            if stream.index == source.stream_index:
                video = cast(VideoStream, output.add_stream(settings.codec, rate=source.rate))
                configure_encoder(video.codec_context, settings, source, source.width * scale, source.height * scale)
                video.time_base = source.time_base
                video.metadata.update(source.metadata)
                video.disposition = stream.disposition
                if source.display_matrix is not None:
                    video.set_display_matrix(source.display_matrix)
            elif stream.index not in settings.kept:
                continue  # check_streams warned before any work
            elif stream.index in source.covers and settings.container == "matroska":
                output.add_attachment(*_cover_attachment(source.path, stream))
            else:
                copy = output.add_stream_from_template(stream)
                if stream.codec_context is not None:  # attachments carry their metadata already
                    copy.metadata.update(stream.metadata)
                    cover = Disposition.attached_pic if stream.index in source.covers else Disposition(0)
                    copy.disposition = stream.disposition | cover
                copied[stream.index] = copy
        output.start_encoding()
        if video.codec_context.extradata != work.extradata:
            raise VideoError(f"{out}: the {settings.codec} encoder's stream headers differ from the segments'")
        others = container.demux([container.streams[i] for i in copied]) if copied else iter(())
        strict = not output.format.flags & cast(int, av.format.Flags.ts_nonstrict.value)
        for packet in _interleave(_video_packets(work, video), _copied_packets(others, copied, source.covers, strict)):
            output.mux(packet)


def _cover_attachment(path: Path, stream: av.stream.Stream) -> tuple[str, str, bytes]:
    """Cover art as Matroska keeps it: an attachment with an image MIME type, which its demuxer shows
    as an attached picture again (name, MIME type, the picture)."""
    mimetype = COVER_ART["matroska"][stream.codec_context.name]
    name = stream.metadata.get("filename") or f"cover{mimetypes.guess_extension(mimetype)}"
    with open_input(path) as container:
        picture = next(bytes(p) for p in container.demux(container.streams[stream.index]) if p.size)
    return name, mimetype, picture


def _video_packets(work: WorkFolder, stream: VideoStream) -> Iterator[av.Packet]:
    """The segments' packets, pts and dts strictly increasing across the joins as muxers need them.

    Each segment's own encoder made them so within it. An encoder restarted per segment may repeat
    a reordering delay's dts: those are bumped past the previous one, as ffmpeg does. Where the
    segment before reaches past this one's first pts (it repaired repeated source timestamps), or a
    bump would pass a packet's pts, the whole segment moves on by as many ticks, durations kept.
    """
    shift = 0
    top: int | None = None  # the highest pts so far
    last_dts: int | None = None
    for index in sorted(work.segments):
        path = work.segment_path(index)
        if top is not None:
            shift = max(shift, top + 1 - work.segments[index].first_pts)
        if last_dts is not None:
            shift = _join_shift(path, shift, last_dts)
        for pts, dts, duration, key, data in _read_packets(path):
            if pts is not None:
                pts += shift
                top = pts if top is None else max(top, pts)
            if dts is not None:
                dts += shift
                if last_dts is not None and dts <= last_dts:
                    dts = last_dts + 1
                last_dts = dts
            packet = av.Packet(data)
            packet.pts, packet.dts, packet.duration, packet.is_keyframe = pts, dts, duration, key
            packet.time_base = stream.codec_context.time_base
            packet.stream = stream
            yield packet


def _join_shift(path: Path, shift: int, last_dts: int) -> int:
    """The least shift, `shift` or more, that keeps a segment's dts, bumped past `last_dts`, at or below their pts."""
    for i, (pts, dts, *_) in enumerate(_read_packets(path)):
        if pts is None or dts is None or dts + shift > last_dts + i:
            break  # not bumped: the encoder's own dts from here on
        shift = max(shift, last_dts + 1 + i - pts)
    return shift


def _copied_packets(packets: Iterator[av.Packet], streams: dict[int, av.stream.Stream], covers: frozenset[int],
                    strict: bool) -> Iterator[av.Packet]:
    """The kept streams' packets, each stream's dts increasing as OUT's muxer insists (`strict`: no
    repeats either, but for subtitles): one repeated or going back is bumped past the one before, its
    pts with it where that fell behind, as ffmpeg does; Matroska, say, stores a repeat as it is."""
    last: dict[int, int] = {}
    for packet in packets:
        index = packet.stream_index
        if packet.dts is None and packet.pts is None and not (packet.size and index in covers):
            continue  # the demuxer's end-of-stream markers (a cover's picture has no timestamps either)
        if packet.dts is not None:
            if index in last:
                least = last[index] + (strict and streams[index].type != "subtitle")
                if packet.dts < least:
                    if packet.pts is not None and packet.pts >= packet.dts:
                        packet.pts = max(packet.pts, least)
                    packet.dts = least
            last[index] = packet.dts
        packet.stream = streams[index]
        yield packet


def _interleave(*sources: Iterator[av.Packet]) -> Iterator[av.Packet]:
    """Packets of several streams in order of decode time, as muxers want them."""
    heads = [next(s, None) for s in sources]
    while any(h is not None for h in heads):
        index = min((i for i, h in enumerate(heads) if h is not None), key=lambda i: _seconds(heads[i]))
        yield heads[index]  # type: ignore[misc]
        heads[index] = next(sources[index], None)


def _seconds(packet: av.Packet | None) -> float:
    assert packet is not None
    stamp = packet.dts if packet.dts is not None else packet.pts
    return float(stamp * packet.time_base) if stamp is not None and packet.time_base else 0.0
