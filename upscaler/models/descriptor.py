"""What the engine's run plan and `upscale models --json` need to know about any model, built-in or foreign."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


@dataclass
class ModelDescriptor:
    """One model's facts: read off its layers (or its ONNX graph), never taken on trust from metadata."""

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

    @cached_property
    def sha256(self) -> str:
        """Of the model file; read only when asked for (engine caches and imports key on it)."""
        digest = hashlib.sha256()
        with Path(self.source).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "arch": self.arch, "arch_params": self.arch_params, "scale": self.scale,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "parameters": self.parameters,
            "macs_per_input_pixel": round(self.macs_per_input_pixel), "supports_fp16": self.supports_fp16,
            "supports_bf16": self.supports_bf16, "size_multiple": self.size_multiple, "runtime": self.runtime,
            "source": self.source, "sha256": self.sha256,
        }
