"""The frame engine against the bare model on this CPU, side by side in one run (issue: frame engine).

    python benchmarks/frame_engine.py ../shared/datasets/Set14/HR

(a) `upscale dir`'s path (decode, engine, encode on worker threads) over a folder of photos vs the
    bare model run alone on each whole image in the same precision: useful FLOP rate ratio, the
    median of alternating rounds after one warm-up round of each (a shared machine drifts);
(b) one 960x540 frame through the `upscale bench` path vs the bare model on that whole frame, the
    median of alternating rounds as in (a);
(c) pixels computed / real pixels for both (tiles, overlaps, padding);
(d) peak RSS of `upscale image` on a 4000x3000 JPEG (16000x12000 output), in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from upscaler.engine.openmp import wait_passively

wait_passively("dir")  # as `upscale dir` does, before torch loads

import numpy as np
import torch
from PIL import Image

from upscaler.engine.bench import frame_from_photo, run_bench
from upscaler.engine.devices import channels_last, cpu_name
from upscaler.engine.engine import Engine, open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job, discover
from upscaler.io.images import read_picture
from upscaler.jobs.pictures import run_jobs
from upscaler.models import macs_per_input_pixel

ROOT = Path(__file__).resolve().parent.parent


def bare_seconds(engine: Engine, images: list[np.ndarray], repeat: int = 1) -> float:
    """The model alone on each whole image, in the engine's dtype, channels_last, no I/O, no tiles."""
    module = channels_last(__import__("copy").deepcopy(engine.model.module).to(engine.plan.dtype).eval())
    inputs = [torch.from_numpy(np.atleast_3d(i)[..., :3].copy()).permute(2, 0, 1)[None].to(engine.plan.dtype).div(255)
              .expand(1, 3, -1, -1).contiguous(memory_format=torch.channels_last) for i in images]
    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(repeat):
            for x in inputs:
                module(x)
    return time.perf_counter() - start


def dir_seconds(engine: Engine, sources: list[Path], out: Path) -> float:
    jobs = [Job(s, out / f"{s.stem}.png", "PNG") for s in sources]
    start = time.perf_counter()
    failed = [o.error for o in run_jobs(jobs, engine.launch, depth=engine.depth) if not o.ok]
    if failed:
        raise SystemExit(f"failed: {failed}")
    return time.perf_counter() - start


def peak_rss_mib(big: Path, out: Path) -> float:
    subprocess.run([sys.executable, "-m", "upscaler", "image", str(big), "-o", str(out), "--device", "cpu"],
                   check=True, capture_output=True, cwd=ROOT)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path, help="a folder of photos, e.g. ../shared/datasets/Set14/HR")
    parser.add_argument("--model", default="default")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="(a): alternating rounds after a warm-up; the median is reported")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()
    engine = open_engine(RunSettings(model=args.model, device="cpu"))
    macs = macs_per_input_pixel(engine.model.module)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"torch {torch.__version__}; {engine.description}; {macs:,.0f} MACs per input pixel")

    sources = discover(args.photos, Path(tempfile.gettempdir()) / "nowhere", recursive=False).sources
    images = [read_picture(s).color for s in sources]
    pixels = sum(i.shape[0] * i.shape[1] for i in images)
    computed = sum(engine.plan.tiles.grid(*i.shape[:2]).computed_pixels for i in images)
    rounds = []
    for _ in range(args.rounds + 1):
        with tempfile.TemporaryDirectory() as folder:
            ours = dir_seconds(engine, sources, Path(folder))
        rounds.append((ours, bare_seconds(engine, images)))
    rounds = rounds[1:]  # the first round warmed both up (every shape met once)
    ours, bare = sorted(rounds, key=lambda r: r[1] / r[0])[len(rounds) // 2]
    gflops = pixels * macs * 2 / 1e9
    print(f"(a) upscale dir over {len(sources)} photos ({pixels / 1e6:.2f} MP): {gflops / ours:.1f} useful GFLOP/s; "
          f"bare model {gflops / bare:.1f} GFLOP/s; ratio {bare / ours:.2f} (goal >= 0.90), the median of "
          f"{len(rounds)} alternating rounds: {' '.join(f'{b / o:.2f}' for o, b in rounds)}")
    print(f"(c) computed/real pixels over those photos: {computed / pixels:.3f} (goal <= 1.15)")

    frame = frame_from_photo(np.asarray(Image.open(ROOT / "examples" / "astronaut.png").convert("RGB")), 960, 540)
    frame_rounds = []
    for _ in range(args.rounds + 1):  # the first round warms up, as in (a)
        fps = run_bench(engine, frame, args.frames, warmup=0, macs_per_pixel=macs).fps
        frame_rounds.append((fps, bare_seconds(engine, [frame], repeat=args.frames) / args.frames))
    frame_rounds = frame_rounds[1:]
    fps, bare_frame = sorted(frame_rounds, key=lambda r: r[0] * r[1])[len(frame_rounds) // 2]
    grid = engine.plan.tiles.for_frames().grid(540, 960)
    print(f"(b) 960x540 through upscale bench: {fps:.3f} fps; bare model {1 / bare_frame:.3f} fps; "
          f"ratio {fps * bare_frame:.2f} (goal >= 0.90), the median of {len(frame_rounds)} alternating rounds of "
          f"{args.frames} frames: {' '.join(f'{f * b:.2f}' for f, b in frame_rounds)}")
    print(f"(c) computed/real pixels for 960x540: {grid.computed_pixels / (960 * 540):.3f} ({len(grid.origins)} tile(s))")

    if not args.skip_rss:
        with tempfile.TemporaryDirectory() as folder:
            big = Path(folder) / "big.jpg"
            photo = Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
            photo.save(big, quality=92)
            start = time.perf_counter()
            rss = peak_rss_mib(big, Path(folder) / "big.png")
            print(f"(d) peak RSS of upscale image on a 4000x3000 JPEG -> 16000x12000 PNG: {rss:.0f} MiB "
                  f"(goal <= 2048), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
