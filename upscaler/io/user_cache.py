"""Where upscaler keeps what it can rebuild (engines, model descriptors): the user's cache folder, never the current one.

`$UPSCALER_CACHE` moves all of it; `$UPSCALER_ENGINES` moves the engine cache alone (a shared
fast disk, say). Otherwise the platform's per-user cache folder: `$XDG_CACHE_HOME` or
`~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_ENV = "UPSCALER_CACHE"
ENGINES_ENV = "UPSCALER_ENGINES"
ENGINES_HELP = f"${ENGINES_ENV}, else the user cache folder's upscaler/engines (~/.cache/upscaler/engines on Linux)"


def cache_root() -> Path:
    """$UPSCALER_CACHE, else the platform's per-user cache folder's `upscaler`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "upscaler"


def engines_folder() -> Path:
    """The engine cache `upscale compile` and `--backend tensorrt` use when no folder is named."""
    if os.environ.get(ENGINES_ENV):
        return Path(os.environ[ENGINES_ENV]).expanduser()
    return cache_root() / "engines"


def descriptors_folder() -> Path:
    """Descriptors measured for foreign model files, keyed by their bytes' sha256."""
    return cache_root() / "descriptors"
