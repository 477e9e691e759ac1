"""`upscale models` (what is installed, with descriptors and scores) and `upscale import` (bring your own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from upscaler.cli.app import app, console, fail, printable, warn

if TYPE_CHECKING:
    from upscaler.models.descriptor import ModelDescriptor
    from upscaler.models.weights import ModelCard

# The track `upscale models` shows beside the clean ones: what a JPEG photo at the web's usual quality gets.
DAMAGED_TRACK = "Set14 jpeg:50"

ModelsDirOption = Annotated[
    Path | None,
    typer.Option("--models-dir", help="User model folder \\[default: $UPSCALER_MODELS, else the platform's data folder].", show_default=False),
]


@app.command("models")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    models_dir: ModelsDirOption = None,
) -> None:
    """List the built-in and imported models: scale, parameters, MACs per input pixel, scores, descriptor."""
    from upscaler.models.weights import BUILTIN_ALIASES, builtin_models, user_models, user_models_dir

    folder = models_dir or user_models_dir()
    found = [("built-in", name, path) for name, path in sorted(builtin_models().items())]
    if folder.exists() and not folder.is_dir():
        warn(f"{folder}: the model folder is not a folder; only the built-in models are listed")
    try:
        found += [("imported", name, path) for name, path in user_models(folder).items()]
    except OSError as exc:  # a folder that cannot be listed: the built-ins are still worth showing
        warn(f"{folder}: cannot list the model folder ({exc.strerror or exc})")
    rows: list[dict[str, Any]] = []
    for kind, name, path in found:
        try:
            card, d = _described(path)
        except ValueError as exc:
            warn(f"skipped {exc}")
            continue
        except OSError as exc:  # a dangling link, a file that cannot be read: that one entry, not the list
            warn(f"skipped {path}: {exc.strerror or exc}")
            continue
        rows.append({
            "name": name, "kind": kind, "aliases": [a for a, n in BUILTIN_ALIASES.items() if kind == "built-in" and n == name],
            "arch": card.arch, "arch_params": card.arch_params,
            "scale": d.scale, "parameters": d.parameters, "macs_per_input_pixel": round(d.macs_per_input_pixel),
            "scores": card.scores, "recipe": card.recipe, "path": str(path),
            "provenance": card.provenance, "descriptor": d.to_json(),
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        _print_table(rows, folder)


def _print_table(rows: list[dict[str, Any]], folder: Path) -> None:
    table = Table(title=escape(printable(f"models: built-in, then imported from {folder}")))
    for column in ("name", "arch", "scale", "parameters", "MACs/pixel", "Set5 PSNR/SSIM", "Set14 PSNR/SSIM", f"{DAMAGED_TRACK} PSNR/grid"):
        table.add_column(column)
    for row in rows:
        scores = [row["scores"].get(d) for d in ("Set5", "Set14")]
        cells = [f"{s['psnr']:.2f} / {s['ssim']:.4f}" if s else "-" for s in scores]
        damaged = row["scores"].get(DAMAGED_TRACK)
        cells.append(f"{damaged['psnr']:.2f} / {damaged['grid']:.2f}" if damaged and "grid" in damaged else "-")
        name = " ".join([row["name"], *(f"({a})" for a in row["aliases"])])
        table.add_row(escape(printable(name)), row["arch"], f"x{row['scale']}", f"{row['parameters']:,}", f"{row['macs_per_input_pixel']:,}", *cells)
    Console().print(table)


def _described(path: Path) -> tuple[ModelCard, ModelDescriptor]:
    """Card and descriptor from the file's header when it stores them (no torch, no tensor read); else from loading it."""
    from upscaler.models.descriptor import DESCRIPTOR_KEY, ModelDescriptor, safetensors_metadata
    from upscaler.models.weights import FORMAT, ModelCard, load_model

    if path.suffix == ".safetensors":
        metadata = safetensors_metadata(path)
        stored = ModelDescriptor.from_stored(metadata.get(DESCRIPTOR_KEY), str(path))
        if stored is not None and metadata.get("format") == FORMAT:
            return ModelCard.from_metadata(metadata, str(path)), stored
    loaded = load_model(str(path))
    return loaded.card, loaded.descriptor


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="A .pth/.pt/.ckpt, .safetensors, .onnx or ncnn .param (its .bin beside it) generator.")],
    name: Annotated[str | None, typer.Option("--name", help="Name for --model \\[default: the file's stem].")] = None,
    models_dir: ModelsDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an imported model of the same name.")] = False,
) -> None:
    """Check a foreign model and keep it in the user model folder, so `--model NAME` finds it.

    Torch checkpoints become this project's .safetensors (no pickle is ever read again), with
    the detected architecture, descriptor and provenance (file name, sha256, licence hint) in
    the metadata; ONNX graphs stay ONNX with the provenance in their metadata. Nothing is downloaded.
    """
    from upscaler.models.library import import_model
    from upscaler.models.weights import user_models_dir

    if not file.is_file():
        raise fail(f"{file}: no such file")
    from upscaler.io.files import prepare_folder

    folder = models_dir or user_models_dir()
    if folder.exists() and not folder.is_dir():
        raise fail(f"{folder}: the model folder is a file, not a folder")
    try:
        prepare_folder(folder, recursive=False)  # proven writable before the model is read and converted
    except OSError as exc:
        raise fail(f"{folder}: cannot keep models there ({exc.strerror or exc})") from None
    try:
        target, provenance = import_model(file, folder, name, force)
    except (ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    console.print(escape(printable(f"imported {file} as {target.stem!r}: {target}")), highlight=False, soft_wrap=True)
    console.print(f"architecture {provenance['detected']} {provenance['arch_params']}; licence: {provenance['licence']}", highlight=False, soft_wrap=True)
