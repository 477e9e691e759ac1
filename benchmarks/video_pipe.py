"""`upscale pipe` and `upscale video` frames/s next to `upscale bench` frames/s, same model, size and run.

The goal is pipe/bench >= 0.90: decoding y4m, colour conversion and writing frames hidden behind
the model. Pipe fps is measured here at the reading end of stdout, from the warm-up frames' end
to the last frame (bench also excludes its warm-up); video fps is the command's own summary,
default codec, start-up and warm-up included.

    python benchmarks/video_pipe.py --device cpu --size 320x180 --frames 12
    python benchmarks/video_pipe.py --device cuda --size 960x540 --frames 300   # goal >= 100 fps on an H100
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from upscaler.io.colour import ColourTags, SwscaleConverter, guess_matrix
from upscaler.io.y4m import Y4MHeader

ROOT = Path(__file__).resolve().parent.parent
UPSCALE = [sys.executable, "-m", "upscaler"]


def photo_frames(width: int, height: int, count: int) -> list[np.ndarray]:
    """A real photo at the frame size, shifted a little each frame so that no two frames are equal."""
    photo = Image.open(min((ROOT / "examples").glob("*.png"))).convert("RGB").resize((width + 16, height))
    pixels = np.asarray(photo)
    return [np.ascontiguousarray(pixels[:, i % 16: i % 16 + width]) for i in range(count)]


def write_y4m(path: Path, frames: list[np.ndarray]) -> None:
    height, width = frames[0].shape[:2]
    tags = ColourTags(range=1, matrix=guess_matrix(height))
    converter = SwscaleConverter(tags, height, "rgb24", tags, height, "yuv420p")
    with path.open("wb") as file:
        file.write(Y4MHeader(width, height, Fraction(25), "420jpeg", extras=("XCOLORRANGE=LIMITED",)).encode())
        for rgb in frames:
            file.write(b"FRAME\n")
            for plane in converter.planes_from_rgb(rgb):
                file.write(np.ascontiguousarray(plane).tobytes())


def write_clip(path: Path, frames: list[np.ndarray]) -> None:
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "18", "g": "25"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")))
        container.mux(stream.encode(None))


def bench_fps(common: list[str], size: str, frames: int, warmup: int) -> dict[str, Any]:
    out = subprocess.run([*UPSCALE, "bench", *common, "--size", size, "--frames", str(frames), "--warmup", str(warmup),
                          "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def pipe_fps(common: list[str], y4m: Path, width: int, height: int, scale: int, frames: int, warmup: int) -> float:
    """Frames/s at the reading end of the pipe, between the end of the warm-up frames and the last frame."""
    frame_bytes = len(b"FRAME\n") + width * scale * height * scale * 3 // 2
    with y4m.open("rb") as stdin:
        process = subprocess.Popen([*UPSCALE, "pipe", *common], stdin=stdin, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        assert process.stdout is not None
        process.stdout.readline()  # header
        stamps: list[float] = []
        got = 0
        while chunk := process.stdout.read(1 << 20):
            got += len(chunk)
            while len(stamps) < got // frame_bytes:
                stamps.append(time.perf_counter())
        _, stderr = process.communicate()
    if process.returncode or len(stamps) != frames + warmup:
        raise SystemExit(f"upscale pipe failed ({len(stamps)} frames):\n{stderr.decode()}")
    return frames / (stamps[-1] - stamps[warmup - 1])


def video_fps(common: list[str], clip: Path, out: Path) -> tuple[float, str]:
    result = subprocess.run([*UPSCALE, "video", str(clip), "-o", str(out), *common], capture_output=True, text=True,
                            check=False)
    if result.returncode:
        raise SystemExit(f"upscale video failed:\n{result.stderr}")
    fps = re.search(r"frames/s\s*│\s*([\d.]+)", result.stderr)
    codec = re.search(r"codec\s*│\s*(\S+ \S+)", result.stderr)
    return float(fps.group(1)) if fps else float("nan"), codec.group(1) if codec else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="320x180", help="input WIDTHxHEIGHT")
    parser.add_argument("--model", default="default")
    parser.add_argument("--frames", type=int, default=12, help="timed frames")
    parser.add_argument("--warmup", type=int, default=2, help="untimed frames first (at least 1)")
    parser.add_argument("--scale", type=int, default=4, help="the model's scale")
    parser.add_argument("--no-video", action="store_true", help="skip the `upscale video` run")
    args, extra = parser.parse_known_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    common = ["--device", args.device, "--model", args.model, *extra]
    args.warmup = max(1, args.warmup)
    bench = bench_fps(common, args.size, args.frames, args.warmup)
    scale = args.scale
    frames = photo_frames(width, height, args.frames + args.warmup)
    with tempfile.TemporaryDirectory() as folder:
        y4m = Path(folder) / "in.y4m"
        write_y4m(y4m, frames)
        pipe = pipe_fps(common, y4m, width, height, scale, args.frames, args.warmup)
        report: dict[str, object] = {
            "device": args.device, "backend": bench["backend"], "model": args.model, "size": args.size,
            "frames": args.frames, "bench_fps": round(float(bench["fps"]), 3), "pipe_fps": round(pipe, 3),
            "pipe_vs_bench": round(pipe / float(bench["fps"]), 3),
        }
        if not args.no_video:
            clip = Path(folder) / "in.mp4"
            write_clip(clip, frames)
            fps, codec = video_fps(common, clip, Path(folder) / "out.mkv")
            report.update(video_fps=round(fps, 3), video_codec=codec, video_vs_bench=round(fps / float(bench["fps"]), 3))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
