"""The `upscale` command line: thin typer commands over the library modules."""

from __future__ import annotations

import json
import logging
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .backends import RunSettings, open_upscaler
from .compiler import DEFAULT_CACHE
from .devices import resolve_device
from .engine import DEFAULT_BATCH, DEFAULT_OVERLAP, DEFAULT_TILE
from .files import Job, discover, output_format, target_path
from .pipeline import Summary, run_jobs, skip_existing
from .weights import DEFAULT_MODEL

app = typer.Typer(
    help="Make photos and video four times sharper with trained super-resolution generators.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


@app.callback()
def _root() -> None:
    """Make photos and video four times sharper with trained super-resolution generators."""
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


class Loss(str, Enum):
    mse = "mse"
    l1 = "l1"


class Schedule(str, Enum):
    constant = "constant"
    step = "step"
    cosine = "cosine"


class OutputFormat(str, Enum):
    keep = "keep"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"
    bmp = "bmp"


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    torch = "torch"


DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ModelOption = Annotated[str, typer.Option("--model", "-m", help="Built-in model name or a .safetensors file.")]
ScaleOption = Annotated[int | None, typer.Option(min=1, help="Output scale; other than the model's, its output is resized with antialiased bicubic [default: the model's, 4].")]
TileOption = Annotated[int, typer.Option(min=8, help="Tile size in input pixels; every tile has this one shape.")]
OverlapOption = Annotated[int, typer.Option(min=0, help="Overlap between tiles in input pixels, blended.")]
BatchOption = Annotated[int, typer.Option(min=1, help="Tiles per inference batch.")]
PrecisionOption = Annotated[str, typer.Option(help="auto (fp16 on CUDA; bf16 on CPUs with native bf16, else fp32), fp32, fp16 or bf16.")]
FormatOption = Annotated[OutputFormat, typer.Option(help="Output format; keep writes the input's.")]
SkipOption = Annotated[bool, typer.Option("--skip-existing", help="Leave outputs that already exist alone (finishes an interrupted run).")]
BackendOption = Annotated[Backend, typer.Option(help="auto: TensorRT if installed with a matching or buildable engine, else torch CUDA, else CPU.")]
StreamsOption = Annotated[int, typer.Option(min=1, help="CUDA streams kept busy at once (copies and compute overlap).")]
GraphsOption = Annotated[bool, typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay the fixed-shape torch forward as a CUDA graph.")]
EnginesOption = Annotated[Path, typer.Option(help="Engine cache folder.")]



def _settings(model: str, scale: int | None, tile: int, overlap: int, batch: int, device: str, precision: str,
              backend: Backend = Backend.auto, streams: int = 2, cuda_graphs: bool = False, engines: Path = DEFAULT_CACHE) -> RunSettings:
    return RunSettings(model=model, scale=scale, tile=tile, overlap=overlap, batch=batch, device=device, precision=precision,
                       backend=backend.value, streams=streams, cuda_graphs=cuda_graphs, engines=engines)


def _run_batch(jobs: list[Job], settings: RunSettings, skipped: int) -> None:
    """Upscale `jobs` with a progress bar, report each failure on one line, summarise, set the exit code."""
    try:
        upscale, loaded, opened = open_upscaler(settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    summary = Summary(skipped=skipped)
    columns = (
        TextColumn("[bold]upscale[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
    )
    started = time.perf_counter()
    interrupted = False
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("upscale", total=len(jobs), rate=0.0)
        outcomes = run_jobs(jobs, upscale)
        try:
            for outcome in outcomes:
                summary.add(outcome)
                if not outcome.ok:
                    progress.console.print(f"[red]error:[/] {escape(f'{outcome.job.source}: {outcome.error}')}", highlight=False, soft_wrap=True)
                elapsed = time.perf_counter() - started
                progress.update(task, advance=1, rate=(summary.done + summary.failed) / max(elapsed, 1e-9))
        except KeyboardInterrupt:
            interrupted = True
            outcomes.close()
    summary.seconds = time.perf_counter() - started
    _print_summary(summary, loaded.source, opened.description)
    if interrupted:
        left = len(jobs) - summary.done - summary.failed
        raise fail(f"interrupted with {left} image(s) left; re-run with --skip-existing to finish", EXIT_INTERRUPTED)
    if summary.failed:
        raise typer.Exit(EXIT_FAILED)


def _print_summary(summary: Summary, model: str, backend: str = "") -> None:
    table = Table(title="upscale summary", show_header=False)
    table.add_row("model", model)
    if backend:
        table.add_row("backend", backend)
    table.add_row("written", str(summary.done))
    table.add_row("skipped (already there)", str(summary.skipped))
    table.add_row("failed", f"[red]{summary.failed}[/]" if summary.failed else "0")
    table.add_row("wall time", f"{summary.seconds:.2f} s")
    if summary.seconds > 0 and summary.done:
        table.add_row("images/s", f"{summary.done / summary.seconds:.2f}")
        table.add_row("input megapixels/s", f"{summary.input_pixels / 1e6 / summary.seconds:.3f}")
    console.print(table)


@app.command("dir")
def upscale_dir(
    in_dir: Annotated[Path, typer.Argument(help="Folder of images to upscale.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; relative paths are kept under it.")],
    scale: ScaleOption = None,
    model: ModelOption = DEFAULT_MODEL,
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    batch: BatchOption = DEFAULT_BATCH,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    format: FormatOption = OutputFormat.keep,
    skip_existing_outputs: SkipOption = False,
    backend: BackendOption = Backend.auto,
    streams: StreamsOption = 2,
    cuda_graphs: GraphsOption = False,
    engines: EnginesOption = DEFAULT_CACHE,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Descend into sub-folders.")] = True,
) -> None:
    """Upscale every image in a folder (PNG, JPEG, WebP, TIFF, BMP) into another folder.

    Outputs are written under a temporary name and renamed, so OUT never holds a partial file;
    a bad input is reported on one line and the rest goes on; the exit code is 1 if any failed.
    """
    if not in_dir.is_dir():
        raise fail(f"{in_dir}: not a folder")
    sources = discover(in_dir, out, recursive)
    try:
        jobs = [Job(src, target_path(src, in_dir, out, fmt), fmt) for src in sources for fmt in [output_format(src, format.value)]]
    except ValueError as exc:
        raise fail(str(exc)) from None
    skipped: list[Path] = []
    if skip_existing_outputs:
        jobs, skipped = skip_existing(jobs)
    if not sources:
        console.print(f"[yellow]no images found in {in_dir}[/]")
    _run_batch(jobs, _settings(model, scale, tile, overlap, batch, device, precision, backend, streams, cuda_graphs, engines), len(skipped))


@app.command("image")
def upscale_image(
    source: Annotated[Path, typer.Argument(help="Image to upscale.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output file; its suffix picks the format unless --format says otherwise.")],
    scale: ScaleOption = None,
    model: ModelOption = DEFAULT_MODEL,
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    batch: BatchOption = DEFAULT_BATCH,
    device: DeviceOption = "auto",
    precision: PrecisionOption = "auto",
    format: FormatOption = OutputFormat.keep,
    skip_existing_outputs: SkipOption = False,
    backend: BackendOption = Backend.auto,
    streams: StreamsOption = 2,
    cuda_graphs: GraphsOption = False,
    engines: EnginesOption = DEFAULT_CACHE,
) -> None:
    """Upscale one image."""
    from .images import SUFFIX_FORMATS

    if not source.is_file():
        raise fail(f"{source}: no such file")
    if format is not OutputFormat.keep:
        fmt = output_format(source, format.value)
    else:
        fmt = SUFFIX_FORMATS.get(out.suffix.lower()) or SUFFIX_FORMATS.get(source.suffix.lower(), "PNG")
    if skip_existing_outputs and out.exists():
        _print_summary(Summary(skipped=1), model)
        return
    _run_batch([Job(source, out, fmt)], _settings(model, scale, tile, overlap, batch, device, precision, backend, streams, cuda_graphs, engines), 0)


@app.command("models")
def list_models(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the built-in models: scale, parameters, MACs per input pixel and recorded scores."""
    from .models import count_parameters, macs_per_input_pixel
    from .weights import builtin_models, load_model

    rows: list[dict[str, Any]] = []
    for name, path in sorted(builtin_models().items()):
        loaded = load_model(str(path))
        rows.append({
            "name": name, "arch": loaded.card.arch, "arch_params": loaded.card.arch_params,
            "scale": loaded.card.scale, "parameters": count_parameters(loaded.module),
            "macs_per_input_pixel": round(macs_per_input_pixel(loaded.module)),
            "scores": loaded.card.scores, "recipe": loaded.card.recipe, "path": str(path),
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in models")
    for column in ("name", "arch", "scale", "parameters", "MACs/pixel", "Set5 PSNR/SSIM", "Set14 PSNR/SSIM"):
        table.add_column(column)
    for row in rows:
        scores = [row["scores"].get(d) for d in ("Set5", "Set14")]
        cells = [f"{s['psnr']:.2f} / {s['ssim']:.4f}" if s else "-" for s in scores]
        table.add_row(row["name"], row["arch"], f"x{row['scale']}", f"{row['parameters']:,}", f"{row['macs_per_input_pixel']:,}", *cells)
    Console().print(table)


@app.command("eval")
def evaluate(
    datasets: Annotated[list[Path], typer.Argument(help="Folders with HR/ and LR_bicubic/X4/ (e.g. Set5, Set14).")],
    model: ModelOption = DEFAULT_MODEL,
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    batch: BatchOption = DEFAULT_BATCH,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="fp32 by default: scores are measured exactly.")] = "fp32",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    record: Annotated[Path | None, typer.Option(help="Write a copy of the model with these mean scores in its metadata.")] = None,
) -> None:
    """PSNR/SSIM per image and mean, on the published protocol (Y channel, border = scale).

    `--model bicubic` scores MATLAB bicubic upscaling, the baseline row of the published tables.
    """
    from .evaluate import bicubic_upscaler, picture_upscaler, score_dataset

    try:
        if model == "bicubic":
            scale, upscale = 4, bicubic_upscaler(4)
        else:
            upscale_picture, loaded, _ = open_upscaler(_settings(model, None, tile, overlap, batch, device, precision))
            scale, upscale = loaded.card.scale, picture_upscaler(upscale_picture)
        results = [score_dataset(upscale, folder, scale) for folder in datasets]
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    if record is not None:
        if model == "bicubic":
            raise fail("--record needs a model file, not bicubic")
        from .weights import save_model

        loaded.card.scores.update({r.name: {"psnr": round(r.psnr, 3), "ssim": round(r.ssim, 4)} for r in results})
        save_model(loaded.module.float().cpu(), loaded.card, record)
        console.print(f"scores recorded in {record}", highlight=False)
    if as_json:
        payload = {r.name: {"psnr": r.psnr, "ssim": r.ssim, "images": [vars(i) for i in r.images]} for r in results}
        typer.echo(json.dumps({"model": model, "scale": scale, "datasets": payload}, indent=2))
        return
    table = Table(title=f"{model} x{scale} (Y channel, border {scale})")
    for column in ("dataset", "image", "PSNR dB", "SSIM"):
        table.add_column(column)
    for result in results:
        for image in result.images:
            table.add_row(result.name, image.name, f"{image.psnr:.2f}", f"{image.ssim:.4f}")
        table.add_row(f"[bold]{result.name}[/]", "[bold]mean[/]", f"[bold]{result.psnr:.2f}[/]", f"[bold]{result.ssim:.4f}[/]")
    Console().print(table)


@app.command("compile")
def compile_engine(
    model: ModelOption = DEFAULT_MODEL,
    tile: Annotated[int, typer.Option(help="The one static tile shape the engine is built for (input pixels).")] = DEFAULT_TILE,
    overlap: Annotated[int, typer.Option(help="Overlap this engine will be run with; checked against the tile.")] = DEFAULT_OVERLAP,
    batch: Annotated[int, typer.Option(help="Static tile batch.")] = DEFAULT_BATCH,
    precision: Annotated[str, typer.Option(help="fp16 or fp32: stored in the ONNX graph itself (TensorRT 11 is strongly typed).")] = "fp16",
    layout: Annotated[str, typer.Option(help="uint8 I/O layout: nhwc or nchw.")] = "nhwc",
    out: Annotated[Path, typer.Option("--out", "-o", help="Engine cache folder.")] = DEFAULT_CACHE,
    workspace: Annotated[int, typer.Option(help="TensorRT workspace limit in MiB.")] = 4096,
    opt_level: Annotated[int, typer.Option(min=0, max=5, help="TensorRT builder optimization level.")] = 3,
    device: DeviceOption = "auto",
    list_cache: Annotated[bool, typer.Option("--list", help="Show the engine cache and exit.")] = False,
) -> None:
    """Compile a model into an FP16 TensorRT engine, cached per model, GPU, TensorRT version and tile shape.

    The ONNX graph (uint8 in and out, precision inside) is exported, checked and kept beside the
    engine. Without TensorRT the ONNX file is still made and checked; the exit code is then 3.
    """
    from .compiler import CompileRequest, compile_model
    from .export import TileShape
    from .tiling import TileGrid
    from .trt.cache import EngineCache
    from .weights import load_model

    if list_cache:
        _print_cache(EngineCache(out))
        return
    try:
        if precision not in ("fp16", "fp32") or layout not in ("nhwc", "nchw"):
            raise ValueError("--precision must be fp16 or fp32 and --layout nhwc or nchw")
        TileGrid.for_image(tile, tile, tile, overlap)
        loaded = load_model(model)
        request = CompileRequest(TileShape(batch, tile, layout), precision, out, workspace, opt_level)
        result = compile_model(loaded, request, resolve_device(device), _probe_pixels())
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    console.print(f"onnx: {result.onnx}", highlight=False)
    if result.onnx_psnr is not None:
        console.print(f"onnx parity (onnxruntime vs torch fp32): {result.onnx_psnr:.1f} dB", highlight=False)
    if result.plan is None:
        raise fail("TensorRT is not installed: the engine build needs the `tensorrt` extra on an NVIDIA machine "
                   "(pip install 'upscaler[tensorrt]'); the ONNX file above is ready for trtexec or onnxruntime", 3)
    console.print(f"engine: {result.plan}{' (cached)' if result.cached else ''}", highlight=False)


def _probe_pixels() -> np.ndarray:
    """A real photo for the parity check (the checkout's first example), else a gradient."""
    from .images import read_picture

    examples = Path(__file__).resolve().parent.parent / "examples"
    photos = sorted(examples.glob("*.png")) if examples.is_dir() else []
    if photos:
        return (np.atleast_3d(read_picture(photos[0]).color)[..., :3] * 255).round().astype(np.uint8)
    ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3)
    return ramp.astype(np.uint8)


def _print_cache(cache: Any) -> None:
    table = Table(title=f"engine cache {cache.folder}")
    for column in ("model", "tile", "batch", "layout", "precision", "TensorRT", "GPU", "plan"):
        table.add_column(column)
    for entry in cache.entries():
        k = entry.key
        table.add_row(k.model_name, str(k.tile), str(k.batch), k.layout, k.precision, k.tensorrt_version,
                      f"{k.gpu_name} (sm {k.compute_capability})", entry.plan)
    Console().print(table)


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
    from .bench import frame_from_photo, run_bench
    from .models import macs_per_input_pixel

    try:
        width, height = (int(v) for v in size.lower().split("x"))
        settings = _settings(model, None, tile, overlap, batch, device, precision, backend, streams, cuda_graphs, engines)
        upscale, loaded, opened = open_upscaler(settings)
        frame = frame_from_photo(_probe_pixels(), width, height)
        result = run_bench(upscale, frame, frames, warmup, macs_per_input_pixel(loaded.module))
    except ValueError as exc:
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


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Folder of high-resolution training images (searched recursively).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: checkpoint, metrics.jsonl, last/best.safetensors.")],
    arch: Annotated[str, typer.Option(help="Architecture: srresnet, edsr or compact.")] = "srresnet",
    loss: Annotated[Loss | None, typer.Option(help="Pixel loss [default: the architecture's paper recipe].")] = None,
    scale: Annotated[int, typer.Option(help="Upscaling factor.")] = 4,
    patch: Annotated[int, typer.Option(help="HR crop size in pixels (the paper's 96).")] = 96,
    batch: Annotated[int, typer.Option(help="Crops per step.")] = 16,
    steps: Annotated[int, typer.Option(help="Total optimizer steps (a resumed run continues to this total).")] = 100_000,
    lr: Annotated[float | None, typer.Option(help="Adam learning rate [default: the recipe's, 1e-4 for srresnet/edsr].")] = None,
    schedule: Annotated[Schedule | None, typer.Option(help="Learning-rate schedule [default: the recipe's].")] = None,
    val: Annotated[Path | None, typer.Option(help="Validation set with HR/ and LR_bicubic/X4/; keeps best.safetensors.")] = None,
    val_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(help="Write a resumable checkpoint every N steps.")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from RUN_DIR/checkpoint.pt exactly where it stopped.")] = False,
    device: DeviceOption = "auto",
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision [default: on for CUDA, off on CPU].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights and data sampling.")] = 0,
    param: Annotated[list[str] | None, typer.Option(help="Architecture hyper-parameter KEY=VALUE, repeatable (e.g. channels=32).")] = None,
) -> None:
    """Train a generator with a pixel loss (SRResNet on MSE, EDSR on L1) on a folder of photos."""
    from .train.trainer import TrainConfig
    from .train.trainer import train as run_training

    try:
        torch_device = resolve_device(device)
        config = TrainConfig(
            data=str(data_dir), arch=arch, scale=scale, patch=patch, batch=batch, steps=steps,
            loss=loss.value if loss else "", lr=lr or 0.0, schedule=schedule.value if schedule else "",
            seed=seed, val=str(val) if val else None, val_every=val_every,
            checkpoint_every=checkpoint_every, amp=torch_device.type == "cuda" if amp is None else amp,
            arch_params={k: json.loads(v) for k, v in (p.split("=", 1) for p in param or [])},
        )
        path = run_training(config, out, torch_device, resume)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; `upscale train ... -o {out} --resume` continues from the last checkpoint", EXIT_INTERRUPTED) from None
    console.print(f"[green]saved[/] {path}")


def main() -> None:
    app()
