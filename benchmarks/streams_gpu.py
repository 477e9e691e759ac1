"""Torch CUDA streaming on a 540p -> 2160p workload: 1, 2, 4 streams, with and without CUDA graphs.

Needs a CUDA GPU. Prints a markdown table for benchmarks/RESULTS.md (with the GPU's name) and
the copy/compute overlap measured with CUDA events.

    python benchmarks/streams_gpu.py --model default --frames 20
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from upscaler.engine.backends import RunSettings, open_upscaler
from upscaler.engine.bench import frame_from_photo, run_bench
from upscaler.compile.onnx import TileShape
from upscaler.models import macs_per_input_pixel
from upscaler.engine.streams import StreamedBackend, TorchExecutor, overlap_ms
from upscaler.models.weights import load_model


def overlap_report(model: str, tile: int, batch: int, streams: int, frame: np.ndarray) -> str:
    """Event timings of one frame's batches: time copies ran while some compute ran."""
    loaded = load_model(model)
    device = torch.device("cuda")
    executor = TorchExecutor(loaded.module.to(device), torch.float16, "nhwc", cuda_graphs=False)
    backend = StreamedBackend(executor, loaded.card.scale, TileShape(batch, tile), streams, device, profile=True)
    tiles = torch.from_numpy(frame).permute(2, 0, 1).float().div(255).unfold(1, tile, tile).unfold(2, tile, tile)
    batches = tiles.permute(1, 2, 0, 3, 4).reshape(-1, 3, tile, tile).split(batch)
    for _ in backend.run([b for b in batches if b.shape[0] == batch] * 4):
        pass
    times = backend.stage_times()
    copies = times.h2d + times.d2h
    copy_ms = sum(b - a for a, b in copies)
    return (
        f"{streams} streams: copies {copy_ms:.2f} ms in all, of which {overlap_ms(copies, times.compute):.2f} ms "
        f"overlapped compute; compute {sum(b - a for a, b in times.compute):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    with Image.open("examples/astronaut.png") as img:
        photo = np.asarray(img.convert("RGB"))
    frame = frame_from_photo(photo, 960, 540)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, model {args.model}, "
          f"tile {args.tile}, batch {args.batch}, fp16, 960x540 -> 3840x2160")
    print("| streams | CUDA graphs | frames/s | p50 ms | p95 ms | useful TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for graphs in (False, True):
        for streams in (1, 2, 4):
            settings = RunSettings(model=args.model, tile=args.tile, batch=args.batch, device="cuda", precision="fp16",
                                   backend="torch", streams=streams, cuda_graphs=graphs)
            upscale, loaded, _ = open_upscaler(settings)
            result = run_bench(upscale, frame, args.frames, warmup=3, macs_per_pixel=macs_per_input_pixel(loaded.module))
            print(f"| {streams} | {'yes' if graphs else 'no'} | {result.fps:.2f} | {result.p50_ms:.1f} | "
                  f"{result.p95_ms:.1f} | {result.useful_gflops / 1000:.2f} |")
    pixels = (frame.color * 255).round().astype(np.uint8)
    for streams in (1, 4):
        print(overlap_report(args.model, args.tile, args.batch, streams, pixels))


if __name__ == "__main__":
    main()
