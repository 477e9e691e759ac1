"""`upscale compare`: one PNG that shows what each model does to the same crops of one image."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from upscaler.cli.app import EXIT_FAILED, app, console, fail
from upscaler.cli.options import DeviceOption, open_engine_or_fail
from upscaler.engine.settings import DEFAULT_OVERLAP, RunSettings, parse_tile
from upscaler.io.files import write_bytes_atomically
from upscaler.io.images import Picture, PictureError, read_picture, to_uint8

if TYPE_CHECKING:
    import numpy as np

    from upscaler.engine.engine import Engine
    from upscaler.train.degradations import LowResDamage

DEFAULT_MODELS = ["clean", "photo"]


@app.command("compare")
def compare(
    image: Annotated[Path, typer.Argument(help="The low-resolution input: a photo as users have it, or an LR made from a reference.")],
    out: Annotated[Path, typer.Option("--output", "-o", help="The sheet to write (PNG).")],
    models: Annotated[list[str] | None, typer.Option("--model", "-m", show_default=False, help=(
        "A model to show (repeat it): built-in or imported name, or a model file \\[default: clean and photo]."))] = None,
    reference: Annotated[Path | None, typer.Option(help=(
        "The original at the output size: shown last; each other panel gets its PSNR/SSIM against it (Y, border = scale, whole image)."))] = None,
    crop: Annotated[str | None, typer.Option(metavar="X,Y,W,H", help="The crop in input pixels \\[default: the windows with the most detail].")] = None,
    crops: Annotated[int, typer.Option(min=1, max=8, help="How many detailed windows, one row each (without --crop).")] = 2,
    crop_size: Annotated[int, typer.Option(min=8, help="Side of each detailed window in input pixels (without --crop).")] = 48,
    tile: Annotated[str, typer.Option(help="auto or a tile size in pixels (see `upscale dir --help`).")] = "auto",
    overlap: Annotated[int, typer.Option(min=0, help="Overlap between tiles in input pixels, blended.")] = DEFAULT_OVERLAP,
    device: DeviceOption = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16 (see `upscale dir --help`).")] = "auto",
    degrade: Annotated[str | None, typer.Option(metavar="SPEC", help=(
        "IMAGE is the original: the input is made from it as `upscale eval --degrade` makes it (MATLAB-bicubic down, "
        "then jpeg:50, noise:5, blur:1.2...), and IMAGE is the reference."))] = None,
    seed: Annotated[int, typer.Option(help="--degrade: seed of the noise.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the crops and each panel's scores as JSON.")] = False,
) -> None:
    """A comparison sheet: the input (nearest x4), bicubic and each model, the same crops side by side, labelled.

    With --reference (or --degrade) each panel shows its PSNR/SSIM and the reference is the last panel.
    """
    from upscaler.quality.compare import as_rgb, check_crop, detail_crops, panels_for, sheet
    from upscaler.train.degradations import LowResDamage

    if out.suffix.lower() != ".png":
        raise fail(f"-o {out}: the sheet is a PNG; name it .png")
    if degrade is not None and reference is not None:
        raise fail("--degrade makes IMAGE the reference; give --reference only without it")
    try:
        base = RunSettings(model="", tile=parse_tile(tile), overlap=overlap, device=device, precision=precision)
        damage = LowResDamage.parse(degrade) if degrade is not None else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    given = as_rgb(to_uint8(_read(image)))  # a missing or bad file is named before any model loads
    wanted = None if reference is None else as_rgb(to_uint8(_read(reference)))
    engines = _open_each(models or DEFAULT_MODELS, base)
    scale = engines[0][1].scale
    lr, hr = _damaged(given, damage, seed, scale) if damage is not None else (given, wanted)
    try:
        windows = [check_crop(_parse_crop(crop), lr.shape[1], lr.shape[0])] if crop else detail_crops(lr, crop_size, crops)
    except ValueError as exc:
        raise fail(f"--crop {crop}: {exc}") from None
    try:
        panels = panels_for(lr, _upscale_with_each(image, lr, engines), scale, hr)
    except ValueError as exc:
        raise fail(f"--reference {reference}: {exc}") from None
    encoded = io.BytesIO()
    sheet(panels, windows, scale).save(encoded, format="PNG")
    try:
        write_bytes_atomically(out, encoded.getvalue())
    except OSError as exc:
        raise fail(f"{out}: cannot write ({exc.strerror or exc})", EXIT_FAILED) from None
    if as_json:
        typer.echo(json.dumps({"image": str(image), "scale": scale, "degrade": degrade, "crops": windows, "output": str(out),
                               "panels": [{"label": p.label, "psnr": p.psnr, "ssim": p.ssim} for p in panels]}, indent=2))
    else:
        console.print(f"wrote {out}: {len(panels)} panels, {len(windows)} crop(s) of {image}", highlight=False, soft_wrap=True)


def _open_each(models: list[str], base: RunSettings) -> list[tuple[str, Engine]]:
    """An engine per model, by its name as given; all of one scale, which the sheet shows."""
    engines = [(spec, open_engine_or_fail(replace(base, model=spec))) for spec in models]
    for spec, engine in engines:
        if engine.scale != engines[0][1].scale:
            raise fail(f"--model {spec}: x{engine.scale}, but {engines[0][0]} is x{engines[0][1].scale}; "
                       "compare models of one scale")
    return engines


def _damaged(original: np.ndarray, damage: LowResDamage, seed: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR, reference): the original cut to a multiple of `scale`, and its damaged MATLAB-bicubic downscale."""
    from upscaler.quality.evaluate import bicubic_resize

    hr = original[: original.shape[0] // scale * scale, : original.shape[1] // scale * scale]
    return damage.apply_uint8(bicubic_resize(hr, 1 / scale), seed), hr


def _upscale_with_each(image: Path, lr: np.ndarray, engines: list[tuple[str, Engine]]) -> list[tuple[str, np.ndarray]]:
    from upscaler.engine.errors import FrameError

    outputs = []
    for spec, engine in engines:
        try:
            outputs.append((spec, engine.upscale(Picture(color=lr, alpha=None, format="PNG")).color))
        except FrameError as exc:
            raise fail(f"{image}: {exc}", EXIT_FAILED) from None
    return outputs


def _read(path: Path) -> np.ndarray:
    try:
        return read_picture(path).color
    except (PictureError, OSError) as exc:
        raise fail(f"{path}: {getattr(exc, 'strerror', None) or exc}", EXIT_FAILED) from None


def _parse_crop(text: str) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError("give X,Y,W,H in input pixels, e.g. 40,30,48,48") from None
    return x, y, w, h
