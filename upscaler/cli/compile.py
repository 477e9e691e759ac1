"""`upscale compile`: a model into a checked ONNX graph and a cached TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from upscaler.cli.app import app, console, fail, printable
from upscaler.cli.options import DeviceOption, ModelOption
from upscaler.engine.devices import resolve_device
from upscaler.engine.plan import STATIC_PHOTO_TILE
from upscaler.engine.settings import DEFAULT_BATCH, DEFAULT_OVERLAP
from upscaler.io.user_folders import ENGINES_HELP, engines_folder
from upscaler.models.weights import DEFAULT_MODEL


@app.command("compile")
def compile_engine(
    model: ModelOption = DEFAULT_MODEL,
    tile: Annotated[int, typer.Option(help="The one static tile shape the engine is built for (input pixels).")] = STATIC_PHOTO_TILE,
    overlap: Annotated[int, typer.Option(help="Overlap this engine will be run with; checked against the tile.")] = DEFAULT_OVERLAP,
    batch: Annotated[int, typer.Option(help="Static tile batch.")] = DEFAULT_BATCH,
    precision: Annotated[str, typer.Option(help="auto, fp16 or fp32: stored in the ONNX graph itself (TensorRT 11 is strongly typed); auto is fp16, or an ONNX model's own.")] = "auto",
    layout: Annotated[str, typer.Option(help="uint8 I/O layout: nhwc or nchw.")] = "nhwc",
    out: Annotated[Path | None, typer.Option("--out", "-o", show_default=False,
                                             help=f"Engine cache folder \\[default: {ENGINES_HELP}].")] = None,
    workspace: Annotated[int, typer.Option(help="TensorRT workspace limit in MiB.")] = 4096,
    opt_level: Annotated[int, typer.Option(min=0, max=5, help="TensorRT builder optimization level.")] = 3,
    device: DeviceOption = "auto",
    list_cache: Annotated[bool, typer.Option("--list", help="Show the engine cache and exit.")] = False,
) -> None:
    """Compile a model into an FP16 TensorRT engine, cached per model, GPU, TensorRT version and tile shape.

    The ONNX graph (uint8 in and out, precision inside) is exported, checked and kept beside the
    engine; an .onnx model is wrapped into that contract as it is. Without TensorRT the ONNX file
    is still made and checked; the exit code is then 3.
    """
    from upscaler.compile.compiler import CompileRequest, compile_model
    from upscaler.compile.onnx import TileShape
    from upscaler.compile.trt.cache import EngineCache
    from upscaler.engine.tiling import check_overlap
    from upscaler.io.examples import example_pixels
    from upscaler.models.weights import load_model

    out = out or engines_folder()
    if out.exists() and not out.is_dir():
        raise fail(f"{out}: not a folder; -o names the engine cache folder")
    if list_cache:
        _print_cache(EngineCache(out))
        return
    try:
        if precision not in ("auto", "fp16", "fp32") or layout not in ("nhwc", "nchw"):
            raise ValueError("--precision must be auto, fp16 or fp32 and --layout nhwc or nchw")
        check_overlap(tile, overlap)
        loaded = load_model(model)
        request = CompileRequest(TileShape(batch, tile, layout), precision, out, workspace, opt_level)
        result = compile_model(loaded, request, resolve_device(device), example_pixels())
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    console.print(f"onnx: {escape(printable(str(result.onnx)))}", highlight=False)
    if result.onnx_psnr is not None:
        console.print(f"onnx parity (onnxruntime vs torch fp32): {result.onnx_psnr:.1f} dB", highlight=False)
    if result.plan is None:
        raise fail("TensorRT is not installed: the engine build needs the `tensorrt` extra on an NVIDIA machine "
                   "(pip install -e '.[tensorrt]' in this checkout); the ONNX file above is ready for trtexec or onnxruntime", 3)
    console.print(f"engine: {escape(printable(str(result.plan)))}{' (cached)' if result.cached else ''}", highlight=False)


def _print_cache(cache: Any) -> None:
    table = Table(title=f"engine cache {cache.folder}")
    for column in ("model", "tile", "batch", "layout", "precision", "TensorRT", "GPU", "plan"):
        table.add_column(column)
    for entry in cache.entries():
        k = entry.key
        table.add_row(k.model_name, str(k.tile), str(k.batch), k.layout, k.precision, k.tensorrt_version,
                      f"{k.gpu_name} (sm {k.compute_capability})", entry.plan)
    Console().print(table)
