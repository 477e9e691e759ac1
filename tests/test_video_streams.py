"""`upscale video`: timestamps the muxer would refuse are repaired, and OUT keeps exactly the streams its container holds.

Tiny real clips made by FFmpeg (and PyAV where FFmpeg would repair what the test needs broken).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.io.video import encoder_available

from .test_video import ffmpeg

VIDEO = ["-f", "lavfi", "-i", "testsrc2=size=48x32:rate=12"]
AUDIO = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000"]
REPEATED = ["-vf", "setpts=trunc(N/2)/(25*TB)", "-fps_mode", "passthrough", "-enc_time_base", "1/25"]  # pts 0 0 1 1 2 2...
H264 = ["-c:v", "libx264", "-g", "4", "-pix_fmt", "yuv420p"]


def run(src: Path, out: Path, model: Path, *extra: str) -> tuple[int, str]:
    """Exit code and the output with rich's line wrapping undone."""
    result = CliRunner().invoke(app, ["video", str(src), "-o", str(out), "--device", "cpu", "-m", str(model), *extra])
    return result.exit_code, " ".join(result.output.split())


def streams(path: Path) -> list[tuple[str, str | None, bool]]:
    """(kind, codec or attachment name, is cover art) for each stream."""
    with av.open(str(path)) as container:
        return [(s.type, s.codec_context.name if s.codec_context else s.metadata.get("filename"),
                 bool(s.disposition & av.stream.Disposition.attached_pic)) for s in container.streams]


def video_timestamps(path: Path) -> tuple[list[int | None], list[int | None], list[int | None]]:
    """The first video stream's frame pts (display order), packet dts (decode order) and packet durations."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sent = [p for p in container.demux(stream) if p.size]
        dts, durations = [p.dts for p in sent], [p.duration for p in sent]
    with av.open(str(path)) as container:
        pts = [f.pts for f in container.decode(video=0)]
    return pts, dts, durations


def strictly_increasing(values: list[int | None]) -> bool:
    return bool(np.all(np.diff(np.array(values, dtype=np.int64)) > 0))


def picture(path: Path, index: int | None = None) -> bytes:
    """The picture of stream `index`, or of the cover (attached picture)."""
    with av.open(str(path)) as container:
        stream = container.streams[index] if index is not None else next(
            s for s in container.streams.video if s.disposition & av.stream.Disposition.attached_pic)
        return next(bytes(p) for p in container.demux(stream) if p.size)


def upscaled_frames(path: Path) -> list[tuple[int, int]]:
    """The size of each frame of the H.264 stream."""
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams.video if s.codec_context.name == "h264")
        return [(f.width, f.height) for f in container.decode(stream)]


def assert_clean(code: int, output: str, out: Path, warnings: int) -> None:
    assert code == 0, output
    assert output.count("warning:") == warnings and "error:" not in output, output
    assert out.is_file() and not list(out.parent.glob(".upscale-*")), "OUT complete, the work folder removed"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    (folder / "subs.srt").write_text("1\n00:00:00,100 --> 00:00:00,300\nhello\n")
    (folder / "font.ttf").write_bytes(b"not really a font")
    ffmpeg(*VIDEO, "-frames:v", "1", folder / "cover.png")
    return folder


@pytest.fixture(scope="module")
def mp4_with_cover(folder: Path) -> Path:
    """H.264, AAC, a mov_text subtitle, and a PNG cover (attached picture)."""
    plain = folder / "plain.mp4"
    ffmpeg(*VIDEO, *AUDIO, "-i", folder / "subs.srt", "-map", "0", "-map", "1", "-map", "2", "-frames:v", "4", "-t", "0.4",
           *H264, "-c:a", "aac", "-c:s", "mov_text", plain)
    clip = folder / "cover.mp4"
    ffmpeg("-i", plain, "-i", folder / "cover.png", "-map", "0", "-map", "1", "-c", "copy", "-disposition:v:1", "attached_pic", clip)
    return clip


@pytest.fixture(scope="module")
def mkv_with_cover(folder: Path) -> Path:
    """H.264 and a PNG cover as Matroska keeps one: an attachment its demuxer shows as an attached picture."""
    clip = folder / "cover.mkv"
    ffmpeg(*VIDEO, "-frames:v", "4", *H264, "-attach", folder / "cover.png", "-metadata:s:t", "mimetype=image/png", clip)
    return clip


# --- timestamps -----------------------------------------------------------------------------------


def test_repeated_timestamps_are_made_strictly_increasing_and_the_mp4_is_written(tmp_path: Path, tiny_model: Path) -> None:
    """Every other frame repeats the one before's pts: the encoder gets previous + 1, each frame keeps its duration."""
    clip, out = tmp_path / "repeated.mkv", tmp_path / "out.mp4"
    ffmpeg(*VIDEO, "-frames:v", "8", *REPEATED, *H264, clip)
    pts_in, _, durations_in = video_timestamps(clip)
    assert pts_in[0] == pts_in[1], "the clip repeats timestamps"
    code, output = run(clip, out, tiny_model)
    assert_clean(code, output, out, warnings=0)
    pts, dts, _ = video_timestamps(out)
    assert len(pts) == 8 and strictly_increasing(pts) and strictly_increasing(dts)

    kept = tmp_path / "out.mkv"  # Matroska stores each frame's duration: the source's, unchanged
    assert_clean(*run(clip, kept, tiny_model), kept, warnings=0)
    pts, _, durations = video_timestamps(kept)
    assert strictly_increasing(pts) and pts[:2] == [0, 1] and Counter(durations) == Counter(durations_in)


def test_repeated_timestamps_across_segment_joins_strictly_increase(tmp_path: Path, tiny_model: Path) -> None:
    """A 1/25 time base holds no room for the repairs: a segment is moved past the one before, its dts with it."""
    clip = tmp_path / "coarse.mp4"
    ffmpeg(*VIDEO, "-frames:v", "12", *REPEATED, *H264, "-video_track_timescale", "25", clip)
    for suffix in (".mp4", ".mkv"):
        out = tmp_path / f"out{suffix}"
        code, output = run(clip, out, tiny_model, "--segment-seconds", "0.05")
        assert_clean(code, output, out, warnings=0)
        assert "3 of 3" in output, "three segments, two joins"
        pts, dts, _ = video_timestamps(out)
        assert len(pts) == 12 and strictly_increasing(pts), (suffix, pts)
        assert suffix == ".mkv" or strictly_increasing(dts), (suffix, dts)  # Matroska stores no dts


def test_frames_repeating_a_keyframes_timestamp_before_it_survive_a_resume(tmp_path: Path, tiny_model: Path) -> None:
    """Three frames share the second keyframe's pts but come before it: a resume seeks to the keyframe,
    so they belong to the segment before in every run (they were lost from a resumed file)."""
    from upscaler.engine.engine import open_engine
    from upscaler.engine.settings import RunSettings
    from upscaler.io.video import choose_encoding, probe
    from upscaler.jobs.video import encode_segments, job_key, mux, open_work, plan_segments

    clip = tmp_path / "shared.mkv"
    ffmpeg(*VIDEO, "-frames:v", "12", "-vf", "setpts=trunc((N+1)/2)/(25*TB)", "-fps_mode", "passthrough",
           "-enc_time_base", "1/25", "-c:v", "libx264", "-g", "4", "-bf", "0", "-pix_fmt", "yuv420p", clip)
    with av.open(str(clip)) as container:
        sent = [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]
    assert sent[5:9] == [(sent[8][0], False)] * 3 + [(sent[8][0], True)], sent
    engine = open_engine(RunSettings(model=str(tiny_model), device="cpu"))
    source = probe(clip)
    files = []
    for done_before in (0, 1):  # straight, and resumed after the first segment
        out = tmp_path / f"out{done_before}.mkv"
        settings, _ = choose_encoding(source, out, engine.scale, False, "libx264", None, None, None)
        plan = plan_segments(source, 0.05)
        assert [planned.next_pts for planned in plan] == [sent[8][0], None]
        work = open_work(out, job_key(source, settings, engine.identity((source.height, source.width)), 0.05), resume=False)
        encode_segments(source, work, plan[:done_before], settings, engine, lambda: None)
        encode_segments(source, work, plan, settings, engine, lambda: None)
        assert [work.segments[i].frames for i in (0, 1)] == [8, 4]
        mux(source, work, settings, engine.scale, out)
        work.remove()
        with av.open(str(out)) as container:
            files.append([(f.pts, f.to_ndarray(format="yuv444p").tobytes()) for f in container.decode(video=0)])
    assert len(files[0]) == 12 and files[1] == files[0]


def test_a_copied_stream_with_a_repeated_timestamp_goes_into_mp4(tmp_path: Path, tiny_model: Path) -> None:
    """Matroska stores two audio packets at one time as they are; MP4 wants the second bumped, as ffmpeg does."""
    plain, clip, out = tmp_path / "plain.mkv", tmp_path / "repeat.mkv", tmp_path / "out.mp4"
    ffmpeg(*VIDEO, *AUDIO, "-frames:v", "4", "-t", "0.4", *H264, "-c:a", "aac", plain)
    with av.open(str(plain)) as src, av.open(str(clip), "w") as dst:
        video, audio = (dst.add_stream_from_template(s) for s in (src.streams.video[0], src.streams.audio[0]))
        dst.start_encoding()
        stamps: list[int | None] = []
        for packet in src.demux():
            if not packet.size:
                continue
            if packet.stream.type == "audio":
                if len(stamps) == 1:
                    packet.pts = packet.dts = stamps[0]  # the second audio packet at the first one's time
                stamps.append(packet.pts)
            packet.stream = audio if packet.stream.type == "audio" else video
            dst.mux(packet)
    with av.open(str(clip)) as container:
        stamps = [p.dts for p in container.demux(audio=0) if p.size]
    assert stamps[0] == stamps[1] and len(stamps) >= 3
    code, output = run(clip, out, tiny_model)
    assert_clean(code, output, out, warnings=0)
    with av.open(str(out)) as container:
        assert strictly_increasing([p.dts for p in container.demux(audio=0) if p.size])


# --- which streams OUT keeps ----------------------------------------------------------------------


def test_an_attachment_mp4_cannot_hold_is_left_out_with_one_warning(folder: Path, tmp_path: Path, tiny_model: Path) -> None:
    """It used to fail the final mux after the whole encode, leaving the work folder behind."""
    clip, out = tmp_path / "font.mkv", tmp_path / "out.mp4"
    ffmpeg(*VIDEO, *AUDIO, "-frames:v", "4", "-t", "0.4", *H264, "-c:a", "aac", "-attach", folder / "font.ttf",
           "-metadata:s:t", "mimetype=application/x-truetype-font", clip)
    code, output = run(clip, out, tiny_model)
    assert_clean(code, output, out, warnings=1)
    assert f"warning: {clip}: attachment stream #2 (font.ttf) is not copied: only .mkv holds attachments" in output
    assert streams(out) == [("video", "h264", False), ("audio", "aac", False)]


def test_subtitles_mp4_cannot_hold_are_left_out_and_mov_text_is_kept(folder: Path, mp4_with_cover: Path, tmp_path: Path,
                                                                      tiny_model: Path) -> None:
    clip, out = tmp_path / "srt.mkv", tmp_path / "out.mp4"
    ffmpeg(*VIDEO, "-i", folder / "subs.srt", "-map", "0", "-map", "1", "-frames:v", "4", *H264, "-c:s", "srt", clip)
    code, output = run(clip, out, tiny_model)
    assert_clean(code, output, out, warnings=1)
    assert f"warning: {clip}: subtitle stream #1 (srt) is not copied: mp4 cannot hold srt subtitle streams" in output
    assert [kind for kind, _, _ in streams(out)] == ["video"]

    again = tmp_path / "again.mp4"
    assert_clean(*run(mp4_with_cover, again, tiny_model), again, warnings=0)
    assert ("subtitle", "mov_text", False) in streams(again)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("source", ["mp4_with_cover", "mkv_with_cover"])
def test_cover_art_stays_cover_art(source: str, suffix: str, tmp_path: Path, tiny_model: Path,
                                   request: pytest.FixtureRequest) -> None:
    """MP4 keeps a cover as its `covr` atom, Matroska as an attachment: either way it reads back as an attached picture."""
    clip: Path = request.getfixturevalue(source)
    out = tmp_path / f"out{suffix}"
    code, output = run(clip, out, tiny_model)
    assert_clean(code, output, out, warnings=int(source == "mp4_with_cover" and suffix == ".mkv"))  # mov_text: not in mkv
    assert ("video", "png", True) in streams(out)
    assert picture(out) == picture(clip)
    assert upscaled_frames(out) == [(192, 128)] * 4


def test_cover_art_a_container_cannot_keep_is_one_warning(mp4_with_cover: Path, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "out.mov"
    code, output = run(mp4_with_cover, out, tiny_model)
    assert_clean(code, output, out, warnings=1)
    assert f"warning: {mp4_with_cover}: cover art stream #3 (png) is not copied: mov has no cover art" in output
    assert [kind for kind, _, _ in streams(out)] == ["video", "audio", "subtitle"]


def test_the_default_video_is_upscaled_not_a_cover_track_before_it(folder: Path, tmp_path: Path, tiny_model: Path) -> None:
    """Matroska cannot flag a track as a cover: a lone picture before the default-flagged video is the cover."""
    clip, out = tmp_path / "cover-first.mkv", tmp_path / "out.mkv"
    ffmpeg("-i", folder / "cover.png", *VIDEO, "-map", "0", "-map", "1", "-frames:v:1", "4", "-c:v:0", "png",
           "-c:v:1", "libx264", "-pix_fmt:v:1", "yuv420p", "-disposition:v:0", "attached_pic", "-disposition:v:1", "default",
           clip)
    assert streams(clip) == [("video", "png", False), ("video", "h264", False)], "Matroska lost the cover's flag"
    code, output = run(clip, out, tiny_model)
    assert_clean(code, output, out, warnings=0)
    assert sorted(streams(out)) == [("video", "h264", False), ("video", "png", True)]
    assert picture(out) == picture(clip, 0)
    assert upscaled_frames(out) == [(192, 128)] * 4


def test_webm_keeps_only_what_webm_holds(folder: Path, tmp_path: Path, tiny_model: Path) -> None:
    """VP8/VP9/AV1 video, Opus or Vorbis audio, WebVTT subtitles; no attachments (its muxer would drop them unsaid)."""
    if not encoder_available("libsvtav1"):
        pytest.skip("this FFmpeg build has no AV1 encoder")
    clip, out = tmp_path / "many.mkv", tmp_path / "out.webm"
    ffmpeg(*VIDEO, *AUDIO, "-i", folder / "subs.srt", "-i", folder / "subs.srt", "-map", "0", "-map", "1", "-map", "1",
           "-map", "2", "-map", "3", "-frames:v", "4", "-t", "0.4", *H264, "-c:a:0", "aac", "-c:a:1", "libopus",
           "-c:s:0", "srt", "-c:s:1", "webvtt", "-attach", folder / "font.ttf",
           "-metadata:s:t", "mimetype=application/x-truetype-font", clip)
    code, output = run(clip, out, tiny_model, "--codec", "libsvtav1")
    assert_clean(code, output, out, warnings=3)
    for left_out in ("audio stream #1 (aac) is not copied: webm cannot hold aac audio streams",
                     "subtitle stream #3 (srt) is not copied: webm cannot hold srt subtitle streams",
                     "attachment stream #5 (font.ttf) is not copied: only .mkv holds attachments"):
        assert f"warning: {clip}: {left_out}" in output
    assert [(kind, codec) for kind, codec, _ in streams(out)] == [("video", "libdav1d"), ("audio", "opus"),
                                                                  ("subtitle", "webvtt")]
