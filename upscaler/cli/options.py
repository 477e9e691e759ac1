"""Options shared by several commands, declared once."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from upscaler.compile.compiler import DEFAULT_CACHE
from upscaler.engine.backends import RunSettings


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
