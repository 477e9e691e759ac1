"""`upscale pipe` as a real process between real pipes: y4m and raw frames, closed readers, cut streams, Ctrl-C."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from tests.test_video import ffmpeg
from upscaler.cli import app
from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io import y4m
from upscaler.io.colour import frame_planes

PIPE = [sys.executable, "-m", "upscaler", "pipe"]


def pipe(stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The command on CPU unless `args` name a device."""
    device = [] if "--device" in args else ["--device", "cpu"]
    return subprocess.run([*PIPE, *device, *args], input=stdin, capture_output=True, check=False)


def read_y4m(data: bytes) -> tuple[y4m.Y4MHeader, list[list[np.ndarray]]]:
    stream = io.BytesIO(data)
    header = y4m.read_header(stream)
    return header, [frame_planes(f, header.layout) for f in y4m.read_frames(stream, header)]


@pytest.fixture(scope="module")
def clip_y4m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pipe") / "clip.y4m"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "3", "-pix_fmt", "yuv420p",
           "-color_range", "tv", "-strict", "-1", path)
    return path


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(peak**2 / mse) if mse else float("inf")


def test_y4m_round_trip_matches_upscale_image_on_the_same_frames(clip_y4m: Path, tmp_path: Path, tiny_model: Path) -> None:
    result = pipe(clip_y4m.read_bytes(), "-m", str(tiny_model))
    assert result.returncode == 0, result.stderr.decode()
    header_in = y4m.read_header(io.BytesIO(clip_y4m.read_bytes()))
    header, frames = read_y4m(result.stdout)
    assert (header.width, header.height) == (256, 192) and len(frames) == 3
    assert (header.rate, header.chroma, header.extras) == (header_in.rate, header_in.chroma, header_in.extras)

    # The same frames as pictures: FFmpeg turns them to RGB (BT.601, as the pipe assumes below 720 lines).
    (tmp_path / "in").mkdir()
    ffmpeg("-i", clip_y4m, "-sws_flags", "bicubic+accurate_rnd+full_chroma_int+full_chroma_inp", "-pix_fmt", "rgb24",
           tmp_path / "in" / "%d.png")
    images = CliRunner().invoke(app, ["dir", str(tmp_path / "in"), "-o", str(tmp_path / "up"), "--device", "cpu",
                                      "-m", str(tiny_model)])
    assert images.exit_code == 0, images.output
    for index, planes in enumerate(frames, start=1):
        rgb = np.asarray(Image.open(tmp_path / "up" / f"{index}.png").convert("RGB"), dtype=np.float64)
        luma = 16 + 219 / 255 * (rgb @ np.array([0.299, 0.587, 0.114]))
        assert psnr(planes[0], luma) >= 40.0


def test_ten_bit_422_y4m_keeps_its_layout(tmp_path: Path, tiny_model: Path) -> None:
    clip = tmp_path / "deep.y4m"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24000/1001", "-frames:v", "2", "-pix_fmt", "yuv422p10le",
           "-strict", "-1", clip)
    result = pipe(clip.read_bytes(), "-m", str(tiny_model))
    assert result.returncode == 0, result.stderr.decode()
    header, frames = read_y4m(result.stdout)
    assert (header.chroma, header.rate) == ("422p10", Fraction(24000, 1001))
    assert len(frames) == 2 and frames[0][1].shape == (192, 128) and frames[0][0].max() > 255


def test_raw_rgb24_in_and_out_is_what_the_engine_makes(tiny_model: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    result = pipe(b"".join(f.tobytes() for f in frames), "--input", "rgb24", "--size", "64x48", "-m", str(tiny_model))
    assert result.returncode == 0, result.stderr.decode()
    engine = open_engine(RunSettings(model=str(tiny_model), device="cpu"))
    expected = b"".join(f.tobytes() for f in engine.stream(f.copy() for f in frames))
    assert result.stdout == expected
    assert b"frames" in result.stderr  # progress and summary on stderr, never on stdout


def test_reader_closing_the_pipe_ends_quietly(clip_y4m: Path, tiny_model: Path, tmp_path: Path) -> None:
    """48 frames: their 3.5 MB output outgrows any pipe buffer, so a write must meet the closed pipe, however fast."""
    data = clip_y4m.read_bytes()
    head_end = data.index(b"FRAME")
    long_clip = tmp_path / "long.y4m"
    long_clip.write_bytes(data[:head_end] + data[head_end:] * 16)
    command = " ".join(PIPE + ["--device", "cpu", "-m", str(tiny_model)]) + f" < {long_clip} | head -c 1000 > /dev/null"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "closed the pipe" in result.stderr and "Traceback" not in result.stderr and "Exception" not in result.stderr


def pipe_here(stdin: bytes, *args: str) -> Result:
    """The command in this process (no interpreter start-up), for the error paths."""
    return CliRunner().invoke(app, ["pipe", "--device", "cpu", *args], input=stdin)


def test_truncated_last_frame_is_reported_after_the_complete_ones(clip_y4m: Path, tiny_model: Path) -> None:
    data = clip_y4m.read_bytes()
    result = pipe_here(data[: len(data) - 500], "-m", str(tiny_model))
    assert result.exit_code == 1
    assert "error: stdin: frame 3 is truncated" in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr
    assert len(read_y4m(result.stdout_bytes)[1]) == 2


def test_not_y4m_is_one_error_line(tiny_model: Path) -> None:
    result = pipe_here(b"hello, this is text\n", "-m", str(tiny_model))
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr


def test_raw_input_needs_a_size() -> None:
    result = pipe_here(b"", "--input", "rgb24")
    assert result.exit_code == 2 and "--size" in result.stderr


def test_ctrl_c_stops_cleanly(clip_y4m: Path, tiny_model: Path) -> None:
    process = subprocess.Popen([*PIPE, "--device", "cpu", "-m", str(tiny_model)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    data = clip_y4m.read_bytes()
    process.stdin.write(data)  # three frames, and the pipe stays open: the command waits for more
    process.stdin.flush()
    header = process.stdout.readline()
    assert header.startswith(b"YUV4MPEG2 W256 H192")
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr.decode()
    assert "interrupted" in stderr.decode() and "Traceback" not in stderr.decode()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pipe_on_the_gpu_matches_the_cpu(clip_y4m: Path) -> None:
    outputs = [pipe(clip_y4m.read_bytes(), "--device", device, "--precision", "fp32") for device in ("cpu", "cuda")]
    for result in outputs:
        assert result.returncode == 0, result.stderr.decode()
    (_, cpu), (_, gpu) = (read_y4m(r.stdout) for r in outputs)
    for a, b in zip(cpu, gpu, strict=True):
        assert psnr(a[0], b[0]) >= 40.0


@pytest.mark.parametrize("tag", ["It", "Ib", "Im"])
def test_interlaced_y4m_is_refused_before_the_model_opens(clip_y4m: Path, tag: str) -> None:
    data = clip_y4m.read_bytes().replace(b" Ip ", f" {tag} ".encode(), 1)
    assert f" {tag} ".encode() in data[:80]
    result = pipe_here(data, "-m", "no-such-model")  # the stream is judged first: the model is never looked for
    assert result.exit_code == 1 and result.stdout_bytes == b""
    assert result.stderr.startswith(f"error: stdin: y4m is interlaced ({tag}: ") and "deinterlace it first" in result.stderr


def test_raw_input_on_an_empty_stdin_is_a_failure_not_zero_frames(tiny_model: Path) -> None:
    result = pipe(b"", "--input", "rgb24", "--size", "16x16", "-m", str(tiny_model))
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().strip().endswith("error: stdin: no input (empty stream)")


@pytest.mark.parametrize("stdin,args", [
    (bytes(1000), ["--input", "rgb24", "--size", "20000x20000"]),  # 3.9 GB in 15 s before; 19 GB per output frame
    (b"YUV4MPEG2 W100000 H100000 F25:1 Ip C444\nFRAME\n" + bytes(1000), []),  # a header's word is as good as --size
])
def test_frames_that_cannot_fit_are_refused_before_the_first(stdin: bytes, args: list[str], tiny_model: Path) -> None:
    result = pipe_here(stdin, *args, "-m", str(tiny_model))
    assert result.exit_code == 2 and result.stdout_bytes == b""
    message = " ".join(result.stderr.split())
    assert message.startswith("error: frames of ") and "the frames in flight need" in message and "Traceback" not in message
