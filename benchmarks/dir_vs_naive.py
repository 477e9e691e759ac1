"""`upscale dir`'s data path vs the naive loop: same model, same images, measured side by side.

naive:      eager fp32, NCHW, one whole image at a time, decode -> model -> encode in sequence.
ours fp32:  the `upscale dir` path (auto tiles, channels_last, decode/encode beside inference).
ours auto:  the same with --precision auto (bf16 on CPUs with native bf16, else fp32): the default.
Both read the images from disk and write PNGs; model loading is outside both timings.

    python benchmarks/dir_vs_naive.py ../shared/datasets/Set14/LR_bicubic/X4 --model default
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from upscaler.engine.openmp import wait_passively

wait_passively("dir")  # as `upscale dir` does, before torch loads

import numpy as np
import torch
from PIL import Image

from upscaler.engine.engine import open_engine
from upscaler.engine.settings import RunSettings
from upscaler.io.files import Job, discover, output_format, target_path
from upscaler.jobs.pictures import run_jobs
from upscaler.models import macs_per_input_pixel


def naive(module: torch.nn.Module, sources: list[Path], out: Path) -> float:
    start = time.perf_counter()
    for source in sources:
        with Image.open(source) as img:
            rgb = np.asarray(img.convert("RGB"))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            y = module(x)[0]
        pixels = (y.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(out / source.name)
    return time.perf_counter() - start


def ours(settings: RunSettings, folder: Path, sources: list[Path], out: Path) -> float:
    engine = open_engine(settings)
    jobs = [Job(s, target_path(s, folder, out, output_format(s, "keep")), "PNG") for s in sources]
    start = time.perf_counter()
    failures = [o for o in run_jobs(jobs, engine.launch, depth=engine.depth) if not o.ok]
    if failures:
        raise SystemExit(f"{len(failures)} image(s) failed: {failures[0].error}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="default")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    args = parser.parse_args()

    sources = discover(args.folder, Path(tempfile.gettempdir()) / "nowhere", recursive=False).sources
    settings = RunSettings(model=args.model, device="cpu")
    engine = open_engine(settings)
    loaded = engine.model
    naive_module = loaded.module.float().eval().to(memory_format=torch.contiguous_format)
    macs = macs_per_input_pixel(loaded.module)
    pixels = 0
    for source in sources:
        with Image.open(source) as img:
            pixels += img.width * img.height

    variants = {"ours fp32": RunSettings(model=args.model, device="cpu", precision="fp32"), "ours auto": settings}
    times: dict[str, float] = {name: float("inf") for name in ["naive", *variants]}
    for _ in range(args.repeat):  # alternate, so all see the same machine state
        with tempfile.TemporaryDirectory() as folder:
            times["naive"] = min(times["naive"], naive(naive_module, sources, Path(folder)))
        for name, variant in variants.items():
            with tempfile.TemporaryDirectory() as folder:
                times[name] = min(times[name], ours(variant, args.folder, sources, Path(folder)))

    print(f"model {loaded.source}: {macs:,.0f} MACs per input pixel; backend {engine.description}")
    print(f"{len(sources)} images, {pixels / 1e6:.3f} input megapixels, torch threads {torch.get_num_threads()}")
    print("| path | wall s | images/s | useful GFLOP/s |")
    print("|---|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.2f} | {len(sources) / seconds:.2f} | {pixels * macs * 2 / seconds / 1e9:.1f} |")
    for name in variants:
        print(f"speed-up of {name} over naive (wall time ratio): {times['naive'] / times[name]:.2f}x")


if __name__ == "__main__":
    main()
