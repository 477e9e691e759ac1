"""The user's folders: imported models in the data folder; what can be rebuilt (engines, model descriptors) in the
cache folder, never the current one.

`$UPSCALER_CACHE` moves all of the cache; `$UPSCALER_ENGINES` moves the engine cache alone (a shared
fast disk, say). Otherwise the platform's per-user folders: `$XDG_CACHE_HOME` or `~/.cache` (data:
`$XDG_DATA_HOME` or `~/.local/share`) on Linux, `~/Library/Caches` (`~/Library/Application Support`)
on macOS, `%LOCALAPPDATA%` on Windows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

CACHE_ENV = "UPSCALER_CACHE"
ENGINES_ENV = "UPSCALER_ENGINES"
ENGINES_HELP = f"${ENGINES_ENV}, else the user cache folder's upscaler/engines (~/.cache/upscaler/engines on Linux)"


def platform_folder(kind: Literal["cache", "data"]) -> Path:
    """This platform's per-user folder of `kind` for applications, with `upscaler` below it."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / ("Caches" if kind == "cache" else "Application Support")
    else:
        variable, fallback = ("XDG_CACHE_HOME", ".cache") if kind == "cache" else ("XDG_DATA_HOME", ".local/share")
        base = Path(os.environ.get(variable) or Path.home() / fallback)
    return base / "upscaler"


def cache_root() -> Path:
    """$UPSCALER_CACHE, else the platform's per-user cache folder's `upscaler`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return platform_folder("cache")


def engines_folder() -> Path:
    """The engine cache `upscale compile` and `--backend tensorrt` use when no folder is named."""
    if os.environ.get(ENGINES_ENV):
        return Path(os.environ[ENGINES_ENV]).expanduser()
    return cache_root() / "engines"


def descriptors_folder() -> Path:
    """Descriptors measured for foreign model files, keyed by their bytes' sha256."""
    return cache_root() / "descriptors"
