"""Video containers and codecs with PyAV: what a source is, how the result is encoded, what OUT can hold.

The job that decodes, upscales and encodes in resumable segments is `jobs/video.py`; this module
knows nothing of the engine: it probes sources (timing, colour tags, rotation, HDR mastering data,
10-bit), chooses and configures encoders, and opens containers.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
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


def _picture_stream(container: av.container.InputContainer, path: Path) -> VideoStream:
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError(f"{path}: has no video stream")


def probe(path: Path) -> SourceVideo:
    """What the video stream is, read from its header and its first frame (side data lives there)."""
    with open_input(path) as container:
        if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # png_pipe, jpeg_pipe...
            raise VideoError(f"{path}: a still image, not a video; `upscale image` upscales it")
        stream = _picture_stream(container, path)
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
                           stream.sample_aspect_ratio, keep)


# --- how the result is encoded --------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeSettings:
    codec: str
    pix_fmt: str
    options: dict[str, str]
    container: str  # FFmpeg's name of OUT's format, picked by OUT's suffix
    global_header: bool  # the container wants stream headers apart (mkv, mp4), so the encoders must too

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


def check_streams(source: SourceVideo, out: Path) -> list[str]:
    """Fail early if OUT's container cannot hold a stream to copy; returns warnings for streams left out."""
    warnings: list[str] = []
    with open_input(source.path) as container, open_output(out) as probe_out:
        for stream in container.streams:
            if stream.index == source.stream_index:
                continue
            if stream.type == "data":
                warnings.append(f"{source.path}: data stream #{stream.index} is not copied")
                continue
            try:
                probe_out.add_stream_from_template(stream)
            except ValueError as exc:
                raise VideoError(f"{out}: cannot hold {source.path}'s {stream.type} stream #{stream.index} ({exc}); "
                                 "use a .mkv output") from None
    return warnings


def choose_encoding(source: SourceVideo, out: Path, scale: int, cuda: bool, codec: str, crf: int | None,
                    preset: str | None, pix_fmt: str | None) -> tuple[EncodeSettings, list[str]]:
    """The encoder for OUT as asked (auto: the best one available), checked against the source and
    OUT's container before any frame is decoded; with warnings for streams OUT will not carry."""
    name = choose_codec(codec, source.bits, cuda)
    settings = encode_settings(name, crf, preset, pix_fmt or default_pix_fmt(source.pix_fmt, name), source.hdr, out)
    settings.check(source, source.width * scale, source.height * scale)
    return settings, check_streams(source, out)
