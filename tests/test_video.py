"""`upscale video` on tiny real clips made by FFmpeg: streams copied, timing, colour, rotation, depth, resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.io.colour import (
    MATRIX_BT709,
    RANGE_LIMITED,
    ColourTags,
    SwscaleConverter,
    TorchConverter,
    YuvLayout,
    frame_from_planes,
    frame_planes,
    yuv_layout,
)
from upscaler.io.video import HdrMetadata

from .conftest import EXAMPLES

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
VFR_PTS = "if(lt(N,6),N/12,0.5+(N-6)/24)"  # 12 fps for six frames, then 24 fps


def ffmpeg(*args: str | Path) -> None:
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", *map(str, args)], check=True)


def upscale(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "upscaler", *map(str, args)], capture_output=True, text=True, check=False)


def decoded(path: Path) -> tuple[list[np.ndarray], list[int | None]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="yuv444p") for f in frames], [f.pts for f in frames]


def packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.type == kind)
        return [bytes(p) for p in container.demux(stream) if p.size]


@pytest.fixture(scope="module")
def rich_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VFR BT.709 limited-range H.264 with AAC audio, an SRT subtitle, a font attachment and a 90-degree rotation."""
    folder = tmp_path_factory.mktemp("clips")
    (folder / "subs.srt").write_text("1\n00:00:00,100 --> 00:00:00,600\nhello\n")
    (folder / "font.ttf").write_bytes(b"not really a font")
    plain = folder / "plain.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=8000",
           "-i", folder / "subs.srt", "-frames:v", "12", "-t", "1", "-map", "0", "-map", "1", "-map", "2",
           "-vf", f"setpts='{VFR_PTS}/TB'", "-fps_mode", "vfr", "-c:v", "libx264", "-g", "3", "-pix_fmt", "yuv420p",
           "-color_range", "tv", "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
           "-c:a", "aac", "-c:s", "srt", "-metadata:s:a:0", "language=fra", "-attach", folder / "font.ttf", "-metadata:s:t", "mimetype=application/x-truetype-font",
           plain)
    clip = folder / "rich.mkv"
    ffmpeg("-display_rotation", "90", "-i", plain, "-map", "0", "-c", "copy", clip)
    return clip


def test_video_copies_streams_and_keeps_timing_colour_and_rotation(rich_clip: Path, tmp_path: Path, tiny_model: Path) -> None:
    out = tmp_path / "out.mkv"
    result = CliRunner().invoke(app, ["video", str(rich_clip), "-o", str(out), "--device", "cpu", "-m", str(tiny_model)])
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob(".upscale-*")), "the work folder is removed once OUT is complete"
    with av.open(str(rich_clip)) as src, av.open(str(out)) as dst:
        assert [s.type for s in dst.streams] == [s.type for s in src.streams]
        sv, dv = src.streams.video[0], dst.streams.video[0]
        assert (dv.width, dv.height) == (sv.width * 4, sv.height * 4)
        for tag in ("color_range", "color_primaries", "color_trc", "colorspace"):
            assert getattr(dv.codec_context, tag) == getattr(sv.codec_context, tag), tag
        assert dst.streams[3].metadata["filename"] == "font.ttf"
        assert dst.streams.audio[0].language == "fra"
        assert dst.duration is not None and src.duration is not None
        assert abs(dst.duration - src.duration) <= av.time_base // 12
        assert next(dst.decode(video=0)).rotation == 90
    for kind in ("audio", "subtitle"):
        assert packets(out, kind) == packets(rich_clip, kind)
    frames_in, pts_in = decoded(rich_clip)
    frames_out, pts_out = decoded(out)
    assert len(frames_out) == len(frames_in) == 12
    assert pts_out == pts_in  # variable frame rate kept frame for frame
    steps = np.diff(np.array(pts_in, dtype=np.int64))
    assert steps.min() < steps.max()


def test_ten_bit_stays_ten_bit_with_its_hdr_mastering_data(tmp_path: Path, tiny_model: Path) -> None:
    clip = tmp_path / "hdr.mkv"
    mastering = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12", "-frames:v", "6", "-c:v", "libx265", "-pix_fmt", "yuv420p10le",
           "-x265-params", f"log-level=error:master-display={mastering}:max-cll=1000,400",
           "-vf", "setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc:range=tv", clip)
    out = tmp_path / "out.mkv"
    result = CliRunner().invoke(app, ["video", str(clip), "-o", str(out), "--device", "cpu", "-m", str(tiny_model)])
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as dst:
        stream = dst.streams.video[0]
        assert stream.codec_context.name == "hevc" and stream.codec_context.pix_fmt == "yuv420p10le"
        context = stream.codec_context
        assert (context.color_primaries, context.color_trc, context.colorspace) == (9, 16, 9)
        frame = next(dst.decode(stream))
    from upscaler.io.video import _hdr_from_frame, _side_data

    assert _hdr_from_frame(_side_data(frame)) == HdrMetadata((34000, 16000, 13250, 34500, 7500, 3000, 15635, 16450),
                                                 (10000000, 1), 1000, 400)
    assert len(decoded(out)[0]) == 6


def test_bt709_limited_range_upscales_without_colour_shift(tmp_path: Path) -> None:
    """A flat colour through the built-in model and back must come out as the same Y'CbCr codes."""
    clip = tmp_path / "flat.mkv"
    ffmpeg("-f", "lavfi", "-i", "color=c=0x3366CC:size=64x48:rate=12", "-frames:v", "2", "-vf",
           "scale=out_color_matrix=bt709:out_range=tv", "-c:v", "ffv1", "-pix_fmt", "yuv444p", "-color_range", "tv",
           "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", clip)
    out = tmp_path / "out.mkv"
    result = CliRunner().invoke(app, ["video", str(clip), "-o", str(out), "--device", "cpu", "--codec", "ffv1"])
    assert result.exit_code == 0, result.output
    source, upscaled = decoded(clip)[0][0], decoded(out)[0][0]
    centre = upscaled[:, 32:-32, 32:-32].reshape(3, -1).mean(axis=1)
    assert np.abs(centre - source.reshape(3, -1).mean(axis=1)).max() < 1.5, (centre, source[:, 0, 0])


def test_converters_use_the_bt709_limited_range_formula() -> None:
    layout = yuv_layout("yuv444p")
    assert layout is not None
    tags = ColourTags(RANGE_LIMITED, MATRIX_BT709)
    planes = [np.full((2, 4), 100, np.uint8), np.full((2, 4), 128, np.uint8), np.full((2, 4), 200, np.uint8)]
    frame = frame_from_planes(planes, layout)
    luma, cr = (100 - 16) / 219, (200 - 128) / 224
    red, blue = luma + 2 * (1 - 0.2126) * cr, luma
    green = (luma - 0.2126 * red - 0.0722 * blue) / 0.7152
    expected = np.round(np.array([red, green, blue]) * 255)
    swscale = SwscaleConverter(tags, 2, "rgb24", tags, 2, "yuv444p")
    on_device = TorchConverter(torch.device("cpu"), tags, layout, 2, tags, layout, 2)
    for converter in (swscale, on_device):
        rgb = converter.to_rgb(frame)
        assert np.abs(rgb[0, 0].astype(int) - expected).max() <= 1, (type(converter).__name__, rgb[0, 0], expected)
        back = frame_planes(converter.from_rgb(rgb), layout)
        assert all(np.abs(b.astype(int) - p).max() <= 1 for b, p in zip(back, planes, strict=True))


def ramp(width: int, height: int) -> np.ndarray:
    """A smooth 16-bit RGB ramp over the whole range: chroma subsampling loses little of it."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 63000 // width, yy * 61000 // height, (xx + yy) * 55000 // (width + height)], -1).astype(np.uint16)


def bt709_limited(pix_fmt: str) -> tuple[YuvLayout, ColourTags]:
    layout = yuv_layout(pix_fmt)
    assert layout is not None
    return layout, ColourTags(RANGE_LIMITED, MATRIX_BT709)


def test_both_conversions_round_trip_10_bit_422_and_agree() -> None:
    layout, tags = bt709_limited("yuv422p10le")
    rgb = ramp(64, 48)
    swscale = SwscaleConverter(tags, 48, "rgb48le", tags, 48, "yuv422p10le")
    on_device = TorchConverter(torch.device("cpu"), tags, layout, 48, tags, layout, 48)
    frame = on_device.from_rgb(rgb)
    for converter in (swscale, on_device):
        again = converter.planes_from_rgb(converter.to_rgb(frame))
        for a, b in zip(frame_planes(frame, layout), again, strict=True):
            assert np.abs(a.astype(int) - b).mean() < 0.5  # codes out of 1023
    # FFmpeg's scaler puts 16-bit RGB white at 65280 where the formula has 65535: within half a percent.
    difference = np.abs(swscale.to_rgb(frame).astype(int) - on_device.to_rgb(frame)) / 65535
    assert difference.mean() < 0.005


def test_unreadable_video_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.mkv"
    bad.write_text("not a video")
    result = CliRunner().invoke(app, ["video", str(bad), "-o", str(tmp_path / "out.mkv"), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.count("error:") == 1 and str(bad) in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.mkv").exists()


def test_an_image_suffix_for_the_output_is_a_usage_error_before_any_work(rich_clip: Path, tmp_path: Path,
                                                                        tiny_model: Path) -> None:
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, ["video", str(rich_clip), "-o", str(out), "--device", "cpu", "-m", str(tiny_model),
                                      "--codec", "libx264"])
    assert result.exit_code == 2, result.output
    assert f"error: {out}: FFmpeg's image2 container cannot hold libx264 video; use .mkv, .mp4, .mov or .webm" in result.output
    assert not out.exists() and "frames written" not in result.output  # refused before any frame


def _frames_decoded(stderr: str) -> int:
    match = re.search(r"frames decoded this run\s*│\s*(\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


def test_sigkill_mid_video_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path: Path, tiny_model: Path) -> None:
    clip = tmp_path / "long.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12", "-frames:v", "24", "-c:v", "libx264", "-g", "3",
           "-pix_fmt", "yuv420p", clip)
    out = tmp_path / "out.mkv"
    command: list[str | Path] = ["video", clip, "-o", out, "--device", "cpu", "-m", tiny_model, "--segment-seconds", "0.2"]
    work = tmp_path / ".upscale-work-out.mkv"
    process = subprocess.Popen([sys.executable, "-m", "upscaler", *map(str, command)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(work.glob("segment-*.packets"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # A kill between a segment's rename and the manifest's update leaves a file the manifest does
    # not list: the resumed run encodes that segment again, so only listed segments count as done.
    listed = json.loads((work / "manifest.json").read_text())["segments"]
    done_before = sum(1 for i, s in enumerate(listed) if s is not None and (work / f"segment-{i:05d}.packets").is_file())
    assert 2 <= done_before < 8 and not out.exists()

    resumed = upscale(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {done_before} segment(s)" in resumed.stderr
    # Fewer frames decoded than a whole run: from the container's seek point before the first missing segment.
    assert _frames_decoded(resumed.stderr) < 24
    assert not work.exists()

    whole = tmp_path / "whole.mkv"
    fresh = CliRunner().invoke(app, [str(c) for c in command[:2]] + ["-o", str(whole)] + [str(c) for c in command[4:]])
    assert fresh.exit_code == 0, fresh.output
    assert _frames_decoded(fresh.output) == 24
    (a, pts_a), (b, pts_b) = decoded(out), decoded(whole)
    assert pts_a == pts_b and len(a) == 24
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_ctrl_c_keeps_complete_segments_and_no_output(tmp_path: Path, tiny_model: Path) -> None:
    clip = tmp_path / "clip.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=12", "-frames:v", "36", "-c:v", "libx264", "-g", "3", clip)
    out, work = tmp_path / "out.mkv", tmp_path / ".upscale-work-out.mkv"
    process = subprocess.Popen([sys.executable, "-m", "upscaler", "video", str(clip), "-o", str(out), "--device", "cpu",
                                "-m", str(tiny_model), "--segment-seconds", "0.2"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(work.glob("segment-*.packets")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "error: interrupted" in stderr and "resume" in stderr and "Traceback" not in stderr
    assert not out.exists() and list(work.glob("segment-*.packets"))
    assert not list(work.glob(".upscale-*")), "the segment in progress is dropped, not left half-written"


def test_work_folder_reuses_only_the_same_jobs_complete_segments(tmp_path: Path) -> None:
    from upscaler.jobs.video import Segment, WorkFolder

    out = tmp_path / "out.mkv"
    first = WorkFolder(out, {"model": "a"})
    assert not first.load()
    for index in range(2):
        first.segment_path(index).write_bytes(b"packets")
        first.add(index, Segment(first_pts=3 * index, frames=3, next_pts=3 * index + 3), b"headers")
    first.segment_path(1).unlink()  # listed, but its file is gone
    again = WorkFolder(out, {"model": "a"})
    assert again.load() and again.frames == 3 and again.extradata == b"headers"
    other = WorkFolder(out, {"model": "b"})
    assert not other.load() and not other.segment_path(0).exists()


def test_output_suffix_ffmpeg_cannot_write_is_a_usage_error(rich_clip: Path, tmp_path: Path, tiny_model: Path) -> None:
    result = CliRunner().invoke(app, ["video", str(rich_clip), "-o", str(tmp_path / "out.xyz"), "--device", "cpu",
                                      "-m", str(tiny_model)])
    assert result.exit_code == 2 and "out.xyz" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_conversion_on_the_gpu_matches_the_cpu() -> None:
    layout, tags = bt709_limited("yuv420p10le")
    rgb = ramp(960, 540)
    cpu = TorchConverter(torch.device("cpu"), tags, layout, 540, tags, layout, 540)
    gpu = TorchConverter(torch.device("cuda"), tags, layout, 540, tags, layout, 540)
    for a, b in zip(cpu.planes_from_rgb(rgb), gpu.planes_from_rgb(rgb), strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1
    frame = cpu.from_rgb(rgb)
    assert np.abs(cpu.to_rgb(frame).astype(int) - gpu.to_rgb(frame)).max() <= 257


def test_a_still_image_given_to_video_is_one_error_line(tmp_path: Path, tiny_model: Path) -> None:
    """In a process of its own, as every crash below would take the test run with it: PyAV used to crash on it."""
    result = upscale("video", EXAMPLES / "chelsea.png", "-o", tmp_path / "out.mkv", "--device", "cpu", "-m", tiny_model)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("error:") == 1 and "a still image, not a video; `upscale image` upscales it" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.mkv").exists()


def test_png_frames_with_an_icc_profile_in_a_video_upscale(tmp_path: Path, tiny_model: Path) -> None:
    """PNG's decoder hands its ICC profile over as frame side data, which PyAV 18 crashes freeing once it was read."""
    clip = tmp_path / "png.mkv"
    ffmpeg("-loop", "1", "-i", EXAMPLES / "chelsea.png", "-frames:v", "3", "-c:v", "png", clip)
    with av.open(str(clip)) as container:
        assert container.streams.video[0].codec_context.name == "png"
    result = upscale("video", clip, "-o", tmp_path / "out.mkv", "--device", "cpu", "-m", tiny_model)
    assert result.returncode == 0, result.stderr
    assert len(decoded(tmp_path / "out.mkv")[0]) == 3
