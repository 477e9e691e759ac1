"""What a user asked the engine for, before anything is resolved against the machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from upscaler.io.user_folders import engines_folder

DEFAULT_OVERLAP = 24
DEFAULT_BATCH = 4
BACKENDS = ("auto", "tensorrt", "torch")


@dataclass(frozen=True)
class RunSettings:
    """The inference options shared by `dir`, `image`, `bench`, `video` and `pipe`, as given."""

    model: str
    scale: int | None = None  # output scale; None = the model's own
    tile: int | None = None  # None = auto: whole images unless the memory budget says otherwise
    overlap: int = DEFAULT_OVERLAP
    batch: int = DEFAULT_BATCH
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    streams: int = 2
    cuda_graphs: bool = False
    compile: bool = False
    memory_budget_mib: int | None = None  # None = derived from the device's free memory
    engines: Path = field(default_factory=engines_folder)


def parse_tile(spec: str) -> int | None:
    """`auto` or a tile size of at least 8 input pixels."""
    if spec == "auto":
        return None
    try:
        tile = int(spec)
    except ValueError:
        raise ValueError(f"--tile {spec!r}: use auto or a number of pixels") from None
    if tile < 8:
        raise ValueError(f"--tile {tile}: at least 8 pixels")
    return tile
