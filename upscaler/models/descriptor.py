"""What the engine's run plan and `upscale models --json` need to know about any model, built-in or foreign.

The facts are measured once (one forward on the meta device, `probe`) and stored: in the
metadata of the files this project writes, and for a foreign file used directly in the user's
cache folder under the file's content digest. This module imports no torch, so commands that
run no model can read them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from upscaler.io.user_folders import descriptors_folder

DESCRIPTOR_KEY = "descriptor"  # the safetensors metadata key
# Bump when a figure is measured differently: every stored or cached descriptor is then measured again.
MEASURE_VERSION = 1
_STORED = ("arch", "arch_params", "scale", "in_channels", "out_channels", "parameters", "macs_per_input_pixel",
           "activations_per_input_pixel", "supports_fp16", "supports_bf16", "size_multiple")


@dataclass
class ModelDescriptor:
    """One model's facts: read off its layers (or its ONNX graph) or stored where only this project writes."""

    arch: str
    scale: int
    in_channels: int
    out_channels: int
    parameters: int
    macs_per_input_pixel: float
    supports_fp16: bool
    supports_bf16: bool
    size_multiple: int  # input height and width must be multiples of this (pixel-unshuffle inputs)
    source: str
    runtime: str = "torch"  # or "onnxruntime"
    arch_params: dict[str, Any] = field(default_factory=dict)
    # elements of the widest layer output per input pixel; times the dtype's size it bounds a tile's memory. 0: unknown
    activations_per_input_pixel: int = 0

    @cached_property
    def sha256(self) -> str:
        """Of the model file; read only when asked for (engine caches and imports key on it)."""
        return file_digest(Path(self.source))

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch, "arch_params": self.arch_params, "scale": self.scale,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "parameters": self.parameters,
            "macs_per_input_pixel": round(self.macs_per_input_pixel),
            "activations_per_input_pixel": self.activations_per_input_pixel, "supports_fp16": self.supports_fp16,
            "supports_bf16": self.supports_bf16, "size_multiple": self.size_multiple, "runtime": self.runtime,
            "source": self.source, "sha256": self.sha256,
        }

    def stored(self) -> str:
        """The facts that belong to the weights (not to where they lie), as JSON for metadata or the cache."""
        return json.dumps({"version": MEASURE_VERSION, **{key: getattr(self, key) for key in _STORED}})

    @classmethod
    def from_stored(cls, text: str | None, source: str) -> ModelDescriptor | None:
        """The descriptor `stored` wrote, for the file at `source`; None if absent, malformed or measured otherwise."""
        try:
            facts = json.loads(text) if text else None
            if not isinstance(facts, dict) or facts.get("version") != MEASURE_VERSION:
                return None
            described = cls(source=source, **{key: facts[key] for key in _STORED})
        except (json.JSONDecodeError, KeyError, TypeError):
            return None
        types: tuple[type | tuple[type, ...], ...] = (str, dict, int, int, int, int, (int, float), int, bool, bool, int)
        if not all(isinstance(getattr(described, k), t) for k, t in zip(_STORED, types, strict=True)):
            return None
        return described


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata from its JSON header alone: no tensor read, no torch. ValueError if not one."""
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > 100 << 20:
            raise ValueError(f"{path}: not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: not a safetensors file (header is not JSON)") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: not a safetensors file (no metadata object)")  # noqa: TRY004 - callers catch ValueError for any bad file
    return {str(k): str(v) for k, v in metadata.items()}


def cached(path: Path) -> ModelDescriptor | None:
    """The descriptor measured earlier for a file of exactly these bytes (keyed by their sha256), with the digest set."""
    digest = file_digest(path)
    try:
        text = (descriptors_folder() / f"{digest}.json").read_text()
    except (OSError, UnicodeDecodeError):
        text = None
    described = ModelDescriptor.from_stored(text, str(path))
    if described is not None:
        described.__dict__["sha256"] = digest  # cached_property: the file is not read again
    return described


def remember(described: ModelDescriptor) -> None:
    """Keep a measured descriptor for the next run; a cache that cannot be written only costs that run a probe."""
    from upscaler.io.files import write_bytes_atomically

    try:
        write_bytes_atomically(descriptors_folder() / f"{described.sha256}.json", described.stored().encode())
    except OSError:
        pass
