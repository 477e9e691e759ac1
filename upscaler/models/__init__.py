"""Generator architectures, all registered when a registry name is first taken from this package.

This package itself imports no torch: the light modules under it (descriptor, errors, the
model names and folders) serve commands that run no model. Its re-exported names load the
registry, and with it torch, on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from upscaler.models.errors import ModelError
    from upscaler.models.registry import (
        ARCHITECTURES,
        Architecture,
        count_parameters,
        get_architecture,
        macs_per_input_pixel,
        register,
    )

_FROM = {
    "ModelError": "upscaler.models.errors",
    **{name: "upscaler.models.registry" for name in (
        "ARCHITECTURES", "Architecture", "count_parameters", "get_architecture", "macs_per_input_pixel", "register",
    )},
}
_MODULES = ("compact", "edsr", "edsr_reference", "msrresnet", "rrdbnet", "srresnet", "srvgg", "registry")


def __getattr__(name: str) -> Any:
    if name in _FROM:
        if _FROM[name].endswith("registry"):
            for module in _MODULES:  # the registry is complete before anyone reads it
                importlib.import_module(f"upscaler.models.{module}")
        return getattr(importlib.import_module(_FROM[name]), name)
    if name in _MODULES:
        return importlib.import_module(f"upscaler.models.{name}")
    raise AttributeError(f"module 'upscaler.models' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ModelError",
    "count_parameters",
    "get_architecture",
    "macs_per_input_pixel",
    "register",
]
