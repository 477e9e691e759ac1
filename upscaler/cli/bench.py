"""`upscale bench`: latency and throughput of the whole frame path."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from upscaler.cli.app import app, fail
from upscaler.cli.compile import _probe_pixels
from upscaler.cli.options import (
    Backend,
    BackendOption,
    BatchOption,
    DeviceOption,
    EnginesOption,
    GraphsOption,
    ModelOption,
    OverlapOption,
    PrecisionOption,
    StreamsOption,
    TileOption,
    _settings,
)
from upscaler.compile.compiler import DEFAULT_CACHE
from upscaler.engine.backends import open_upscaler
from upscaler.engine.upscale import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE
from upscaler.models.weights import DEFAULT_MODEL


@app.command("bench")
def bench(
    model: ModelOption = DEFAULT_MODEL,
    size: Annotated[str, typer.Option(help="Input frame size WIDTHxHEIGHT (960x540 upscales to 3840x2160).")] = "960x540",
    frames: Annotated[int, typer.Option(help="Timed frames.")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed frames first (autotuning, CUDA graph capture).")] = 2,
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    batch: BatchOption = DEFAULT_BATCH,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    backend: BackendOption = Backend.auto,
    streams: StreamsOption = 2,
    cuda_graphs: GraphsOption = False,
    engines: EnginesOption = DEFAULT_CACHE,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Latency (p50/p95) and throughput of the full tiled path on frames of one size."""
    from upscaler.engine.bench import frame_from_photo, run_bench

    try:
        width, height = (int(v) for v in size.lower().split("x"))
        settings = _settings(model, None, tile, overlap, batch, device, precision, backend, streams, cuda_graphs, engines)
        upscale, loaded, opened = open_upscaler(settings)
        frame = frame_from_photo(_probe_pixels(), width, height)
        result = run_bench(upscale, frame, frames, warmup, loaded.descriptor.macs_per_input_pixel)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    report = {
        "model": loaded.source, "backend": opened.description, "size": f"{width}x{height}", "frames": frames,
        "fps": result.fps, "p50_ms": result.p50_ms, "p95_ms": result.p95_ms,
        "input_megapixels_per_s": result.input_pixels * result.fps / 1e6, "useful_gflops": result.useful_gflops,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title="upscale bench", show_header=False)
    for key, value in report.items():
        table.add_row(key, f"{value:.2f}" if isinstance(value, float) else str(value))
    Console().print(table)
