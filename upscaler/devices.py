"""Turning --device and --precision into torch objects, with clear errors."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str) -> torch.device:
    """auto: the first CUDA GPU if there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"--device {spec!r}: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec}: no CUDA GPU is available to this torch build")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {spec!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA (tensor cores), fp32 on CPU (exact, and fastest without AMX)."""
    if spec == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    try:
        return PRECISIONS[spec]
    except KeyError:
        raise ValueError(f"--precision {spec!r}: use auto, fp32, fp16 or bf16") from None


def channels_last(module: M) -> M:
    """NHWC weights for faster convolutions; torch's type stubs omit Module.to's memory_format."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]
