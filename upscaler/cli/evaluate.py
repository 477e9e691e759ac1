"""`upscale eval`: PSNR/SSIM on paired datasets, the published protocol."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from upscaler.cli.app import EXIT_FAILED, app, console, fail
from upscaler.cli.options import DeviceOption, ModelOption, open_engine_or_fail
from upscaler.engine.settings import DEFAULT_BATCH, DEFAULT_OVERLAP, RunSettings, parse_tile
from upscaler.models.weights import BASELINE_MODEL, DEFAULT_MODEL

if TYPE_CHECKING:  # torch loads when a model opens, not for --help
    from upscaler.quality.evaluate import DatasetScore, ImageScore
    from upscaler.train.degradations import LowResDamage


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
    degrade: Annotated[str | None, typer.Option(metavar="SPEC", help="Score damaged inputs: each LR made from its HR by MATLAB-bicubic x4 down, then blur, noise, JPEG as SPEC says (jpeg:50, noise:5, jpeg:75+noise:3, blur:1.2), with bicubic of the same LR beside.")] = None,
    seed: Annotated[int, typer.Option(help="--degrade: seed of the noise (image i draws from seed and i).")] = 0,
) -> None:
    """PSNR/SSIM per image and mean, on the published protocol (Y channel, border = scale), and the JPEG grid.

    `--model bicubic` scores MATLAB bicubic upscaling, the baseline row of the published tables.
    grid: how strongly the output draws the 8x8 block grid of a JPEG input at x4 (1.00: not at all).
    """
    from upscaler.train.degradations import LowResDamage

    try:
        damage = LowResDamage.parse(degrade) if degrade is not None else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    if record is not None:
        if model == BASELINE_MODEL:
            raise fail("--record needs a model file, not bicubic")
        check_writable(record)
    try:
        settings = RunSettings(model=model, tile=parse_tile(tile), overlap=overlap, batch=batch, device=device, precision=precision)
        scale, source, tracks = _score(settings, datasets, damage, seed)
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    if record is not None:
        _record(source, record, tracks, f" {damage.spec()}" if damage is not None else "")
    head = {"model": model, "scale": scale} | ({"degrade": damage.spec(), "seed": seed} if damage is not None else {})
    if as_json:
        typer.echo(json.dumps({**head, "datasets": {t["model"].name: _track_json(t) for t in tracks}}, indent=2))
    else:
        _print_table(head, tracks)


def _score(settings: RunSettings, datasets: list[Path], damage: LowResDamage | None,
           seed: int) -> tuple[int, str | None, list[dict[str, DatasetScore]]]:
    """(scale, the model file, one track per dataset): the model's scores, and bicubic's of the same LR when damaged."""
    from upscaler.quality.evaluate import bicubic_upscaler, damaged_pairs, dataset_pairs, picture_upscaler, score_pairs

    if settings.model == BASELINE_MODEL:
        scale, source, upscale = 4, None, bicubic_upscaler(4)
    else:
        engine = open_engine_or_fail(settings)
        scale, source, upscale = engine.scale, engine.model.source, picture_upscaler(engine.upscale)
    upscalers = {"model": upscale} if damage is None else {"model": upscale, "bicubic": bicubic_upscaler(scale)}
    tracks = []
    for folder in datasets:
        if damage is None:
            pairs = dataset_pairs(folder, scale)
        else:
            pairs = damaged_pairs(folder, scale, lambda lr, i: damage.apply_uint8(lr, image_seed(seed, i)))
        tracks.append(score_pairs(upscalers, pairs, folder.name, scale))
    return scale, source, tracks


def _record(source: str | None, record: Path, tracks: list[dict[str, DatasetScore]], suffix: str) -> None:
    from upscaler.quality.evaluate import record_scores

    assert source is not None
    scores = {t["model"].name + suffix: {"psnr": round(t["model"].psnr, 3), "ssim": round(t["model"].ssim, 4),
                                         "grid": round(t["model"].grid, 3)} for t in tracks}
    try:
        record_scores(Path(source), record, scores)
    except OSError as exc:
        raise fail(f"{record}: cannot write ({exc.strerror or exc})", EXIT_FAILED) from None
    console.print(f"scores recorded in {record}", highlight=False)


def _track_json(track: dict[str, DatasetScore]) -> dict[str, object]:
    def scored(r: DatasetScore) -> dict[str, object]:
        return {"psnr": r.psnr, "ssim": r.ssim, "grid": r.grid, "images": [vars(i) for i in r.images]}

    return scored(track["model"]) | ({"bicubic": scored(track["bicubic"])} if "bicubic" in track else {})


def _print_table(head: dict[str, object], tracks: list[dict[str, DatasetScore]]) -> None:
    scale, damaged = head["scale"], "degrade" in head
    title = f"{head['model']} x{scale} (Y channel, border {scale})" + (f", input {head['degrade']} (seed {head['seed']})" if damaged else "")
    table = Table(title=title)
    columns = ["dataset", "image", "PSNR dB", "SSIM", "grid"]
    columns += ["bicubic dB", "bicubic SSIM", "bicubic grid", "gain dB"] if damaged else []
    for column in columns:
        table.add_column(column)
    for track in tracks:
        r, b = track["model"], track.get("bicubic")
        rows: list[tuple[str, ImageScore | DatasetScore, ImageScore | DatasetScore | None]] = [
            (i.name, i, b.images[n] if b else None) for n, i in enumerate(r.images)]
        for name, image, base in [*rows, ("mean", r, b)]:
            cells = [f"{image.psnr:.2f}", f"{image.ssim:.4f}", f"{image.grid:.2f}"]
            if base is not None:
                cells += [f"{base.psnr:.2f}", f"{base.ssim:.4f}", f"{base.grid:.2f}", f"{image.psnr - base.psnr:+.2f}"]
            if name == "mean":
                table.add_row(f"[bold]{r.name}[/]", "[bold]mean[/]", *(f"[bold]{c}[/]" for c in cells))
            else:
                table.add_row(r.name, name, *cells)
    Console().print(table)


def image_seed(seed: int, index: int) -> int:
    """Each image's own noise stream, derived (torch keeps only 32 bits of a seed)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def check_writable(target: Path) -> None:
    """Find an unwritable --record folder before minutes of scoring, by writing there (root ignores modes)."""
    folder = target.parent
    if target.is_dir():
        raise fail(f"--record {target}: is a folder; name the weights file to write")
    try:
        tempfile.NamedTemporaryFile(dir=folder, prefix=".upscale-probe-").close()
    except OSError as exc:
        raise fail(f"--record {target}: cannot write in {folder} ({exc.strerror or exc})") from None
