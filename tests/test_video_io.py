"""The codec and container layer of `upscale video` (`upscaler.io.video`), in process, on tiny real clips.

What a source is (probe: timing, colour tags, rotation, HDR data, cover art beside the video), how long
its container says it is and whether its packets reach that, which encoder, pixel format and options
the result gets, and which of the source's other streams OUT's container keeps. The clips are 48x32
FFmpeg test patterns of a few frames, each made once per module on first use; every message is
asserted as the user sees it.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Self

import av
import imageio_ffmpeg
import pytest
from av.codec.context import Flags
from av.sidedata.sidedata import Type as SideDataType
from hypothesis import given, settings
from hypothesis import strategies as st

from upscaler.io import video
from upscaler.io.colour import ColourTags
from upscaler.io.video import (
    DEFAULT_CRF,
    Declared,
    EncodeSettings,
    HdrMetadata,
    SourceVideo,
    VideoError,
    check_length,
    check_size,
    check_streams,
    choose_codec,
    choose_encoding,
    configure_encoder,
    declared_length,
    default_pix_fmt,
    encode_settings,
    encoder_available,
    error_cause,
    open_input,
    open_output,
    probe,
)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
PATTERN = ["-f", "lavfi", "-i", "testsrc2=size=48x32:rate=25"]
SINE = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]
X264 = ["-c:v", "libx264", "-g", "5", "-bf", "0", "-pix_fmt", "yuv420p"]
BT709 = ["-vf", "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv"]
MASTERING = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
# The HDR10 example: BT.2020 primaries and D65 (R x,y  G x,y  B x,y  white x,y), 1000 / 0.0001 cd/m2, 1000 / 400 nits.
HDR = HdrMetadata((34000, 16000, 13250, 34500, 7500, 3000, 15635, 16450), (10000000, 1), 1000, 400)
CUT = "cut short, or a header that overstates its length"


def ffmpeg(*args: str | Path) -> None:
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", *map(str, args)], check=True)


def _font(folder: Path) -> Path:
    (folder / "font.ttf").write_bytes(b"not really a font")
    return folder / "font.ttf"


def _subs(folder: Path) -> Path:
    (folder / "subs.srt").write_text("1\n00:00:00,100 --> 00:00:00,300\nhello\n")
    return folder / "subs.srt"


def _cover_png(folder: Path) -> Path:
    ffmpeg(*PATTERN, "-frames:v", "1", folder / "cover.png")
    return folder / "cover.png"


def _icc_png(folder: Path) -> None:
    from PIL import Image, ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.new("RGB", (48, 32), (10, 200, 30)).save(folder / "icc.png", icc_profile=profile)


# name -> how to make it into `folder` (a recipe may use other clips through `make`).
RECIPES: dict[str, Callable[[Path, Callable[[str], Path]], None]] = {
    "plain.mp4": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "10", *X264, d / "plain.mp4"),
    "plain.mkv": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "10", *X264, d / "plain.mkv"),
    "plain.ts": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "10", *X264, d / "plain.ts"),
    "plain.avi": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "10", "-c:v", "mpeg4", "-pix_fmt", "yuv420p", d / "plain.avi"),
    "plain.mxf": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "10", "-c:v", "mpeg2video", "-pix_fmt", "yuv420p",
                                        d / "plain.mxf"),
    "piped.mkv": lambda d, make: (d / "piped.mkv").write_bytes(subprocess.run(
        [FFMPEG, "-loglevel", "error", *PATTERN, "-frames:v", "4", *X264, "-f", "matroska", "-"],
        capture_output=True, check=True).stdout),
    "tagged.mkv": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "4", *X264, *BT709, "-metadata:s:v", "title=Main",
                                         "-metadata:s:v", "language=fra", "-metadata:s:v", "comment=dropped",
                                         "-metadata:s:v", "Handler_Name=hn", d / "tagged.mkv"),
    "full.mkv": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "2", "-c:v", "ffv1", "-pix_fmt", "yuv444p",
                                       "-color_range", "pc", "-colorspace", "bt470bg", "-vf", "setsar=4/3", d / "full.mkv"),
    "audio.mkv": lambda d, make: ffmpeg(*PATTERN, *SINE, "-frames:v", "10", "-t", "0.4", *X264, "-c:a", "aac",
                                        d / "audio.mkv"),
    "rotated.mp4": lambda d, make: ffmpeg("-display_rotation", "90", "-i", make("plain.mp4"), "-c", "copy",
                                          d / "rotated.mp4"),
    "hdr.mkv": lambda d, make: ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "2", "-c:v",
                                      "libx265", "-pix_fmt", "yuv420p10le", "-x265-params",
                                      f"log-level=error:master-display={MASTERING}:max-cll=1000,400", "-vf",
                                      "setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc:range=tv",
                                      d / "hdr.mkv"),
    "woven.mkv": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "4", "-vf", "setfield=tff", "-c:v", "libx264", "-flags",
                                        "+ildct+ilme", "-pix_fmt", "yuv420p", d / "woven.mkv"),
    "odd.mkv": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "2", "-vf", "scale=47:33", "-c:v", "ffv1", "-pix_fmt",
                                      "yuv420p", d / "odd.mkv"),
    "pictures.mkv": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "2", "-c:v", "png", d / "pictures.mkv"),
    "still.png": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "1", d / "still.png"),
    "audio.m4a": lambda d, make: ffmpeg(*SINE, "-t", "0.4", "-c:a", "aac", d / "audio.m4a"),
    "empty.avi": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "0", "-c:v", "ffv1", d / "empty.avi"),
    "timecode.mov": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "4", *X264, "-timecode", "01:00:00:00",
                                           d / "timecode.mov"),
    "font.mkv": lambda d, make: ffmpeg(*PATTERN, "-frames:v", "4", *X264, "-attach", _font(d), "-metadata:s:t",
                                       "mimetype=application/x-truetype-font", d / "font.mkv"),
    "gif-cover.mkv": lambda d, make: (ffmpeg(*PATTERN, "-frames:v", "1", "-f", "gif", d / "cover.gif"),
                                      ffmpeg(*PATTERN, "-frames:v", "4", *X264, "-attach", d / "cover.gif",
                                             "-metadata:s:t", "mimetype=image/gif", d / "gif-cover.mkv")),
    # H.264, AAC, a mov_text subtitle and a PNG cover (an attached picture, stream #3).
    "cover.mp4": lambda d, make: (
        ffmpeg(*PATTERN, *SINE, "-i", _subs(d), "-map", "0", "-map", "1", "-map", "2", "-frames:v", "4", "-t", "0.4",
               *X264, "-c:a", "aac", "-c:s", "mov_text", d / "uncovered.mp4"),
        ffmpeg("-i", d / "uncovered.mp4", "-i", _cover_png(d), "-map", "0", "-map", "1", "-c", "copy",
               "-disposition:v:1", "attached_pic", d / "cover.mp4")),
    # Matroska cannot flag a cover: a lone PNG picture (#0) before the default-flagged video (#1).
    "cover-first.mkv": lambda d, make: ffmpeg(
        "-i", _cover_png(d), *PATTERN, "-map", "0", "-map", "1", "-frames:v:1", "4", "-c:v:0", "png", "-c:v:1",
        "libx264", "-pix_fmt:v:1", "yuv420p", "-disposition:v:0", "0", "-disposition:v:1", "default",
        d / "cover-first.mkv"),
    # Two PNG frames (#0, not a cover: more than one picture) before the default-flagged video (#1).
    "pictures-first.mkv": lambda d, make: ffmpeg(
        *PATTERN, *PATTERN, "-map", "0", "-map", "1", "-frames:v", "2", "-c:v:0", "png", "-c:v:1", "libx264",
        "-pix_fmt:v:1", "yuv420p", "-disposition:v:0", "0", "-disposition:v:1", "default", d / "pictures-first.mkv"),
    # The same lone picture flagged default: still the cover, the video (#1) still the one upscaled.
    "cover-default.mkv": lambda d, make: ffmpeg(
        "-i", _cover_png(d), *PATTERN, "-map", "0", "-map", "1", "-frames:v:1", "4", "-c:v:0", "png", "-c:v:1",
        "libx264", "-pix_fmt:v:1", "yuv420p", "-disposition:v:0", "default", "-disposition:v:1", "0",
        d / "cover-default.mkv"),
    # Raw H.264 at 10 fps: FFmpeg guesses 10 but averages 25 (no timestamps to average).
    "raw.h264": lambda d, make: ffmpeg("-f", "lavfi", "-i", "testsrc2=size=48x32:rate=10", "-frames:v", "2", *X264,
                                       "-f", "h264", d / "raw.h264"),
    # A PNG video whose frames carry an ICC profile as side data (PyAV 18 crashes freeing such a frame once read).
    "icc.mkv": lambda d, make: (_icc_png(d), ffmpeg("-i", d / "icc.png", "-c", "copy", d / "icc.mkv")),
    # Two H.264 videos, the second flagged default / neither flagged.
    "second-default.mkv": lambda d, make: ffmpeg(
        *PATTERN, *PATTERN, "-map", "0", "-map", "1", "-frames:v", "2", *X264, "-disposition:v:0", "0",
        "-disposition:v:1", "default", d / "second-default.mkv"),
    "no-default.mkv": lambda d, make: ffmpeg(
        *PATTERN, *PATTERN, "-map", "0", "-map", "1", "-frames:v", "2", *X264, "-disposition:v:0", "0",
        "-disposition:v:1", "0", d / "no-default.mkv"),
}


class Clips:
    """Clips made on first use, once per module."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __getitem__(self, name: str) -> Path:
        path = self.folder / name
        if not path.exists():
            RECIPES[name](self.folder, self.__getitem__)
        return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return Clips(tmp_path_factory.mktemp("video-io"))


def source(width: int = 48, height: int = 32, pix_fmt: str = "yuv420p", **changes: object) -> SourceVideo:
    """A SourceVideo as probe would make it, without a file (for what reads only its facts)."""
    facts: dict[str, object] = {"path": Path("in.mkv"), "stream_index": 0, "width": width, "height": height,
                                "pix_fmt": pix_fmt, "time_base": Fraction(1, 1000), "rate": Fraction(25),
                                "frames_estimate": 10, "tags": ColourTags(), "display_matrix": None, "hdr": None,
                                "sample_aspect_ratio": None}
    facts.update(changes)
    return SourceVideo(**facts)  # type: ignore[arg-type]


# --- HDR metadata as the encoders take it --------------------------------------------------------


def test_hdr_parameters_for_x26x_are_in_the_streams_own_units_green_first() -> None:
    assert HDR.x26x_params() == [f"master-display={MASTERING}", "max-cll=1000,400"]


def test_hdr_parameters_for_svtav1_are_decimals_in_cd_per_m2() -> None:
    assert HDR.svtav1_params() == [
        "mastering-display=G(0.2650,0.6900)B(0.1500,0.0600)R(0.6800,0.3200)WP(0.3127,0.3290)L(1000.0000,0.0001)",
        "content-light=1000,400"]


def test_hdr_parameters_need_both_primaries_and_luminance_for_the_mastering_display() -> None:
    for partial in (HdrMetadata(HDR.primaries, None, 1000, 400), HdrMetadata(None, (10000000, 1), 1000, 400)):
        assert partial.x26x_params() == ["max-cll=1000,400"]
        assert partial.svtav1_params() == ["content-light=1000,400"]
    no_light = HdrMetadata(HDR.primaries, HDR.luminance)
    assert no_light.x26x_params() == [f"master-display={MASTERING}"]
    assert no_light.svtav1_params()[0].startswith("mastering-display=G(0.2650,0.6900)") and len(no_light.svtav1_params()) == 1
    assert HdrMetadata(None, None, 0, 0).x26x_params() == ["max-cll=0,0"]
    assert HdrMetadata(None, None, 0, 0).svtav1_params() == ["content-light=0,0"]
    assert HdrMetadata(None, None).x26x_params() == [] == HdrMetadata(None, None).svtav1_params()


@given(st.lists(st.integers(0, 50000), min_size=8, max_size=8), st.integers(1, 10**8), st.integers(0, 10**4),
       st.integers(0, 10**4), st.integers(0, 10**4))
@settings(max_examples=30, deadline=None)
def test_hdr_parameters_name_each_primary_where_it_belongs(primaries: list[int], high: int, low: int, cll: int,
                                                           fall: int) -> None:
    rx, ry, gx, gy, bx, by, wx, wy = primaries
    hdr = HdrMetadata(tuple(primaries), (high, low), cll, fall)
    assert hdr.x26x_params() == [f"master-display=G({gx},{gy})B({bx},{by})R({rx},{ry})WP({wx},{wy})L({high},{low})",
                                 f"max-cll={cll},{fall}"]
    d = [f"{v / 50000:.4f}" for v in primaries]
    assert hdr.svtav1_params() == [(f"mastering-display=G({d[2]},{d[3]})B({d[4]},{d[5]})R({d[0]},{d[1]})WP({d[6]},{d[7]})"
                                   f"L({high / 10000:.4f},{low / 10000:.4f})"), f"content-light={cll},{fall}"]


def test_hdr_parameters_refuse_primaries_that_are_not_pairs() -> None:
    with pytest.raises(ValueError):
        HdrMetadata((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 1)).svtav1_params()


def test_q_rounds_a_rational_to_the_unit_and_zero_over_zero_is_zero() -> None:
    assert video._q(1, 2, 50000) == 25000
    assert video._q(34, 100, 50000) == 17000
    assert video._q(3, 20000, 50000) == 8  # 7.5 rounds to even
    assert video._q(1, 20000, 50000) == 2  # 2.5 too
    assert video._q(7, 3, 10) == 23
    assert video._q(5, 0, 50000) == 0
    assert video._q(0, 7, 50000) == 0


class Side(bytes):
    """Side data as PyAV hands it over: a buffer with a type."""

    def __new__(cls, kind: SideDataType, raw: bytes) -> Self:
        self = super().__new__(cls, raw)
        self.type = kind
        return self


def mastering(primaries: bool = True, luminance: bool = True, size: int = 88, red_x: tuple[int, int] = (17, 25),
              lowest: tuple[int, int] = (1, 10000)) -> Side:
    """AVMasteringDisplayMetadata: R, G, B, white (x, y) and min, max luminance as rationals, then the two flags."""
    rationals = [red_x, (8, 25), (265, 1000), (69, 100), (15, 100), (3, 50), (3127, 10000), (329, 1000),
                 lowest, (1000, 1)]
    raw = struct.pack("<22i", *(n for pair in rationals for n in pair), int(primaries), int(luminance))
    return Side(SideDataType.MASTERING_DISPLAY_METADATA, raw[:size] if size <= 88 else raw + bytes(size - 88))


def light(cll: int = 1000, fall: int = 400, size: int = 8) -> Side:
    raw = struct.pack("<2I", cll, fall)
    return Side(SideDataType.CONTENT_LIGHT_LEVEL, raw[:size] if size <= 8 else raw + bytes(size - 8))


def test_hdr_from_frame_side_data_in_fixed_point() -> None:
    assert video._hdr_from_frame([mastering(), light()]) == HDR
    assert video._hdr_from_frame([light(), mastering(size=96)]) == HDR
    assert video._hdr_from_frame([mastering()]) == HdrMetadata(HDR.primaries, HDR.luminance, None, None)
    assert video._hdr_from_frame([light(5, 7)]) == HdrMetadata(None, None, 5, 7)
    assert video._hdr_from_frame([mastering(luminance=False), light()]) == HdrMetadata(HDR.primaries, None, 1000, 400)
    # Luminance alone, with no primaries and no light levels, is no HDR data worth passing on.
    assert video._hdr_from_frame([mastering(primaries=False)]) is None
    assert video._hdr_from_frame([mastering(primaries=False), light()]) == HdrMetadata(None, HDR.luminance, 1000, 400)
    assert video._hdr_from_frame([]) is None


def test_hdr_from_frame_reads_signed_rationals_and_unsigned_light_levels() -> None:
    found = video._hdr_from_frame([mastering(red_x=(-1, 50000), lowest=(1, 1)), light(2**31 + 5, 2**32 - 1)])
    assert found == HdrMetadata((-1, *HDR.primaries[1:]), (10000000, 10000), 2**31 + 5, 2**32 - 1)


def test_hdr_from_frame_ignores_short_or_other_side_data() -> None:
    assert video._hdr_from_frame([mastering(size=87), light(size=7)]) is None
    assert video._hdr_from_frame([mastering(size=88), light(size=8)]) == HDR
    assert video._hdr_from_frame([Side(SideDataType.DISPLAYMATRIX, mastering())]) is None
    assert video._hdr_from_frame([Side(SideDataType.DISPLAYMATRIX, light())]) is None


def test_display_matrix_is_the_first_one_in_the_side_data() -> None:
    matrix = (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)
    other = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    assert video._display_matrix([light(), Side(SideDataType.DISPLAYMATRIX, struct.pack("<9i", *matrix)),
                                  Side(SideDataType.DISPLAYMATRIX, struct.pack("<9i", *other))]) == matrix
    assert video._display_matrix([light(), mastering()]) is None
    assert video._display_matrix([]) is None


# --- opening and probing a source ----------------------------------------------------------------


def test_open_input_names_a_missing_file_or_one_ffmpeg_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as missing:
        open_input(tmp_path / "none.mp4")
    assert str(missing.value) == f"{tmp_path / 'none.mp4'}: no such file"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"hello world" * 10)
    with pytest.raises(VideoError) as unreadable:
        open_input(junk)
    assert str(unreadable.value) == f"{junk}: not a video FFmpeg can read (Invalid data found when processing input)"
    assert missing.value.__cause__ is None and missing.value.__suppress_context__


def test_open_input_names_metadata_that_is_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def undecodable(*args: object, **kwargs: object) -> None:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(av, "open", undecodable)
    with pytest.raises(VideoError) as bad:
        open_input(tmp_path / "latin1.mkv")
    assert str(bad.value) == (f"{tmp_path / 'latin1.mkv'}: not a video FFmpeg can read "
                              "('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)")


def test_error_cause_is_the_strerror_else_the_message() -> None:
    assert error_cause(OSError(5, "Input/output error")) == "Input/output error"
    assert error_cause(ValueError("not a pixel format")) == "not a pixel format"
    assert error_cause(OSError("no errno")) == "no errno"


def test_probe_reads_an_mp4s_facts(clips: Clips) -> None:
    path = clips["plain.mp4"]
    assert probe(path) == SourceVideo(path, 0, 48, 32, "yuv420p", Fraction(1, 12800), Fraction(25), 10,
                                      ColourTags(0, 2, 2, 2), None, None, Fraction(1, 1),
                                      {"language": "und", "handler_name": "VideoHandler"}, frozenset(), False)
    assert probe(path).bits == 8


def test_probe_keeps_language_title_and_handler_of_any_case_and_the_colour_tags(clips: Clips) -> None:
    found = probe(clips["tagged.mkv"])
    assert found.metadata == {"language": "fra", "title": "Main", "HANDLER_NAME": "hn"}
    assert found.tags == ColourTags(1, 1, 1, 1)
    assert (found.time_base, found.rate, found.frames_estimate) == (Fraction(1, 1000), Fraction(25), 4)  # from the duration
    full = probe(clips["full.mkv"])
    assert (full.pix_fmt, full.tags, full.sample_aspect_ratio) == ("yuv444p", ColourTags(2, 5, 2, 2), Fraction(4, 3))


def test_probe_estimates_frames_from_the_stream_duration_or_the_containers(clips: Clips) -> None:
    ts = probe(clips["plain.ts"])  # no frame count: 36000 / 90000 s at 25 fps
    assert (ts.time_base, ts.frames_estimate) == (Fraction(1, 90000), 10)
    assert probe(clips["plain.avi"]).frames_estimate == 10
    assert probe(clips["plain.mxf"]).frames_estimate == 10
    assert probe(clips["piped.mkv"]).frames_estimate == 0  # written to a pipe: no duration anywhere
    assert probe(clips["plain.mkv"]).frames_estimate == 10  # no stream duration: the segment's, 0.4 s at 25 fps
    raw = probe(clips["raw.h264"])
    assert (raw.rate, raw.frames_estimate) == (Fraction(25), 0)  # the average rate, not the guessed one


class Proxy:
    """A real container or stream with some fields replaced (what no file here has: no time base, no rate)."""

    def __init__(self, real: object, **fields: object) -> None:
        self._real, self._fields = real, fields

    def __getattr__(self, name: str) -> object:
        return self._fields[name] if name in self._fields else getattr(self._real, name)


def probe_with(monkeypatch: pytest.MonkeyPatch, path: Path, length: int | None = None, **fields: object) -> SourceVideo:
    real_open = video.open_input

    class Opened(Proxy):
        def __enter__(self) -> Self:
            return self

        def __exit__(self, *exc: object) -> None:
            self._real.close()  # type: ignore[attr-defined]

        def decode(self, stream: Proxy) -> object:
            return self._real.decode(stream._real)  # type: ignore[attr-defined]

    def opened(at: Path) -> Opened:
        container = real_open(at)
        stream = Proxy(container.streams.video[0], **fields)
        return Opened(container, duration=length, streams=SimpleNamespace(video=[stream]))

    monkeypatch.setattr(video, "open_input", opened)
    return probe(path)


def test_probe_falls_back_to_a_millisecond_clock_and_25_fps(clips: Clips, monkeypatch: pytest.MonkeyPatch) -> None:
    none = {"time_base": None, "average_rate": None, "guessed_rate": None, "frames": 0}
    found = probe_with(monkeypatch, clips["plain.mkv"], None, duration=300, **none)  # 0.3 s at 25 fps: 7.5 frames
    assert (found.time_base, found.rate, found.frames_estimate) == (Fraction(1, 1000), Fraction(25), 8)
    guessed = probe_with(monkeypatch, clips["plain.mkv"], None, duration=300, **{**none, "guessed_rate": Fraction(10)})
    assert (guessed.rate, guessed.frames_estimate) == (Fraction(10), 3)
    counted = probe_with(monkeypatch, clips["plain.mkv"], 2_000_000, duration=300, **{**none, "frames": 7})
    assert counted.frames_estimate == 7, "the stated count first"
    timed = probe_with(monkeypatch, clips["plain.mkv"], 2_000_000, duration=300, **none)
    assert timed.frames_estimate == 8, "then the stream's duration, before the container's"
    whole = probe_with(monkeypatch, clips["plain.mkv"], 2_000_000, duration=None, **none)
    assert whole.frames_estimate == 50


def test_probe_reads_rotation_hdr_data_depth_and_interlacing_from_the_first_frame(clips: Clips) -> None:
    assert probe(clips["rotated.mp4"]).display_matrix == (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)
    hdr = probe(clips["hdr.mkv"])
    assert (hdr.hdr, hdr.pix_fmt, hdr.bits, hdr.display_matrix) == (HDR, "yuv420p10le", 10, None)
    assert hdr.tags == ColourTags(1, 9, 9, 16)
    assert probe(clips["woven.mkv"]).interlaced is True
    assert probe(clips["plain.mkv"]).interlaced is False
    pictures = probe(clips["pictures.mkv"])  # an image codec: its side data is not read
    assert (pictures.pix_fmt, pictures.hdr, pictures.display_matrix, pictures.covers) == ("rgb24", None, None, frozenset())


def test_probe_leaves_the_side_data_of_image_codecs_unread(clips: Clips) -> None:
    """Reading it would crash PyAV as the frame is freed, so a child process probes the clip."""
    code = f"from pathlib import Path; from upscaler.io.video import probe; print(probe(Path({str(clips['icc.mkv'])!r})).hdr)"
    env = {**os.environ, "PYTHONPATH": str(Path(video.__file__).parents[2])}
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert (child.returncode, child.stdout) == (0, "None\n"), child.stderr
    assert probe(clips["pictures.mkv"]).hdr is None  # (and in process, where no frame carries a profile)


def test_probe_refuses_a_still_image_no_video_no_frames_and_undecodable_video(clips: Clips, tmp_path: Path) -> None:
    still = clips["still.png"]
    with pytest.raises(VideoError) as image:
        probe(still)
    assert str(image.value) == f"{still}: a still image, not a video; `upscale image` upscales it"
    with pytest.raises(VideoError) as audio:
        probe(clips["audio.m4a"])
    assert str(audio.value) == f"{clips['audio.m4a']}: has no video stream"
    with pytest.raises(VideoError) as empty:
        probe(clips["empty.avi"])
    assert str(empty.value) == f"{clips['empty.avi']}: its video stream has no frames"
    data = bytearray(clips["plain.mp4"].read_bytes())
    with av.open(str(clips["plain.mp4"])) as container:
        for packet in container.demux(video=0):
            if packet.size:
                data[packet.pos:packet.pos + packet.size] = bytes(packet.size)
    zeroed = tmp_path / "zeroed.mp4"
    zeroed.write_bytes(data)
    with pytest.raises(VideoError) as undecodable:
        probe(zeroed)
    assert str(undecodable.value) == f"{zeroed}: cannot decode its video (Invalid data found when processing input)"


def test_a_still_image_in_the_image2_demuxer_is_refused(clips: Clips, tmp_path: Path) -> None:
    numbered = tmp_path / "frame-%03d.png"
    ffmpeg(*PATTERN, "-frames:v", "2", numbered)
    with pytest.raises(VideoError) as image:
        probe(numbered)
    assert str(image.value) == f"{numbered}: a still image, not a video; `upscale image` upscales it"


# --- which stream is the video -------------------------------------------------------------------


def test_an_attached_picture_is_cover_art_not_the_video(clips: Clips) -> None:
    found = probe(clips["cover.mp4"])
    assert (found.stream_index, found.covers, found.width) == (0, frozenset({3}), 48)


def test_a_lone_picture_before_the_default_video_is_its_cover(clips: Clips) -> None:
    found = probe(clips["cover-first.mkv"])
    assert (found.stream_index, found.covers, found.pix_fmt) == (1, frozenset({0}), "yuv420p")
    assert video._one_picture(clips["cover-first.mkv"], 0) is True
    assert video._one_picture(clips["cover-first.mkv"], 1) is False


def test_a_lone_picture_flagged_default_is_still_the_cover(clips: Clips) -> None:
    found = probe(clips["cover-default.mkv"])
    assert (found.stream_index, found.covers) == (1, frozenset({0}))


def test_pictures_of_more_than_one_frame_are_a_video_not_a_cover(clips: Clips) -> None:
    found = probe(clips["pictures-first.mkv"])
    assert (found.stream_index, found.covers) == (1, frozenset())
    assert video._one_picture(clips["pictures-first.mkv"], 0) is False


def test_the_default_flagged_video_else_the_first_is_the_one_upscaled(clips: Clips) -> None:
    assert (probe(clips["second-default.mkv"]).stream_index, probe(clips["second-default.mkv"]).covers) == (1, frozenset())
    assert (probe(clips["no-default.mkv"]).stream_index, probe(clips["no-default.mkv"]).covers) == (0, frozenset())


def test_a_matroska_cover_attachment_is_read_as_an_attached_picture(clips: Clips) -> None:
    found = probe(clips["gif-cover.mkv"])
    assert (found.stream_index, found.covers) == (0, frozenset({1}))


def test_one_picture_of_a_stream_that_cannot_be_demuxed_is_false(clips: Clips, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, *streams: object) -> None:
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(av.container.InputContainer, "demux", broken)
    assert video._one_picture(clips["cover-first.mkv"], 0) is False


# --- the length a container declares -------------------------------------------------------------


def test_declared_lengths_of_real_containers(clips: Clips) -> None:
    expected = {"plain.mp4": Declared(0.0, 0.4, 10, False),  # the track's duration and sample count
                "plain.mkv": Declared(0.0, 0.4, 0, False),  # the DURATION tag
                "plain.avi": Declared(0.0, 0.4, 10, False),  # the header's frame count
                "plain.mxf": Declared(0.0, 0.4, 0, False),  # the track's duration
                "plain.ts": None,  # states none
                "piped.mkv": None}  # a Matroska written to a pipe: no tag, no segment duration
    for name, declared in expected.items():
        with av.open(str(clips[name])) as container:
            assert declared_length(container, container.streams.video[0]) == declared, name


def test_a_matroska_without_the_duration_tag_declares_the_segments_length(clips: Clips, tmp_path: Path) -> None:
    data = clips["audio.mkv"].read_bytes()
    assert data.count(b"DURATION") == 2
    untagged = tmp_path / "untagged.mkv"
    untagged.write_bytes(data.replace(b"DURATION", b"DURATIOX"))
    with av.open(str(untagged)) as container:
        declared = declared_length(container, container.streams.video[0])
        end = container.duration / 1_000_000
    assert declared == Declared(0.0, end, 0, True) and end > 0.4


def fake(name: str, duration: int | None = None, start_time: int | None = None, stream_start: int | None = None,
         **stream: object) -> tuple[object, object]:
    """A container (`duration`, `start_time`) and its video stream with just the fields declared_length reads."""
    facts: dict[str, object] = {"time_base": Fraction(1, 1000), "start_time": None, "average_rate": Fraction(25), "frames": 0,
                                    "duration": None, "metadata": {}}
    if "stream_duration" in stream:
        stream["duration"] = stream.pop("stream_duration")
    facts.update(stream, start_time=stream_start)
    return (SimpleNamespace(format=SimpleNamespace(name=name), duration=duration, start_time=start_time),
            SimpleNamespace(**facts))


def test_declared_length_boundaries() -> None:
    mp4 = "mov,mp4,m4a,3gp,3g2,mj2"
    assert declared_length(*fake(mp4, start_time=7, duration=9_000_000)) == Declared(0.0, 9.000007, 0, True)
    assert declared_length(*fake(mp4, duration=9_000_000, stream_start=900, time_base=Fraction(1, 90000))) == \
        Declared(0.01, 9.0, 0, True)
    assert declared_length(*fake(mp4, start_time=1_000_000, duration=2_000_000)) == Declared(0.0, 3.0, 0, True)
    assert declared_length(*fake(mp4, duration=2_000_000, stream_start=500)) == Declared(0.5, 2.0, 0, True)
    assert declared_length(*fake(mp4, time_base=None, stream_start=500, stream_duration=300, frames=3)) == \
        Declared(0.5, 0.8, 3, False)
    assert declared_length(*fake(mp4, time_base=Fraction(1, 100), stream_duration=300, frames=3)) == Declared(0.0, 3.0, 3, False)
    assert declared_length(*fake(mp4, stream_start=2, frames=5,
                                 metadata={"DURATION": "00:00:04.000"})) == Declared(0.002, 4.0, 5, False)
    assert declared_length(*fake(mp4)) is None
    assert declared_length(*fake("mxf")) is None
    assert declared_length(*fake("mpegts", duration=5_000_000, frames=10, stream_duration=10)) is None
    assert declared_length(*fake("matroska,webm", duration=5_000_000)) == Declared(0.0, 5.0, 0, True)


def test_avis_declared_length_is_its_frame_count_at_its_rate() -> None:
    assert declared_length(*fake("avi", frames=50, stream_duration=25)) == Declared(0.0, 2.0, 50, False)
    assert declared_length(*fake("avi", frames=50, stream_start=250, average_rate=Fraction(50))) == Declared(0.25, 1.25, 50, False)
    assert declared_length(*fake("avi", frames=0, stream_duration=25, duration=1_000_000)) is None  # no count: FFmpeg's index decides nothing here
    assert declared_length(*fake("avi", frames=50, average_rate=None, stream_duration=25)) is None
    assert declared_length(*fake("avi", frames=50, average_rate=Fraction(0), stream_duration=25)) is None


def test_declared_length_says_seconds_and_frames() -> None:
    assert str(Declared(0.0, 2.0, 50, False)) == "2.00 s (50 frames)"
    assert str(Declared(1.0, 3.005, 0, True)) == "2.00 s"
    assert str(Declared(0.5, 1.257, 1, False)) == "0.76 s (1 frames)"


def test_tagged_duration_reads_matroskas_duration_tag() -> None:
    tagged = video._tagged_duration
    assert tagged({"DURATION": "00:00:02.000000000"}) == 2.0
    assert tagged({"ENCODER": "x", "duration": "01:02:03.500000000"}) == 3723.5
    assert tagged({"DURATION-eng": "00:01:00.25"}) == 60.25
    assert tagged({"DURATION": "00:00:01", "DURATION-eng": "00:00:09"}) == 1.0  # the first
    assert tagged({"XDURATION": "00:00:02.000", "DURATIONS": "00:00:02.000", "-DURATION": "00:00:02"}) is None
    assert tagged({}) is None
    for bad in ("", "2.0", "00:02.000", "00:00:00:02", "aa:00:02", "00:00:zz"):
        assert tagged({"DURATION": bad}) is None, bad


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59_999))
@settings(max_examples=40, deadline=None)
def test_tagged_duration_is_hours_minutes_and_seconds(hours: int, minutes: int, millis: int) -> None:
    value = f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}000000"
    assert video._tagged_duration({"DURATION": value}) == pytest.approx(hours * 3600 + minutes * 60 + millis / 1000, abs=1e-9)


def test_check_length_allows_half_a_second_short_of_the_declared_end_and_no_more() -> None:
    declared = Declared(1.0, 3.0, 50, False)
    check_length(Path("in.mp4"), declared, 38, 2.5, None)  # exactly at the edge
    check_length(Path("in.mp4"), declared, 50, 3.0, 3.0)
    check_length(Path("in.mp4"), declared, 60, 9.0, None)
    with pytest.raises(VideoError) as short:
        check_length(Path("in.mp4"), declared, 37, 2.4999, 9.0)
    assert str(short.value) == f"in.mp4: ends after frame 37 (1.50 s) but its container declares 2.00 s (50 frames): {CUT}"
    with pytest.raises(VideoError) as short:
        check_length(Path("in.mp4"), declared, 25, 2.0, 9.0)
    assert str(short.value) == f"in.mp4: ends after frame 25 (1.00 s) but its container declares 2.00 s (50 frames): {CUT}"
    check_length(Path("in.mp4"), None, 0, None, None)


def test_check_length_of_a_whole_file_length_looks_at_any_streams_end() -> None:
    whole = Declared(0.0, 2.0, 0, True)
    check_length(Path("in.mkv"), whole, 10, 0.4, 1.5)  # the audio goes on to the end
    with pytest.raises(VideoError) as short:
        check_length(Path("in.mkv"), whole, 10, 1.9, 1.49)
    assert str(short.value) == f"in.mkv: ends after frame 10 (1.90 s) but its container declares 2.00 s: {CUT}"
    with pytest.raises(VideoError) as none:
        check_length(Path("in.mkv"), whole, 0, None, None)
    assert str(none.value) == f"in.mkv: ends after frame 0 (0.00 s) but its container declares 2.00 s: {CUT}"
    with pytest.raises(VideoError) as none:
        check_length(Path("in.mkv"), Declared(0.5, 2.0, 4, False), 0, None, 2.0)  # no video packets at all
    assert str(none.value) == f"in.mkv: ends after frame 0 (0.00 s) but its container declares 1.50 s (4 frames): {CUT}"


# --- the encoder ---------------------------------------------------------------------------------


def settings_for(codec: str = "libx264", pix_fmt: str = "yuv420p", options: dict[str, str] | None = None,
                 global_header: bool = True) -> EncodeSettings:
    return EncodeSettings(codec, pix_fmt, options if options is not None else {"crf": "18"}, "matroska", global_header)


def test_configure_encoder_sets_size_timing_colour_aspect_and_options() -> None:
    ctx = av.CodecContext.create("libx264", "w")
    tagged = source(pix_fmt="yuv420p", tags=ColourTags(2, 5, 6, 7), time_base=Fraction(1, 12800), rate=Fraction(30000, 1001),
                    sample_aspect_ratio=Fraction(4, 3))
    options = {"crf": "18", "preset": "ultrafast"}
    configure_encoder(ctx, settings_for(pix_fmt="yuv444p", options=options), tagged, 96, 64)
    assert (ctx.width, ctx.height, ctx.pix_fmt) == (96, 64, "yuv444p")
    assert (ctx.time_base, ctx.framerate, ctx.sample_aspect_ratio) == (Fraction(1, 12800), Fraction(30000, 1001),
                                                                       Fraction(4, 3))
    assert (ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc) == (2, 5, 6, 7)
    assert ctx.options == options
    options["crf"] = "30"
    assert ctx.options["crf"] == "18", "a copy: the settings stay the same for every segment"


def test_configure_encoder_tags_an_untagged_or_rgb_source_as_its_frames_are_converted() -> None:
    ctx = av.CodecContext.create("libx264", "w")
    configure_encoder(ctx, settings_for(), source(), 1280, 720)
    assert (ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc) == (0, 1, 2, 2)  # BT.709 from 720 lines
    assert ctx.sample_aspect_ratio is None
    ctx = av.CodecContext.create("libx264", "w")
    configure_encoder(ctx, settings_for(), source(pix_fmt="rgb24", tags=ColourTags(2, 0, 1, 13)), 96, 64)
    assert (ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc) == (1, 6, 1, 13)  # limited BT.601
    ctx = av.CodecContext.create("ffv1", "w")
    configure_encoder(ctx, settings_for("ffv1", "gbrp", {}), source(tags=ColourTags(1, 1, 1, 1)), 96, 64)
    assert (ctx.color_range, ctx.colorspace, ctx.pix_fmt) == (2, 0, "gbrp")


def test_an_encoder_opens_configured_with_the_global_header_flag_its_container_wants() -> None:
    ctx = settings_for(options={"crf": "18", "preset": "ultrafast"}).open(source(), 96, 64)
    assert ctx.is_open and (ctx.width, ctx.height, ctx.pix_fmt, ctx.name) == (96, 64, "yuv420p", "libx264")
    assert ctx.flags & Flags.global_header and ctx.extradata
    defaults = int(av.CodecContext.create("libx264", "w").flags)
    assert defaults and int(ctx.flags) == defaults | int(Flags.global_header), "added to the encoder's own flags"
    plain = settings_for(options={"preset": "ultrafast"}, global_header=False).open(source(), 48, 32)
    assert plain.is_open and not plain.flags & Flags.global_header and not plain.extradata


def test_an_encoder_that_does_not_start_is_a_usage_error_naming_the_options() -> None:
    settings_for().check(source(), 96, 64)
    with pytest.raises(VideoError) as preset:
        settings_for(options={"preset": "nope"}).check(source(), 96, 64)
    assert str(preset.value) == ("libx264 does not start with these settings (Invalid argument); "
                                 "check --codec, --preset, --crf and --pix-fmt")
    with pytest.raises(VideoError) as pix_fmt:
        settings_for(pix_fmt="nope").check(source(), 96, 64)
    assert str(pix_fmt.value) == ("libx264 does not start with these settings (not a pixel format: 'nope'); "
                                  "check --codec, --preset, --crf and --pix-fmt")
    with pytest.raises(VideoError) as odd:
        settings_for().check(source(), 95, 64)
    assert str(odd.value).startswith("libx264 does not start with these settings (Generic error in an external library")


def test_check_size_refuses_an_odd_size_where_chroma_is_halved_naming_the_ways_out() -> None:
    def refusal(codec: str, pix_fmt: str, width: int, height: int, scale: int) -> str:
        with pytest.raises(VideoError) as refused:
            check_size(codec, pix_fmt, source(width, height, pix_fmt), scale)
        return str(refused.value)

    ways = "only in even sizes; use --pix-fmt"
    assert refusal("libx264", "yuv420p", 47, 33, 3) == (
        "the upscaled size 141x99 (47x33 x 3) is odd in width and height, and libx264 encodes yuv420p (chroma halved "
        f"both ways) {ways} yuv444p, or a --scale that gives even sizes")
    assert refusal("libx265", "yuv420p", 48, 33, 1) == (
        "the upscaled size 48x33 (48x33 x 1) is odd in height, and libx265 encodes yuv420p (chroma halved "
        f"both ways) {ways} yuv444p, or a --scale that gives even sizes")
    assert refusal("libx264", "yuv422p", 47, 32, 1) == (
        "the upscaled size 47x32 (47x32 x 1) is odd in width, and libx264 encodes yuv422p (chroma halved "
        f"horizontally) {ways} yuv444p, or a --scale that gives even sizes")
    assert refusal("libx264", "yuv420p10le", 47, 32, 1).endswith(f"{ways} yuv444p10le, or a --scale that gives even sizes")
    assert refusal("libx264", "yuv420p9le", 47, 32, 1).endswith(f"{ways} yuv444p10le, or a --scale that gives even sizes")
    assert refusal("h264_nvenc", "p010le", 47, 32, 1).endswith(f"{ways} yuv444p16le, or a --scale that gives even sizes")
    assert refusal("hevc_nvenc", "yuv420p", 47, 32, 1).endswith(f"{ways} yuv444p, or a --scale that gives even sizes")
    assert refusal("libsvtav1", "yuv420p10le", 47, 32, 1) == (
        "the upscaled size 47x32 (47x32 x 1) is odd in width, and libsvtav1 encodes yuv420p10le (chroma halved "
        "both ways) only in even sizes; use a --scale that gives even sizes")


def test_check_size_passes_even_sizes_full_chroma_and_other_encoders() -> None:
    check_size("libx264", "yuv420p", source(47, 33), 2)
    check_size("libx264", "yuv420p", source(48, 32), 1)
    check_size("libx264", "yuv422p", source(48, 33, "yuv422p"), 1)  # halved horizontally only
    check_size("libx264", "yuv444p", source(47, 33, "yuv444p"), 3)
    check_size("ffv1", "yuv420p", source(47, 33), 1)  # takes odd sizes
    check_size("mpeg4", "yuv420p", source(47, 33), 1)


def test_encoder_available_and_whether_one_opens() -> None:
    assert encoder_available("libx264") and encoder_available("ffv1")
    assert not encoder_available("nope") and not encoder_available("")
    assert video._encoder_opens("libx264") is True
    assert video._encoder_opens("ffv1") is True
    assert video._encoder_opens("nope") is False


def test_encoder_opens_on_even_256_square_420() -> None:
    """libx264 takes 4:2:0 only in even sizes, mpeg4 needs a time base, prores_ks no 4:2:0: the probe is exactly that."""
    assert video._encoder_opens("mpeg4") is True
    assert video._encoder_opens("mpeg2video") is True  # 25 fps is one of MPEG-2's rates
    assert video._encoder_opens("prores_ks") is False
    assert video._encoder_opens("libsvtav1") is True  # at least 64 pixels each way


def test_choose_codec_as_requested_or_the_best_available() -> None:
    assert choose_codec("libx265", 8, False) == "libx265"
    assert choose_codec("ffv1", 10, True) == "ffv1"
    with pytest.raises(VideoError) as missing:
        choose_codec("nope", 8, False)
    assert str(missing.value) == "--codec nope: this FFmpeg build has no such encoder"
    assert [choose_codec("auto", bits, False) for bits in (8, 9, 10, 16)] == ["libx264", "libx265", "libx265", "libx265"]


def test_choose_codec_auto_prefers_nvenc_where_it_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []

    def opens(codec: str) -> bool:
        tried.append(codec)
        return True

    monkeypatch.setattr(video, "_encoder_opens", opens)
    assert [choose_codec("auto", bits, True) for bits in (8, 9, 10)] == ["h264_nvenc", "hevc_nvenc", "hevc_nvenc"]
    assert tried == ["h264_nvenc", "hevc_nvenc", "hevc_nvenc"]
    assert choose_codec("auto", 10, False) == "libx265" and choose_codec("auto", 8, False) == "libx264"
    assert len(tried) == 3, "without --device cuda NVENC is never tried"
    monkeypatch.setattr(video, "_encoder_opens", lambda codec: False)
    assert (choose_codec("auto", 8, True), choose_codec("auto", 10, True)) == ("libx264", "libx265")
    monkeypatch.setattr(video, "_encoder_opens", opens)
    monkeypatch.setattr(video, "encoder_available", lambda codec: codec.startswith("lib"))
    assert (choose_codec("auto", 8, True), choose_codec("auto", 10, True)) == ("libx264", "libx265")
    assert len(tried) == 3, "an encoder the wheel lacks is not opened"


@pytest.mark.parametrize(("pix_fmt", "codec", "expected"), [
    ("yuv420p", "libx264", "yuv420p"), ("yuv422p", "libx264", "yuv422p"), ("yuv444p", "libx264", "yuv444p"),
    ("yuvj422p", "libx264", "yuv422p"), ("yuv420p10le", "libx264", "yuv420p10le"),
    ("yuv422p10le", "libx264", "yuv422p10le"), ("yuv444p12le", "libx265", "yuv444p10le"),
    ("yuv410p", "libx264", "yuv420p"), ("yuv440p", "libx264", "yuv420p"), ("nv12", "libx264", "yuv420p"),
    ("p010le", "libx265", "yuv420p10le"), ("gray", "libx264", "yuv420p"), ("rgb24", "libx264", "yuv444p"),
    ("gbrp10le", "libx265", "yuv444p10le"), ("pal8", "libx264", "yuv420p"),
    ("yuv422p", "libsvtav1", "yuv420p"), ("yuv422p10le", "libsvtav1", "yuv420p10le"), ("rgb48le", "libsvtav1", "yuv420p10le"),
    ("yuv420p10le", "h264_nvenc", "p010le"), ("yuv422p10le", "hevc_nvenc", "p010le"), ("yuv444p10le", "hevc_nvenc", "p010le"),
    ("yuv422p", "h264_nvenc", "yuv420p"), ("yuv444p", "h264_nvenc", "yuv444p"),
    ("yuv422p10le", "libvpx-vp9", "yuv422p"), ("yuv444p10le", "libvpx-vp9", "yuv444p"),
    ("yuv420p", "prores_ks", "yuv422p10le"), ("yuv444p10le", "prores_ks", "yuv444p10le"),
    ("yuv420p10le", "prores_ks", "yuv422p10le"), ("yuv444p", "mpeg4", "yuv420p"),
    ("yuv422p", "rawvideo", "yuv422p"), ("yuv420p", "rawvideo", "yuv420p"), ("yuv410p", "rawvideo", "yuv420p"),
    ("nv12", "rawvideo", "yuv420p"), ("gray", "rawvideo", "yuv420p"), ("yuv420p9le", "libx265", "yuv420p10le"),
    ("yuv422p", "libwebp", "yuv420p"), ("yuv422p10le", "libwebp", "yuv420p"), ("yuv444p10le", "mjpeg", "yuv444p"), ("yuv444p10le", "rawvideo", "yuv444p10le"), ("bgr0", "rawvideo", "yuv444p"),
])
def test_default_pix_fmt_keeps_chroma_and_depth_where_the_encoder_can(pix_fmt: str, codec: str, expected: str) -> None:
    assert default_pix_fmt(pix_fmt, codec) == expected


# --- encode settings and OUT's container ---------------------------------------------------------


def test_encode_settings_options_per_codec(tmp_path: Path) -> None:
    out = tmp_path / "out.mkv"

    def options(codec: str, crf: int | None = None, preset: str | None = None, hdr: HdrMetadata | None = None,
                pix_fmt: str = "yuv420p") -> dict[str, str]:
        return encode_settings(codec, crf, preset, pix_fmt, hdr, out).options

    assert options("libx264") == {"crf": "18"}
    assert options("libx264", 0, "slow") == {"crf": "0", "preset": "slow"}
    assert options("libx265") == {"crf": "20", "x265-params": "log-level=error"}
    assert options("libx265", 12, hdr=HDR) == {"crf": "12",
                                              "x265-params": f"log-level=error:master-display={MASTERING}:max-cll=1000,400"}
    assert options("libx264", hdr=HDR) == {"crf": "18", "x264-params": f"mastering-display={MASTERING}:cll=1000,400"}
    assert options("libsvtav1") == {"crf": "28"}
    assert options("libsvtav1", 30, "8", HDR) == {"crf": "30", "preset": "8", "svtav1-params": ":".join(HDR.svtav1_params())}
    assert options("h264_nvenc") == {"cq": "19"} and options("hevc_nvenc", 25, "p7") == {"cq": "25", "preset": "p7"}
    assert options("ffv1", 10, pix_fmt="yuv444p") == {} and options("ffv1", hdr=HDR, preset="x") == {"preset": "x"}
    assert DEFAULT_CRF == {"libx264": 18, "libx265": 20, "libsvtav1": 28, "h264_nvenc": 19, "hevc_nvenc": 21}
    assert not out.exists(), "nothing is written"


def test_encode_settings_quiets_svtav1_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SVT_LOG", raising=False)
    encode_settings("libx264", None, None, "yuv420p", None, tmp_path / "out.mkv")
    assert "SVT_LOG" not in os.environ
    encode_settings("libsvtav1", None, None, "yuv420p", None, tmp_path / "out.mkv")
    assert os.environ["SVT_LOG"] == "1"
    monkeypatch.setenv("SVT_LOG", "4")
    encode_settings("libsvtav1", None, None, "yuv420p", None, tmp_path / "out.mkv")
    assert os.environ["SVT_LOG"] == "4"


def test_encode_settings_container_and_global_header_follow_outs_suffix(tmp_path: Path) -> None:
    found = {suffix: encode_settings("libx264", None, None, "yuv420p", None, tmp_path / f"out{suffix}")
             for suffix in (".mkv", ".mp4", ".mov", ".avi", ".ts")}
    assert {s: (e.container, e.global_header) for s, e in found.items()} == {
        ".mkv": ("matroska", True), ".mp4": ("mp4", True), ".mov": ("mov", True), ".avi": ("avi", False),
        ".ts": ("mpegts", False)}
    assert found[".mkv"] == EncodeSettings("libx264", "yuv420p", {"crf": "18"}, "matroska", True, ())
    assert encode_settings("rawvideo", None, None, "yuv422p", None, tmp_path / "out.mkv").pix_fmt == "yuv422p"


def test_encode_settings_refuses_a_pix_fmt_or_container_that_cannot_be(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as pix_fmt:
        encode_settings("libsvtav1", None, None, "yuv422p", None, tmp_path / "out.mkv")
    assert str(pix_fmt.value) == "--pix-fmt yuv422p: libsvtav1 does not encode it"
    for suffix, muxer in ((".png", "image2"), (".webm", "webm")):
        out = tmp_path / f"out{suffix}"
        with pytest.raises(VideoError) as container:
            encode_settings("libx264", None, None, "yuv420p", None, out)
        assert str(container.value) == (f"{out}: FFmpeg's {muxer} container cannot hold libx264 video; "
                                        "use .mkv, .mp4, .mov or .webm")
    with pytest.raises(VideoError) as unknown:
        encode_settings("libx264", None, None, "yuv420p", None, tmp_path / "out.xyz")
    assert str(unknown.value) == f"{tmp_path / 'out.xyz'}: FFmpeg has no container for .xyz; use .mkv, .mp4, .mov or .webm"
    assert list(tmp_path.iterdir()) == []


def test_open_output_by_suffix_or_into_a_file_being_written(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as bare:
        open_output(tmp_path / "out")
    assert str(bare.value) == f"{tmp_path / 'out'}: FFmpeg has no container for a name without a suffix; use .mkv, .mp4, .mov or .webm"
    with open_output(tmp_path / "out.mp4") as container:
        assert container.format.name == "mp4"
    with (tmp_path / "part").open("wb") as target, open_output(tmp_path / "out", target, "matroska") as container:
        assert container.format.name == "matroska"
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        container.start_encoding()
    assert (tmp_path / "part").read_bytes()[:4] == b"\x1a\x45\xdf\xa3" and not (tmp_path / "out").exists()
    with (tmp_path / "part.mkv").open("wb") as target, open_output(tmp_path / "out.mp4", target) as container:
        assert container.format.name == "matroska", "the file being written names the format, not OUT"


# --- the streams OUT keeps -----------------------------------------------------------------------


def test_check_streams_keeps_what_each_container_holds_and_names_what_it_leaves_out(clips: Clips) -> None:
    found = probe(clips["cover.mp4"])
    path = found.path
    assert check_streams(found, "mp4") == ((1, 2, 3), [])
    assert check_streams(found, "matroska") == ((1, 3), [
        f"{path}: subtitle stream #2 (mov_text) is not copied: matroska cannot hold mov_text subtitle streams"])
    assert check_streams(found, "mov") == ((1, 2), [f"{path}: cover art stream #3 (png) is not copied: mov has no cover art"])
    assert check_streams(found, "webm") == ((), [
        f"{path}: audio stream #1 (aac) is not copied: webm cannot hold aac audio streams",
        f"{path}: subtitle stream #2 (mov_text) is not copied: webm cannot hold mov_text subtitle streams",
        f"{path}: cover art stream #3 (png) is not copied: webm has no cover art"])


def test_attachments_only_in_matroska_data_streams_never(clips: Clips) -> None:
    font = probe(clips["font.mkv"])
    assert check_streams(font, "matroska") == ((1,), [])
    for container in ("mp4", "webm"):
        assert check_streams(font, container) == ((), [
            f"{font.path}: attachment stream #1 (font.ttf) is not copied: only .mkv holds attachments"])
    timecode = probe(clips["timecode.mov"])
    for container in ("mov", "matroska"):
        assert check_streams(timecode, container) == ((), [
            f"{timecode.path}: data stream #1 is not copied: data streams (timecodes and the like) are never copied"])


def test_cover_art_kept_only_in_the_codecs_each_container_keeps(clips: Clips) -> None:
    gif = probe(clips["gif-cover.mkv"])
    assert check_streams(gif, "matroska") == ((1,), [])
    assert check_streams(gif, "mp4") == ((), [
        f"{gif.path}: cover art stream #1 (gif) is not copied: mp4 keeps cover art only as png, mjpeg, bmp"])
    first = probe(clips["cover-first.mkv"])
    assert check_streams(first, "mp4") == ((0,), []) and check_streams(first, "matroska") == ((0,), [])
    pictures = probe(clips["pictures-first.mkv"])  # a video, not a cover: it goes where a png video goes
    assert check_streams(pictures, "avi") == ((0,), [])
    assert check_streams(pictures, "matroska") == ((), [  # FFmpeg's Matroska muxer takes no PNG video track
        f"{pictures.path}: video stream #0 (png) is not copied: matroska cannot hold png video streams"])
    assert video.COVER_ART == {"mp4": {"png": "image/png", "mjpeg": "image/jpeg", "bmp": "image/bmp"},
                               "matroska": {"png": "image/png", "mjpeg": "image/jpeg", "gif": "image/gif",
                                            "tiff": "image/tiff"}}


def test_a_stream_whose_codec_context_is_gone_is_named_by_its_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = SimpleNamespace(type="subtitle", codec_context=None)
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: (_ for _ in ()).throw(ValueError("no")))
    assert video._left_out(stream, False, "mp4") == "mp4 cannot hold subtitle streams"  # type: ignore[arg-type]


# --- the whole choice ----------------------------------------------------------------------------


def test_choose_encoding_for_a_plain_source(clips: Clips, tmp_path: Path) -> None:
    found = probe(clips["audio.mkv"])
    settings_mp4, warnings = choose_encoding(found, tmp_path / "out.mp4", 2, False, "auto", None, None, None)
    assert settings_mp4 == EncodeSettings("libx264", "yuv420p", {"crf": "18"}, "mp4", True, (1,)) and warnings == []
    chosen, warnings = choose_encoding(found, tmp_path / "out.mkv", 3, False, "libx265", 22, "fast", "yuv444p")
    assert chosen == EncodeSettings("libx265", "yuv444p", {"crf": "22", "preset": "fast", "x265-params": "log-level=error"},
                                    "matroska", True, (1,))
    assert warnings == []
    assert list(tmp_path.iterdir()) == []


def test_choose_encoding_tries_nvenc_only_with_cuda(clips: Clips, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tried: list[str] = []
    monkeypatch.setattr(video, "_encoder_opens", lambda codec: bool(tried.append(codec)))
    found = probe(clips["plain.mkv"])
    assert choose_encoding(found, tmp_path / "out.mkv", 2, False, "auto", None, None, None)[0].codec == "libx264"
    assert tried == []
    assert choose_encoding(found, tmp_path / "out.mkv", 2, True, "auto", None, None, None)[0].codec == "libx264"
    assert tried == ["h264_nvenc"]


def test_choose_encoding_opens_the_encoder_at_the_upscaled_size(clips: Clips, tmp_path: Path) -> None:
    """50x34 x 2 is even; the encoder opened at any other size (25x17) would fail."""
    found = replace(probe(clips["plain.mkv"]), width=50, height=34)
    chosen, _ = choose_encoding(found, tmp_path / "out.mkv", 2, False, "libx264", None, "ultrafast", None)
    assert chosen.codec == "libx264"


def test_choose_encoding_passes_hdr_data_and_depth_on(clips: Clips, tmp_path: Path) -> None:
    found = probe(clips["hdr.mkv"])
    chosen, warnings = choose_encoding(found, tmp_path / "out.mkv", 1, False, "auto", None, "ultrafast", None)
    assert (chosen.codec, chosen.pix_fmt, chosen.kept, warnings) == ("libx265", "yuv420p10le", (), [])
    assert chosen.options["x265-params"] == f"log-level=error:master-display={MASTERING}:max-cll=1000,400"


def test_choose_encoding_warns_of_interlacing_and_streams_left_out(clips: Clips, tmp_path: Path) -> None:
    woven = probe(clips["woven.mkv"])
    _, warnings = choose_encoding(woven, tmp_path / "out.mkv", 2, False, "auto", None, None, None)
    assert warnings == [(f"{woven.path}: the video is interlaced; its two fields are upscaled woven into one picture, "
                        "so moving edges comb; deinterlace it first for clean motion (ffmpeg -i IN -vf bwdif -c:a copy OUT)")]
    covered = probe(clips["cover.mp4"])
    chosen, warnings = choose_encoding(covered, tmp_path / "out.mov", 2, False, "auto", None, None, None)
    assert chosen.kept == (1, 2)
    assert warnings == [f"{covered.path}: cover art stream #3 (png) is not copied: mov has no cover art"]


def test_choose_encoding_refuses_before_any_work(clips: Clips, tmp_path: Path) -> None:
    odd = probe(clips["odd.mkv"])
    with pytest.raises(VideoError) as size:
        choose_encoding(odd, tmp_path / "out.mkv", 3, False, "libx264", None, None, None)
    assert str(size.value).startswith("the upscaled size 141x99 (47x33 x 3) is odd in width and height, and libx264")
    chosen, _ = choose_encoding(odd, tmp_path / "out.mkv", 3, False, "libx264", None, None, "yuv444p")
    assert chosen.pix_fmt == "yuv444p"
    with pytest.raises(VideoError) as preset:
        choose_encoding(probe(clips["plain.mkv"]), tmp_path / "out.mkv", 2, False, "auto", None, "nope", None)
    assert str(preset.value).startswith("libx264 does not start with these settings (Invalid argument)")
    chosen, _ = choose_encoding(probe(clips["plain.mkv"]), tmp_path / "out.mkv", 2, False, "libsvtav1", None, "12", None)
    assert (chosen.codec, chosen.pix_fmt) == ("libsvtav1", "yuv420p")
    assert list(tmp_path.iterdir()) == []
