"""Jobs: the data paths of the commands, between the engine and the CLI.

`pictures` (files in a folder), `video` (a file, in resumable segments) and `pipe` (frames on
stdin) each take an engine and report progress through a callback; the CLI parses, calls one and
reports, and the Ray workers call the same ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch

    from upscaler.io.images import Picture


class FrameEngine(Protocol):
    """What a job needs of the engine, and no more (`upscaler.engine.engine.Engine` is one)."""

    @property
    def scale(self) -> int: ...

    @property
    def depth(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def launch(self, picture: Picture, out_format: str = "PNG") -> Callable[[], Picture]: ...

    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]: ...

    def identity(self, frame: tuple[int, int] | None = None) -> dict[str, Any]: ...
