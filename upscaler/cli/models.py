"""`upscale models`: what is installed, with its measured scores."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from upscaler.cli.app import app


@app.command("models")
def list_models(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the built-in models: scale, parameters, MACs per input pixel and recorded scores."""
    from upscaler.models import count_parameters, macs_per_input_pixel
    from upscaler.models.weights import builtin_models, load_model

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
