"""Where outputs go, and writing them so that a crash never leaves a half-written file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from upscaler.io.images import FORMATS, SUFFIX_FORMATS, SUFFIXES

TEMP_PREFIX = ".upscale-"


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    format: str  # Pillow's name of the format to write


def discover(in_dir: Path, out_dir: Path, recursive: bool) -> list[Path]:
    """Image files under IN (by suffix; content is checked on reading), never those under OUT."""
    pattern = "**/*" if recursive else "*"
    out_resolved = out_dir.resolve()
    found = []
    for path in sorted(in_dir.glob(pattern)):
        if not path.is_file() or path.suffix.lower() not in SUFFIX_FORMATS or path.name.startswith(TEMP_PREFIX):
            continue
        if path.resolve().is_relative_to(out_resolved):
            continue
        found.append(path)
    return found


def output_format(source: Path, requested: str) -> str:
    """Pillow's format name to write: for `keep`, the format the source's suffix names."""
    return SUFFIX_FORMATS[source.suffix.lower()] if requested == "keep" else FORMATS[requested]


def target_path(source: Path, in_dir: Path, out_dir: Path, fmt: str) -> Path:
    """OUT/<relative path>; the suffix changes only when the format does. Never outside OUT."""
    target = out_dir / source.relative_to(in_dir)
    if SUFFIX_FORMATS.get(source.suffix.lower()) != fmt:
        target = target.with_suffix(SUFFIXES[fmt])
    if not target.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"{source}: output would land outside {out_dir}")
    return target


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write to a hidden temporary name beside `target`, then rename over it in one step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{target.name}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
