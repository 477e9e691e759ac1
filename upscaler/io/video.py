"""Video containers and codecs with PyAV: what a source is, how the result is encoded, what OUT can hold.

The job that decodes, upscales and encodes in resumable segments is `jobs/video.py`; this module
knows nothing of the engine: it probes sources (timing, colour tags, rotation, HDR mastering data,
10-bit), chooses and configures encoders, and opens containers.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import BinaryIO, cast

import av
import av.error
from av.codec.context import Flags
from av.sidedata.sidedata import SideData
from av.sidedata.sidedata import Type as SideDataType
from av.video.codeccontext import VideoCodecContext
from av.video.stream import VideoStream

from upscaler.io.colour import ColourTags, bit_depth, encoded_tags, yuv_layout

DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libsvtav1": 28, "h264_nvenc": 19, "hevc_nvenc": 21}


class VideoError(ValueError):
    """A video this command cannot read or write; the message names the file and the cause."""


# --- what the source is ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceVideo:
    path: Path
    stream_index: int
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    rate: Fraction
    frames_estimate: int
    tags: ColourTags
    display_matrix: tuple[int, ...] | None
    hdr: HdrMetadata | None
    sample_aspect_ratio: Fraction | None
    metadata: dict[str, str] = field(default_factory=dict)
    covers: frozenset[int] = frozenset()  # cover art beside the video: copied as cover art, never upscaled
    interlaced: bool = False  # its first frame holds two fields: the model sees them woven into one picture

    @property
    def bits(self) -> int:
        return bit_depth(self.pix_fmt)


@dataclass(frozen=True)
class HdrMetadata:
    """Mastering display (chromaticities in 1/50000, luminance in 1/10000 cd/m2) and content light levels."""

    primaries: tuple[int, ...] | None  # R x,y  G x,y  B x,y  white x,y
    luminance: tuple[int, int] | None  # max, min
    max_cll: int | None = None
    max_fall: int | None = None

    def x26x_params(self) -> list[str]:
        """The same data as x264/x265 take it (`mastering-display=G(..)B(..)R(..)WP(..)L(..)`, `max-cll`)."""
        params = []
        if self.primaries is not None and self.luminance is not None:
            r, g, b, w = (self.primaries[i:i + 2] for i in range(0, 8, 2))
            params.append("master-display=" + "".join(f"{k}({x},{y})" for k, (x, y) in zip("GBR", (g, b, r), strict=True))
                          + f"WP({w[0]},{w[1]})L({self.luminance[0]},{self.luminance[1]})")
        if self.max_cll is not None:
            params.append(f"max-cll={self.max_cll},{self.max_fall}")
        return params

    def svtav1_params(self) -> list[str]:
        """The same for SVT-AV1, which takes chromaticities and luminance as decimals."""
        params = []
        if self.primaries is not None and self.luminance is not None:
            r, g, b, w = ((x / 50000, y / 50000) for x, y in zip(self.primaries[::2], self.primaries[1::2], strict=True))
            params.append("mastering-display=" + "".join(f"{k}({x:.4f},{y:.4f})" for k, (x, y) in zip("GBR", (g, b, r), strict=True))
                          + f"WP({w[0]:.4f},{w[1]:.4f})L({self.luminance[0] / 10000:.4f},{self.luminance[1] / 10000:.4f})")
        if self.max_cll is not None:
            params.append(f"content-light={self.max_cll},{self.max_fall}")
        return params


def _q(num: int, den: int, unit: int) -> int:
    return round(num * unit / den) if den else 0


def _hdr_from_frame(side_data: list[SideData]) -> HdrMetadata | None:
    primaries = luminance = None
    cll: tuple[int, int] | None = None
    for data in side_data:
        raw = _side_data_bytes(data)
        if data.type == SideDataType.MASTERING_DISPLAY_METADATA and len(raw) >= 88:
            v = struct.unpack_from("<22i", raw)
            has_primaries, has_luminance = v[20], v[21]
            if has_primaries:
                primaries = tuple(_q(v[i], v[i + 1], 50000) for i in range(0, 16, 2))
            if has_luminance:
                luminance = (_q(v[18], v[19], 10000), _q(v[16], v[17], 10000))
        elif data.type == SideDataType.CONTENT_LIGHT_LEVEL and len(raw) >= 8:
            cll = struct.unpack_from("<2I", raw)
    if primaries is None and cll is None:
        return None
    return HdrMetadata(primaries, luminance, *(cll or (None, None)))


# Image codecs in a video container. Their frames can carry an ICC profile as side data, and PyAV 18
# crashes (SIGSEGV) freeing a frame whose side data it wrapped while one is there; they carry no HDR
# metadata, so their side data is not read (a rotation tag on such a stream is not kept).
_IMAGE_CODECS = frozenset({"png", "apng", "mjpeg", "jpegls", "jpeg2000", "tiff", "webp", "bmp", "gif", "qoi"})


def _side_data(frame: av.VideoFrame) -> list[SideData]:
    return list(cast(Iterable[SideData], frame.side_data))  # the stubs type the container as one item


def _side_data_bytes(data: SideData) -> bytes:
    return bytes(memoryview(data))  # type: ignore[arg-type]  # the stubs miss SideData's buffer protocol


def _display_matrix(side_data: list[SideData]) -> tuple[int, ...] | None:
    for data in side_data:
        if data.type == SideDataType.DISPLAYMATRIX:
            return struct.unpack_from("<9i", _side_data_bytes(data))
    return None


def open_input(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except FileNotFoundError:
        raise VideoError(f"{path}: no such file") from None
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(f"{path}: not a video FFmpeg can read ({error_cause(exc)})") from None


def error_cause(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _picture_stream(container: av.container.InputContainer, path: Path) -> tuple[VideoStream, frozenset[int]]:
    """The video to upscale, and the cover art beside it.

    A cover is an attached picture or, as Matroska cannot flag one on a track, a lone picture in an
    image codec; of the other video streams the default-flagged one is the video, else the first.
    """
    videos = list(container.streams.video)
    attached = {s.index for s in videos if s.disposition & av.stream.Disposition.attached_pic}
    candidates = [s for s in videos if s.index not in attached]
    if not candidates:
        raise VideoError(f"{path}: has no video stream")
    pictures: set[int] = set()
    if len(candidates) > 1:
        pictures = {s.index for s in candidates if s.codec_context.name in _IMAGE_CODECS and _one_picture(path, s.index)}
        candidates = [s for s in candidates if s.index not in pictures] or candidates
    stream = next((s for s in candidates if s.disposition & av.stream.Disposition.default), candidates[0])
    return stream, frozenset((attached | pictures) - {stream.index})


def _one_picture(path: Path, index: int) -> bool:
    """Whether the stream holds one packet (demuxed, not decoded; a cover ends at its first)."""
    with open_input(path) as container:
        try:
            return len(list(islice((p for p in container.demux(container.streams[index]) if p.size), 2))) == 1
        except av.error.FFmpegError:
            return False  # not a cover; decoding the video will say what is wrong with the file


def probe(path: Path) -> SourceVideo:
    """What the video stream is, read from its header and its first frame (side data lives there)."""
    with open_input(path) as container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # png_pipe, jpeg_pipe...
            raise VideoError(f"{path}: a still image, not a video; `upscale image` upscales it")
        stream, covers = _picture_stream(container, path)
        ctx = stream.codec_context
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise VideoError(f"{path}: cannot decode its video ({error_cause(exc)})") from None
        if first is None:
            raise VideoError(f"{path}: its video stream has no frames")
        time_base = stream.time_base or Fraction(1, 1000)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        estimate = stream.frames or (round(float(stream.duration * time_base * rate)) if stream.duration else 0)
        if not estimate and container.duration:
            estimate = round(container.duration / av.time_base * float(rate))
        tags = ColourTags(first.color_range or ctx.color_range, first.colorspace or ctx.colorspace,
                          ctx.color_primaries, ctx.color_trc)
        keep = {k: v for k, v in stream.metadata.items() if k.lower() in {"language", "title", "handler_name"}}
        side_data = [] if ctx.name in _IMAGE_CODECS else _side_data(first)
        return SourceVideo(path, stream.index, first.width, first.height, first.format.name, time_base, rate,
                           estimate, tags, _display_matrix(side_data), _hdr_from_frame(side_data),
                           stream.sample_aspect_ratio, keep, covers, bool(first.interlaced_frame))


# --- how long the source says it is ---------------------------------------------------------------

# Containers whose header states how long each stream is. Elsewhere FFmpeg estimates a length (from
# the bit rate, from the last timestamps), which says nothing about whether a file is whole.
# Formats whose header states the video's length. MPEG-TS states none (FFmpeg guesses one from the
# bit rate), so a cut transport stream ends where it ends.
_STATED_LENGTH = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mxf", "avi"})
# How far short of the stated end a whole file may stop: an audio encoder's padding, an edit list
# that ends between two frames, a tag rounded to the millisecond.
_LENGTH_SLACK_S = 0.5


@dataclass(frozen=True)
class Declared:
    """The length a container's header states: the video's, or (`whole`) the longest stream's.

    `start` and `end` are seconds on the video's clock; `frames` is 0 where no count is stated.
    """

    start: float
    end: float
    frames: int
    whole: bool

    def __str__(self) -> str:
        return f"{self.end - self.start:.2f} s" + (f" ({self.frames} frames)" if self.frames else "")


def declared_length(container: av.container.InputContainer, stream: VideoStream) -> Declared | None:
    """What the header says: MP4's and MXF's track duration, Matroska's DURATION tag, AVI's frame
    count, else the container's duration."""
    if container.format.name not in _STATED_LENGTH:
        return None
    time_base = stream.time_base or Fraction(1, 1000)
    start = float((stream.start_time or 0) * time_base)
    if container.format.name == "avi":  # FFmpeg sets the duration from the index it finds; the header's count stays
        rate = stream.average_rate
        return Declared(start, start + stream.frames / float(rate), stream.frames, whole=False) if stream.frames and rate else None
    if stream.duration:
        return Declared(start, start + float(stream.duration * time_base), stream.frames, whole=False)
    tagged = _tagged_duration(stream.metadata)
    if tagged is not None:
        return Declared(start, tagged, stream.frames, whole=False)
    if container.duration:
        end = ((container.start_time or 0) + container.duration) / av.time_base
        return Declared(start, end, stream.frames, whole=True)
    return None


def _tagged_duration(metadata: dict[str, str]) -> float | None:
    """Matroska's per-stream DURATION tag (`HH:MM:SS.nnnnnnnnn`, the stream's end), as FFmpeg and mkvmerge write it."""
    value = next((v for k, v in metadata.items() if k.upper().partition("-")[0] == "DURATION"), "")
    try:
        hours, minutes, seconds = value.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def check_length(path: Path, declared: Declared | None, frames: int, video_end: float | None,
                 any_end: float | None) -> None:
    """Refuse a source whose packets stop short of the length its container declares.

    FFmpeg reads a cut file (an unfinished download or copy, a faststart MP4 or a Matroska file cut
    mid-cluster) to where it stops without a word, so its end would pass for the video's end.
    `video_end` and `any_end` are where the video's and any stream's packets end (seconds).
    """
    if declared is None:
        return
    reached = any_end if declared.whole else video_end
    if reached is None or reached < declared.end - _LENGTH_SLACK_S:
        ends = (video_end if video_end is not None else declared.start) - declared.start
        raise VideoError(f"{path}: ends after frame {frames} ({ends:.2f} s) but its container declares {declared}: "
                         "cut short, or a header that overstates its length")


# --- how the result is encoded --------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeSettings:
    codec: str
    pix_fmt: str
    options: dict[str, str]
    container: str  # FFmpeg's name of OUT's format, picked by OUT's suffix
    global_header: bool  # the container wants stream headers apart (mkv, mp4), so the encoders must too
    kept: tuple[int, ...] = ()  # the source's other streams OUT's container holds (`check_streams`)

    def open(self, source: SourceVideo, width: int, height: int) -> VideoCodecContext:
        """A fresh encoder: every segment gets one, configured identically."""
        ctx = cast(VideoCodecContext, av.CodecContext.create(self.codec, "w"))
        configure_encoder(ctx, self, source, width, height)
        if self.global_header:
            ctx.flags |= Flags.global_header
        ctx.open()
        return ctx

    def check(self, source: SourceVideo, width: int, height: int) -> None:
        """Open the encoder once before any work, so a bad --preset or a missing GPU encoder is a usage error."""
        try:
            self.open(source, width, height)
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoError(f"{self.codec} does not start with these settings ({error_cause(exc)}); "
                             "check --codec, --preset, --crf and --pix-fmt") from None


def configure_encoder(ctx: VideoCodecContext, settings: EncodeSettings, source: SourceVideo,
               width: int, height: int) -> None:
    ctx.width, ctx.height, ctx.pix_fmt = width, height, settings.pix_fmt
    ctx.time_base = source.time_base
    ctx.framerate = source.rate
    tags = encoded_tags(source.tags, source.pix_fmt, settings.pix_fmt, height)
    ctx.color_range, ctx.colorspace = tags.range, tags.matrix
    ctx.color_primaries, ctx.color_trc = tags.primaries, tags.transfer
    if source.sample_aspect_ratio:
        ctx.sample_aspect_ratio = source.sample_aspect_ratio
    ctx.options = dict(settings.options)


# Encoders that take only whole chroma samples: 4:2:0 in even widths and heights, 4:2:2 in even
# widths. Opened on another size they fail with a bare "Generic error in an external library".
_WHOLE_CHROMA = frozenset({"libx264", "libx265", "libsvtav1", "h264_nvenc", "hevc_nvenc"})


def check_size(codec: str, pix_fmt: str, source: SourceVideo, scale: int) -> None:
    """Refuse, before any work, an upscaled size the encoder cannot take in `pix_fmt`, naming the ways out."""
    if codec not in _WHOLE_CHROMA:
        return
    desc = av.VideoFormat(pix_fmt)
    width, height = source.width * scale, source.height * scale
    halved_w, halved_h = desc.chroma_width(1024) < 1024, desc.chroma_height(1024) < 1024
    odd = [name for name, size, halved in (("width", width, halved_w), ("height", height, halved_h)) if halved and size % 2]
    if not odd:
        return
    deep = bit_depth(pix_fmt) > 8
    supported = {f.name for f in av.Codec(codec, "w").video_formats or []}
    full = next((f for f in (("yuv444p10le", "yuv444p16le") if deep else ("yuv444p",)) if f in supported), None)
    raise VideoError(f"the upscaled size {width}x{height} ({source.width}x{source.height} x {scale}) is odd in "
                     f"{' and '.join(odd)}, and {codec} encodes {pix_fmt} (chroma halved "
                     f"{'both ways' if halved_h else 'horizontally'}) only in even sizes; use "
                     + (f"--pix-fmt {full}, or " if full else "") + "a --scale that gives even sizes")


def encoder_available(codec: str) -> bool:
    try:
        av.Codec(codec, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def _encoder_opens(codec: str) -> bool:
    """Whether the encoder starts here: the wheel may have NVENC where the GPU has none (an H100 has none)."""
    try:
        ctx = cast(VideoCodecContext, av.CodecContext.create(codec, "w"))
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 256, 256, "yuv420p", Fraction(1, 25)
        ctx.open()
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def choose_codec(requested: str, bits: int, cuda: bool) -> str:
    """`auto`: NVENC where the wheel has it and it opens on this GPU, else x264 (8-bit) or x265 (deeper)."""
    if requested != "auto":
        if not encoder_available(requested):
            raise VideoError(f"--codec {requested}: this FFmpeg build has no such encoder")
        return requested
    preferred = ("hevc_nvenc" if bits > 8 else "h264_nvenc") if cuda else None
    if preferred and encoder_available(preferred) and _encoder_opens(preferred):
        return preferred
    return "libx265" if bits > 8 else "libx264"


def default_pix_fmt(source_pix_fmt: str, codec: str) -> str:
    """The source's chroma family and depth (8 or 10 bit) in a format the encoder takes."""
    layout = yuv_layout(source_pix_fmt)
    family = {(2, 2): "420", (2, 1): "422", (1, 1): "444"}.get((layout.chroma_w, layout.chroma_h), "420") if layout else "420"
    if not layout and av.VideoFormat(source_pix_fmt).is_rgb:
        family = "444"
    deep = bit_depth(source_pix_fmt) > 8
    wanted = f"yuv{family}p" + ("10le" if deep else "")
    supported = [f.name for f in av.Codec(codec, "w").video_formats or []]
    if not supported:
        return wanted
    # Depth before chroma: NVENC takes 10-bit 4:2:0 only as p010le, and 8-bit would band.
    fallbacks = ("yuv420p10le", "p010le", f"yuv{family}p", "yuv420p") if deep else (f"yuv{family}p", "yuv420p")
    return next((c for c in (wanted, *fallbacks) if c in supported), supported[0])


def encode_settings(codec: str, crf: int | None, preset: str | None, pix_fmt: str, hdr: HdrMetadata | None,
                    out: Path) -> EncodeSettings:
    options: dict[str, str] = {}
    if codec in DEFAULT_CRF:
        quality = str(crf if crf is not None else DEFAULT_CRF[codec])
        options["cq" if codec.endswith("_nvenc") else "crf"] = quality
    if preset is not None:
        options["preset"] = preset
    if codec == "libx265":
        options["x265-params"] = ":".join(["log-level=error", *(hdr.x26x_params() if hdr else [])])
    elif codec == "libx264" and hdr:
        options["x264-params"] = ":".join(p.replace("master-display", "mastering-display").replace("max-cll", "cll")
                                          for p in hdr.x26x_params())
    elif codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # errors only: its banner is not ours to print
        if hdr:
            options["svtav1-params"] = ":".join(hdr.svtav1_params())
    supported = [f.name for f in av.Codec(codec, "w").video_formats or []]
    if supported and pix_fmt not in supported:
        raise VideoError(f"--pix-fmt {pix_fmt}: {codec} does not encode it")
    with open_output(out) as probe_out:
        try:
            probe_out.add_stream(codec)  # before any work: an image suffix (.png) names a muxer that holds no video codec
        except ValueError:
            raise VideoError(f"{out}: FFmpeg's {probe_out.format.name} container cannot hold {codec} video; "
                             "use .mkv, .mp4, .mov or .webm") from None
        global_header = bool(probe_out.format.flags & cast(int, av.format.Flags.global_header.value))
        return EncodeSettings(codec, pix_fmt, options, probe_out.format.name, global_header)


def open_output(out: Path, target: BinaryIO | None = None, container: str | None = None) -> av.container.OutputContainer:
    """An output container (into `target`, a file being written, when given); nothing is written until its header is."""
    try:
        return av.open(target if target is not None else str(out), "w", format=container)
    except ValueError:
        raise VideoError(f"{out}: FFmpeg has no container for {out.suffix or 'a name without a suffix'}; "
                         "use .mkv, .mp4, .mov or .webm") from None


# --- what the output can hold ------------------------------------------------------------------


# Cover art kept, by codec and the MIME type it is written with: MP4 keeps it as its `covr` atom,
# Matroska as an attachment that its demuxer shows as an attached picture again.
COVER_ART = {"mp4": {"png": "image/png", "mjpeg": "image/jpeg", "bmp": "image/bmp"},
             "matroska": {"png": "image/png", "mjpeg": "image/jpeg", "gif": "image/gif", "tiff": "image/tiff"}}


def check_streams(source: SourceVideo, container: str) -> tuple[tuple[int, ...], list[str]]:
    """Which of the source's other streams OUT's `container` holds, decided before any work so that
    none fails the final mux; a warning names each one left out and why."""
    kept: list[int] = []
    warnings: list[str] = []
    with open_input(source.path) as src:
        for stream in src.streams:
            if stream.index == source.stream_index:
                continue
            cover = stream.index in source.covers
            why = _left_out(stream, cover, container)
            if why is None:
                kept.append(stream.index)
            else:
                name = stream.metadata.get("filename") if stream.codec_context is None else stream.codec_context.name
                label = f"{'cover art' if cover else stream.type} stream #{stream.index}" + (f" ({name})" if name else "")
                warnings.append(f"{source.path}: {label} is not copied: {why}")
    return tuple(kept), warnings


def _left_out(stream: av.stream.Stream, cover: bool, container: str) -> str | None:
    """Why `container` cannot hold the stream; None if it can."""
    if stream.type == "data":
        return "data streams (timecodes and the like) are never copied"
    if cover:
        art = COVER_ART.get(container)
        if art is None:
            return f"{container} has no cover art"
        return None if stream.codec_context.name in art else f"{container} keeps cover art only as {', '.join(art)}"
    if stream.type == "attachment":  # WebM's muxer takes them and writes nothing
        return None if container == "matroska" else "only .mkv holds attachments"
    try:  # the muxer's own checks, on a header written to memory
        with av.open(io.BytesIO(), "w", format=container) as trial:
            trial.add_stream_from_template(stream)
            trial.start_encoding()
    except (av.error.FFmpegError, ValueError):
        codec = f"{stream.codec_context.name} " if stream.codec_context is not None else ""
        return f"{container} cannot hold {codec}{stream.type} streams"
    return None


def choose_encoding(source: SourceVideo, out: Path, scale: int, cuda: bool, codec: str, crf: int | None,
                    preset: str | None, pix_fmt: str | None) -> tuple[EncodeSettings, list[str]]:
    """The encoder for OUT as asked (auto: the best one available), checked against the source and
    OUT's container before any frame is decoded; with warnings for streams OUT will not carry and for
    an interlaced source (upscaled as it is, woven fields and all: a deinterlacer's choice is the user's)."""
    name = choose_codec(codec, source.bits, cuda)
    settings = encode_settings(name, crf, preset, pix_fmt or default_pix_fmt(source.pix_fmt, name), source.hdr, out)
    check_size(name, settings.pix_fmt, source, scale)
    settings.check(source, source.width * scale, source.height * scale)
    kept, warnings = check_streams(source, settings.container)
    if source.interlaced:
        warnings.append(f"{source.path}: the video is interlaced; its two fields are upscaled woven into one picture, "
                        "so moving edges comb; deinterlace it first for clean motion (ffmpeg -i IN -vf bwdif -c:a copy OUT)")
    return replace(settings, kept=kept), warnings
