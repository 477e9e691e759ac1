"""Options shared by several commands, declared once.

`@run_options` adds the inference options (model, scale, tiling, device, precision, backend,
streams...) to a command and hands it one `RunSettings` instead of a dozen arguments.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, get_type_hints

import typer

from upscaler.cli.app import fail
from upscaler.engine.settings import DEFAULT_BATCH, DEFAULT_OVERLAP, RunSettings, parse_tile
from upscaler.io.user_folders import ENGINES_HELP, engines_folder
from upscaler.models.weights import DEFAULT_MODEL

if TYPE_CHECKING:  # torch loads when a model opens, not for --help or a usage error
    from upscaler.engine.engine import Engine


class OutputFormat(str, Enum):
    keep = "keep"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    tiff = "tiff"
    bmp = "bmp"


class TiffCompression(str, Enum):
    none = "none"
    deflate = "deflate"
    lzw = "lzw"
    zstd = "zstd"


class Backend(str, Enum):
    auto = "auto"
    tensorrt = "tensorrt"
    torch = "torch"


DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ModelOption = Annotated[str, typer.Option("--model", "-m", help="Built-in or imported model name, or a model file.")]
FormatOption = Annotated[OutputFormat, typer.Option(help="Output format; keep writes the input's.")]
TiffCompressionOption = Annotated[TiffCompression, typer.Option(
    help="How TIFF outputs are compressed, losslessly: deflate reads everywhere; lzw is older and larger; zstd is "
         "smaller and faster but libtiff 4.0+ only (not ffmpeg, not older editors); none for raw strips.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary (and every failure) as JSON on standard output instead of the table.")]
SkipOption = Annotated[bool, typer.Option("--skip-existing", help="Leave complete outputs that already exist alone (finishes an interrupted run).")]
ClusterOption = Annotated[str | None, typer.Option(
    "--cluster", metavar="ADDRESS",
    help="Run on Ray: local (start it on this machine), auto (join this machine's cluster) or ray://HOST:PORT. "
         "Input, output and model must be paths every worker sees (a shared filesystem). Needs this project's cluster extra (pip install -e '.\\[cluster]').")]

_P = inspect.Parameter
_RUN_PARAMETERS = [
    _P("model", _P.KEYWORD_ONLY, default=DEFAULT_MODEL, annotation=ModelOption),
    _P("scale", _P.KEYWORD_ONLY, default=None, annotation=Annotated[int | None, typer.Option(
        min=1, max=16, help="Output scale; other than the model's, its output is resized with antialiased bicubic \\[default: the model's].")]),
    _P("tile", _P.KEYWORD_ONLY, default="auto", annotation=Annotated[str, typer.Option(
        help="auto: whole images, split evenly only where the memory budget requires; N: square N-pixel tiles of one fixed shape.")]),
    _P("overlap", _P.KEYWORD_ONLY, default=DEFAULT_OVERLAP, annotation=Annotated[int, typer.Option(
        min=0, help="Overlap between tiles in input pixels, blended.")]),
    _P("batch", _P.KEYWORD_ONLY, default=DEFAULT_BATCH, annotation=Annotated[int, typer.Option(
        min=1, help="Tiles per inference batch.")]),
    _P("device", _P.KEYWORD_ONLY, default="auto", annotation=DeviceOption),
    _P("precision", _P.KEYWORD_ONLY, default="auto", annotation=Annotated[str, typer.Option(
        help="auto (fp16 on CUDA; bf16 on CPUs with native bf16, else fp32), fp32, fp16 or bf16.")]),
    _P("backend", _P.KEYWORD_ONLY, default=Backend.auto, annotation=Annotated[Backend, typer.Option(
        help="auto: TensorRT if installed with a matching or buildable engine, else torch CUDA, else CPU.")]),
    _P("streams", _P.KEYWORD_ONLY, default=2, annotation=Annotated[int, typer.Option(
        min=1, max=16, help="Frames (or pictures, in dir) in flight on separate CUDA streams: uploads, compute and downloads overlap.")]),
    _P("cuda_graphs", _P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--cuda-graphs/--no-cuda-graphs", help="Replay the fixed-shape torch forward as a CUDA graph.")]),
    _P("compile_model", _P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
        "--compile/--no-compile", help="torch.compile the model for its fixed shape (CUDA).")]),
    _P("memory_budget", _P.KEYWORD_ONLY, default=None, annotation=Annotated[int | None, typer.Option(
        min=64, help="MiB the engine may use for one tile's work \\[default: derived from free memory].")]),
    _P("engines", _P.KEYWORD_ONLY, default=None, annotation=Annotated[Path | None, typer.Option(
        show_default=False, help=f"Engine cache folder \\[default: {ENGINES_HELP}].")]),
]

F = TypeVar("F", bound=Callable[..., Any])


def run_options(command: F) -> F:
    """Give `command` the shared inference options; it receives them as `settings: RunSettings`."""
    signature = inspect.signature(command)
    hints = get_type_hints(command, include_extras=True)
    own = [p.replace(annotation=hints[p.name]) for p in signature.parameters.values() if p.name != "settings"]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        given = {p.name: kwargs.pop(p.name) for p in _RUN_PARAMETERS}
        return command(settings=settings_from(**given), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + _RUN_PARAMETERS)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + _RUN_PARAMETERS}
    return wrapper  # type: ignore[return-value]


def settings_from(
    model: str, scale: int | None, tile: str, overlap: int, batch: int, device: str, precision: str,
    backend: Backend, streams: int, cuda_graphs: bool, compile_model: bool, memory_budget: int | None, engines: Path | None,
) -> RunSettings:
    """The options as typed, validated where that needs no model or device; raises typer.BadParameter."""
    try:
        tile_size = parse_tile(tile)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tile") from None
    return RunSettings(
        model=model, scale=scale, tile=tile_size, overlap=overlap, batch=batch, device=device, precision=precision,
        backend=backend.value, streams=streams, cuda_graphs=cuda_graphs, compile=compile_model,
        memory_budget_mib=memory_budget, engines=engines or engines_folder(),
    )


def open_engine_or_fail(settings: RunSettings) -> Engine:
    """The engine `settings` ask for, or one `error:` line (a missing or bad model, a setting the device refuses) and exit 2."""
    from upscaler.engine.engine import open_engine

    try:
        return open_engine(settings)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise fail(str(exc)) from None
