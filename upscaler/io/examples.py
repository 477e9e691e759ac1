"""The photos bundled with the package (upscaler/examples/): real inputs wherever the tool needs one.

The compile parity check and `upscale bench` measure on a photograph, not a synthetic gradient,
whose smooth ramps hide what tiling and precision do to edges; package data finds them from an
installed wheel as well as from the checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from upscaler.io.images import read_picture

SUFFIXES = (".png", ".jpg")


def example_photos() -> list[Path]:
    """The bundled photos, sorted by name; FileNotFoundError names the folder if an install lost them."""
    folder = resources.files("upscaler") / "examples"
    photos = sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(SUFFIXES)) if folder.is_dir() else []
    if not photos:
        raise FileNotFoundError(f"{folder}: the bundled example photos are missing; reinstall upscaler")
    return photos


def example_pixels() -> np.ndarray:
    """uint8 HxWx3 of the first bundled photo."""
    return np.ascontiguousarray(read_picture(example_photos()[0]).color[..., :3])
