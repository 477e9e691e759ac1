"""`upscale video` on RGB sources (PNG, FFV1, Ut Video, QuickTime Animation, x264 RGB) and to RGB outputs.

An RGB source is encoded as Y'CbCr in a real Y'CbCr matrix, tagged with exactly the matrix and range
its frames were converted to; the source's RGB tag on a Y'CbCr stream makes decoders read Y, Cb, Cr as
G, B, R. The colours are checked as FFmpeg's own decoder shows them, through a model that only repeats
pixels (a nearest-neighbour x2), so every difference is the conversion's or the encoder's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from upscaler.cli import app
from upscaler.io.colour import (
    MATRIX_BT709,
    MATRIX_RGB,
    MATRIX_SMPTE170M,
    MATRIX_UNSPECIFIED,
    RANGE_FULL,
    RANGE_LIMITED,
    ColourTags,
    encoded_tags,
    guess_matrix,
    yuv_layout,
)
from upscaler.models import get_architecture
from upscaler.models.weights import ModelCard, save_model

from .test_video import FFMPEG, ffmpeg

# (encoder, its RGB pixel format, container): every family of RGB frames a video source can hold.
RGB_SOURCES = [
    ("png", "rgb24", "mkv"),
    ("ffv1", "bgr0", "mkv"),
    ("ffv1", "gbrp10le", "mkv"),
    ("utvideo", "gbrp", "mkv"),
    ("qtrle", "rgb24", "mov"),  # its frames carry no tags at all
    ("libx264rgb", "rgb24", "mkv"),
]


@pytest.fixture(scope="module")
def nearest_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A x2 compact net whose residual is zero: exactly the nearest-neighbour upscale of its input."""
    params = {"scale": 2, "channels": 8, "blocks": 1}
    module = get_architecture("compact").build(**params)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.startswith("to_subpixels."):
                parameter.zero_()
    path = tmp_path_factory.mktemp("models") / "nearest.safetensors"
    save_model(module, ModelCard(arch="compact", arch_params=params, scale=2, name="nearest"), path)
    return path


def need_encoder(codec: str) -> None:
    probe = subprocess.run([FFMPEG, "-hide_banner", "-h", f"encoder={codec}"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or "is not recognized" in probe.stdout + probe.stderr:
        pytest.skip(f"this FFmpeg has no {codec} encoder")


def clip(path: Path, source: str, codec: str, pix_fmt: str, *extra: str) -> Path:
    need_encoder(codec)
    ffmpeg("-f", "lavfi", "-i", source, "-c:v", codec, "-pix_fmt", pix_fmt, *extra, path)
    return path


def upscale_video(src: Path, out: Path, model: Path, *extra: str) -> None:
    result = CliRunner().invoke(app, ["video", str(src), "-o", str(out), "--device", "cpu", "--precision", "fp32",
                                      "-m", str(model), *extra])
    assert result.exit_code == 0, result.output


def as_ffmpeg_shows(path: Path) -> np.ndarray:
    """Every frame as 8-bit RGB (frames, height, width, 3), converted by FFmpeg's CLI as the stream's tags say."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
    raw = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3).astype(np.float64)


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


def assert_same_colours(src: Path, out: Path) -> None:
    """Each x2 block of OUT against its source pixel: whole-clip means and 8x8-pixel patches."""
    source, upscaled = as_ffmpeg_shows(src), as_ffmpeg_shows(out)
    frames, height, width, _ = source.shape
    assert upscaled.shape == (frames, 2 * height, 2 * width, 3)
    back = upscaled.reshape(frames, height, 2, width, 2, 3).mean(axis=(2, 4))
    means = np.abs(back.mean(axis=(0, 1, 2)) - source.mean(axis=(0, 1, 2)))
    assert means.max() < 2.0, (back.mean(axis=(0, 1, 2)), source.mean(axis=(0, 1, 2)))

    def patches(a: np.ndarray) -> np.ndarray:
        return a.reshape(frames, height // 8, 8, width // 8, 8, 3).mean(axis=(2, 4))

    assert np.abs(patches(back) - patches(source)).mean() < 1.5


@pytest.mark.parametrize(("codec", "pix_fmt", "suffix"), RGB_SOURCES, ids=[f"{c}-{p}" for c, p, _ in RGB_SOURCES])
def test_rgb_source_becomes_tagged_ycbcr_in_its_colours(codec: str, pix_fmt: str, suffix: str, tmp_path: Path,
                                                        nearest_model: Path) -> None:
    extra = ["-qp", "0"] if codec == "libx264rgb" else []
    src = clip(tmp_path / f"src.{suffix}", "testsrc2=size=48x32:rate=12", codec, pix_fmt, "-frames:v", "6", *extra)
    out = tmp_path / "out.mkv"
    upscale_video(src, out, nearest_model)
    frame = first_frame(out)
    assert yuv_layout(frame.format.name) is not None, frame.format.name
    assert frame.format.name == ("yuv444p10le" if pix_fmt == "gbrp10le" else "yuv444p")  # 10-bit stays 10-bit
    assert (frame.colorspace, frame.color_range) == (MATRIX_SMPTE170M, RANGE_LIMITED)  # SD: BT.601, as players guess
    assert_same_colours(src, out)


def test_rgb_source_going_hd_is_bt709_in_its_colours(tmp_path: Path, nearest_model: Path) -> None:
    """A saturated flat colour: BT.601 codes read as BT.709 (or the other way) would be levels off."""
    src = clip(tmp_path / "flat.mkv", "color=c=0xCC3366:size=16x360:rate=12", "png", "rgb24", "-frames:v", "2")
    out = tmp_path / "out.mkv"
    upscale_video(src, out, nearest_model)
    frame = first_frame(out)
    assert (frame.height, frame.colorspace, frame.color_range) == (720, MATRIX_BT709, RANGE_LIMITED)
    assert_same_colours(src, out)


def test_untagged_ycbcr_going_hd_is_tagged_with_the_matrix_it_was_converted_to(tmp_path: Path,
                                                                               nearest_model: Path) -> None:
    """Untagged, 360 lines read as BT.601 and 720 as BT.709: the output says which one its codes are in."""
    src = clip(tmp_path / "untagged.mkv", "color=c=0xCC3366:size=16x360:rate=12", "ffv1", "yuv444p", "-frames:v", "2")
    assert first_frame(src).colorspace == MATRIX_UNSPECIFIED
    out = tmp_path / "out.mkv"
    upscale_video(src, out, nearest_model, "--codec", "ffv1")
    frame = first_frame(out)
    assert (frame.height, frame.colorspace) == (720, MATRIX_BT709)
    assert_same_colours(src, out)


def test_ycbcr_source_to_an_rgb_output_is_tagged_rgb(tmp_path: Path, nearest_model: Path) -> None:
    src = clip(tmp_path / "yuv.mkv", "testsrc2=size=48x32:rate=12", "ffv1", "yuv444p", "-frames:v", "3",
               "-colorspace", "bt709", "-color_range", "tv")
    out = tmp_path / "out.mkv"
    upscale_video(src, out, nearest_model, "--codec", "ffv1", "--pix-fmt", "gbrp10le")
    frame = first_frame(out)
    assert (frame.format.name, frame.colorspace, frame.color_range) == ("gbrp10le", MATRIX_RGB, RANGE_FULL)
    assert_same_colours(src, out)


def test_encoded_tags_name_the_conversion() -> None:
    rgb = ColourTags(RANGE_FULL, MATRIX_RGB, primaries=1, transfer=13)
    assert encoded_tags(rgb, "gbrp", "yuv420p", 480) == ColourTags(RANGE_LIMITED, MATRIX_SMPTE170M, 1, 13)
    assert encoded_tags(ColourTags(), "rgb24", "yuv444p", 2160) == ColourTags(RANGE_LIMITED, MATRIX_BT709)
    assert encoded_tags(ColourTags(), "yuv420p", "yuv420p", 1080).matrix == guess_matrix(1080) == MATRIX_BT709
    tagged = ColourTags(RANGE_FULL, MATRIX_SMPTE170M)
    assert encoded_tags(tagged, "yuv420p", "yuv420p10le", 2160) == tagged  # a source's own Y'CbCr tags stay
    assert encoded_tags(tagged, "yuv420p", "gbrp", 2160) == ColourTags(RANGE_FULL, MATRIX_RGB)
