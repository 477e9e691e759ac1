"""The one GPU check: every CUDA test and GPU benchmark, one markdown report.

    python benchmarks/gpu_check.py --out gpu_report.md

Runs, on the first CUDA GPU, in one process and one run (so every ratio is side by side):
1. the CUDA tests (tests/test_streams_cuda.py: fp16 streamed output vs CPU fp32 on Set14, >= 40 dB);
2. the bare model (fp16, channels_last, whole 960x540 frames already on the GPU, no copies) vs
   `upscale bench --size 960x540` through the engine: eager, CUDA graphs and torch.compile, 1/2/4
   streams, for the default model and for the srresnet architecture with RANDOM weights (a speed
   benchmark only; such weights are never shipped), with host CPU seconds per frame;
3. copy/compute overlap from the CUDA trace (torch.profiler): time host<->device copies ran while
   kernels ran;
4. `upscale pipe` 960x540 -> 3840x2160 through benchmarks/video_pipe.py, when that script exists;
5. pictures of different sizes (Set14 HR as inputs, or examples/): the engine launching `--streams`
   - 1 pictures ahead of the one it collects vs the bare model on the same pictures, and the whole
   `upscale dir` path (decode, launch, collect, PNG encode) on the same pictures, 1/2/4 streams.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from upscaler.engine.bench import frame_from_photo  # noqa: E402
from upscaler.engine.devices import channels_last  # noqa: E402
from upscaler.engine.engine import Engine, open_engine  # noqa: E402
from upscaler.engine.pipeline import run_jobs  # noqa: E402
from upscaler.engine.settings import RunSettings  # noqa: E402
from upscaler.io.files import Job, discover  # noqa: E402
from upscaler.io.images import Picture, read_picture  # noqa: E402
from upscaler.models import get_architecture, macs_per_input_pixel  # noqa: E402
from upscaler.models.weights import LoadedModel, ModelCard, load_model  # noqa: E402


def bare_fps(module: torch.nn.Module, frame: np.ndarray, frames: int) -> float:
    """The model alone on whole frames already on the GPU in fp16: the ceiling for the engine."""
    net = channels_last(copy.deepcopy(module).half().cuda().eval())
    x = torch.from_numpy(frame).cuda().permute(2, 0, 1)[None].half().div(255).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            net(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(frames):
            net(x)
        torch.cuda.synchronize()
    return frames / (time.perf_counter() - start)


def engine_fps(engine: Engine, frame: np.ndarray, frames: int) -> tuple[float, float]:
    """(frames/s, host CPU seconds per frame) streaming equal frames through the engine."""
    for _ in engine.stream([frame] * 3):
        pass
    cpu0, start = time.process_time(), time.perf_counter()
    for _ in engine.stream([frame] * frames):
        pass
    wall = time.perf_counter() - start
    return frames / wall, (time.process_time() - cpu0) / frames


def overlap_report(engine: Engine, frame: np.ndarray) -> str:
    """From a CUDA trace: how long copies ran, and how much of that overlapped some kernel."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in engine.stream([frame] * 8):
            pass
        torch.cuda.synchronize()
    copies: list[tuple[float, float]] = []
    kernels: list[tuple[float, float]] = []
    for event in prof.events():
        if event.device_type.name != "CUDA":
            continue
        span = (event.time_range.start, event.time_range.end)
        (copies if "Memcpy" in event.name else kernels).append(span)
    kernels.sort()
    overlapped = 0.0
    for c0, c1 in copies:
        for k0, k1 in kernels:
            if k0 >= c1:
                break
            overlapped += max(0.0, min(c1, k1) - max(c0, k0))
    total = sum(c1 - c0 for c0, c1 in copies)
    return f"copies {total / 1000:.2f} ms over 8 frames, {min(overlapped, total) / 1000:.2f} ms of it beside kernels"


def bare_pictures_seconds(module: torch.nn.Module, pictures: list[Picture]) -> float:
    """The model alone on each whole picture already on the GPU in fp16 (gray as RGB, alpha left out)."""
    net = channels_last(copy.deepcopy(module).half().cuda().eval())
    inputs = [torch.from_numpy(np.atleast_3d(p.color)[..., :3].copy()).cuda().permute(2, 0, 1)[None].expand(1, 3, -1, -1)
              .half().div(255).contiguous(memory_format=torch.channels_last) for p in pictures]
    with torch.inference_mode():
        for x in inputs:  # every shape met once (cuDNN picks its algorithms per shape)
            net(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for x in inputs:
            net(x)
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(run: Callable[[], None]) -> float:
    run()  # warm-up: every shape met once
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def pictures_report(photos: Path, loaded: LoadedModel) -> list[str]:
    """Pictures of many sizes: launched ahead across picture boundaries, and through the whole `dir` path."""
    sources = discover(photos, Path(tempfile.gettempdir()) / "nowhere", recursive=False).sources
    pictures = [read_picture(s) for s in sources]
    pixels = sum(p.size[0] * p.size[1] for p in pictures)
    bare = bare_pictures_seconds(loaded.module, pictures)
    lines = [f"## {len(pictures)} pictures of {photos} ({pixels / 1e6:.2f} MP), default model, fp16", "",
             f"bare model: {bare:.3f} s ({len(pictures) / bare:.1f} pictures/s)", "",
             "| streams | depth | engine s | engine / bare | `dir` path s (PNG files) | `dir` / bare |", "|---|---|---|---|---|---|"]
    for streams in (1, 2, 4):
        engine = open_engine(RunSettings(model="default", device="cuda", precision="fp16", backend="torch", streams=streams), loaded)

        def launched() -> None:
            pending: deque[Callable[[], Picture]] = deque()
            for picture in pictures:
                pending.append(engine.launch(picture, "PNG"))
                while len(pending) > engine.depth:
                    pending.popleft()()
            while pending:
                pending.popleft()()

        def whole_path() -> None:
            with tempfile.TemporaryDirectory() as out:
                jobs = [Job(s, Path(out) / f"{s.stem}.png", "PNG") for s in sources]
                failed = [o.error for o in run_jobs(jobs, engine.launch, depth=engine.depth) if not o.ok]
                if failed:
                    raise RuntimeError(f"dir failed: {failed}")

        ours, path = timed(launched), timed(whole_path)
        lines.append(f"| {streams} | {engine.depth} | {ours:.3f} | {bare / ours:.2f} | {path:.3f} | {bare / path:.2f} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("gpu_report.md"))
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared" / "datasets" / "Set14" / "HR",
                        help="pictures of many sizes for section 5 (examples/ when this folder is missing)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here")
    lines = [f"# GPU check: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}", ""]
    if not args.skip_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_streams_cuda.py"], cwd=ROOT,
                               capture_output=True, text=True, check=False)
        lines += ["## CUDA tests", "", "```", tests.stdout.strip().splitlines()[-1] if tests.stdout else tests.stderr, "```", ""]
    with Image.open(ROOT / "examples" / "astronaut.png") as img:
        frame = frame_from_photo(np.asarray(img.convert("RGB")), 960, 540)
    torch.manual_seed(0)
    models = {
        "default": load_model("default"),
        "srresnet (random weights, speed only)": LoadedModel(
            ModelCard("srresnet", {}, 4), get_architecture("srresnet").build().eval(), "srresnet-random"),
    }
    lines += ["## 960x540 -> 3840x2160, fp16", "",
              "| model | mode | streams | engine fps | bare model fps | engine / bare | host CPU s/frame | useful TFLOP/s |",
              "|---|---|---|---|---|---|---|---|"]
    for label, loaded in models.items():
        bare = bare_fps(loaded.module, frame, args.frames)
        macs = macs_per_input_pixel(loaded.module)
        for mode, extra in (("eager", {}), ("CUDA graphs", {"cuda_graphs": True}), ("torch.compile", {"compile": True})):
            for streams in (1, 2, 4):
                settings = RunSettings(model="default", device="cuda", precision="fp16", backend="torch", streams=streams,
                                       **extra)  # type: ignore[arg-type]
                try:
                    engine = open_engine(settings, loaded)
                    fps, host = engine_fps(engine, frame, args.frames)
                except Exception as exc:  # noqa: BLE001 (a mode that fails is reported, the rest still runs)
                    lines.append(f"| {label} | {mode} | {streams} | failed: {exc} | | | | |")
                    continue
                tflops = 960 * 540 * macs * 2 * fps / 1e12
                lines.append(f"| {label} | {mode} | {streams} | {fps:.1f} | {bare:.1f} | {fps / bare:.2f} | {host:.4f} | {tflops:.1f} |")
            print("\n".join(lines[-3:]), flush=True)
    engine = open_engine(RunSettings(model="default", device="cuda", precision="fp16", backend="torch", streams=2))
    lines += ["", "## Copy/compute overlap (default model, 2 streams)", "", overlap_report(engine, frame), ""]
    lines += pictures_report(args.photos if args.photos.is_dir() else ROOT / "examples", models["default"])
    pipe_bench = ROOT / "benchmarks" / "video_pipe.py"
    if pipe_bench.is_file():
        pipe = subprocess.run([sys.executable, str(pipe_bench), "--device", "cuda", "--size", "960x540"], cwd=ROOT,
                              capture_output=True, text=True, check=False)
        lines += ["## upscale pipe, 960x540 -> 3840x2160", "", "```", (pipe.stdout + pipe.stderr).strip()[-3000:], "```"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
