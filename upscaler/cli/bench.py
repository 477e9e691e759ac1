"""`upscale bench`: latency and throughput of the whole frame path."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from upscaler.cli.app import app, fail
from upscaler.cli.options import open_engine_or_fail, run_options
from upscaler.engine.settings import RunSettings


@app.command("bench")
@run_options
def bench(
    settings: RunSettings,
    size: Annotated[str, typer.Option(help="Input frame size WIDTHxHEIGHT (960x540 upscales to 3840x2160).")] = "960x540",
    frames: Annotated[int, typer.Option(min=1, help="Timed frames.")] = 10,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed frames first (autotuning, CUDA graph capture).")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Latency (p50/p95) and throughput of the whole frame path on frames of one size.

    Frames go through the same engine as `video` and `pipe` (tiles, blending, quantising, and on
    CUDA the frames in flight on several streams); decoding and encoding are not included.
    """
    from upscaler.engine.bench import frame_from_photo, run_bench
    from upscaler.io.examples import example_pixels

    try:
        width, height = (int(v) for v in size.lower().split("x"))
        if min(width, height) < 1:
            raise ValueError(size)
    except ValueError:
        raise fail(f"--size {size}: give the frame size as WIDTHxHEIGHT, e.g. 960x540") from None
    engine = open_engine_or_fail(settings)
    try:
        frame = frame_from_photo(example_pixels(), width, height)
        result = run_bench(engine, frame, frames, warmup, engine.model.descriptor.macs_per_input_pixel)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    grid = engine.plan.tiles.for_frames().grid(height, width)
    report = {
        "model": engine.model.source, "backend": engine.description, "size": f"{width}x{height}", "frames": frames,
        "fps": result.fps, "p50_ms": result.p50_ms, "p95_ms": result.p95_ms,
        "input_megapixels_per_s": result.input_pixels * result.fps / 1e6, "useful_gflops": result.useful_gflops,
        "tiles": len(grid.origins), "computed_pixel_ratio": grid.computed_pixels / (width * height),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title="upscale bench", show_header=False)
    for key, value in report.items():
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)
