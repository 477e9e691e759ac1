"""`upscale eval`: PSNR/SSIM on paired datasets, the published protocol."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from upscaler.cli.app import EXIT_FAILED, app, console, fail
from upscaler.cli.options import DeviceOption, ModelOption
from upscaler.engine.engine import open_engine
from upscaler.engine.settings import DEFAULT_BATCH, DEFAULT_OVERLAP, RunSettings, parse_tile
from upscaler.models.weights import DEFAULT_MODEL


@app.command("eval")
def evaluate(
    datasets: Annotated[list[Path], typer.Argument(help="Folders with HR/ and LR_bicubic/X4/ (e.g. Set5, Set14).")],
    model: ModelOption = DEFAULT_MODEL,
    tile: Annotated[str, typer.Option(help="auto or a tile size in pixels (see `upscale dir --help`).")] = "auto",
    overlap: Annotated[int, typer.Option(min=0, help="Overlap between tiles in input pixels, blended.")] = DEFAULT_OVERLAP,
    batch: Annotated[int, typer.Option(min=1, help="Tiles per inference batch.")] = DEFAULT_BATCH,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="fp32 by default: scores are measured exactly.")] = "fp32",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    record: Annotated[Path | None, typer.Option(help="Write a copy of the model with these mean scores in its metadata.")] = None,
) -> None:
    """PSNR/SSIM per image and mean, on the published protocol (Y channel, border = scale).

    `--model bicubic` scores MATLAB bicubic upscaling, the baseline row of the published tables.
    """
    from upscaler.quality.evaluate import bicubic_upscaler, picture_upscaler, record_scores, score_dataset

    if record is not None:
        if model == "bicubic":
            raise fail("--record needs a model file, not bicubic")
        check_writable(record)
    try:
        if model == "bicubic":
            scale, upscale = 4, bicubic_upscaler(4)
        else:
            settings = RunSettings(model=model, tile=parse_tile(tile), overlap=overlap, batch=batch, device=device, precision=precision)
            engine = open_engine(settings)
            loaded = engine.model
            scale, upscale = loaded.card.scale, picture_upscaler(engine.upscale)
        results = [score_dataset(upscale, folder, scale) for folder in datasets]
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    if record is not None:
        try:
            record_scores(Path(loaded.source), record, {r.name: {"psnr": round(r.psnr, 3), "ssim": round(r.ssim, 4)} for r in results})
        except OSError as exc:
            raise fail(f"{record}: cannot write ({exc.strerror or exc})", EXIT_FAILED) from None
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


def check_writable(target: Path) -> None:
    """Find an unwritable --record folder before minutes of scoring, by writing there (root ignores modes)."""
    folder = target.parent
    if target.is_dir():
        raise fail(f"--record {target}: is a folder; name the weights file to write")
    try:
        tempfile.NamedTemporaryFile(dir=folder, prefix=".upscale-probe-").close()
    except OSError as exc:
        raise fail(f"--record {target}: cannot write in {folder} ({exc.strerror or exc})") from None
