"""Turning --device and --precision into torch objects, with clear errors."""

from __future__ import annotations

import ctypes
import platform
import sys
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from upscaler.models.dtypes import PRECISIONS

M = TypeVar("M", bound=nn.Module)

_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3  # mallopt's parameter numbers (glibc's malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for it on 64-bit systems


def keep_freed_heap(nbytes: int) -> bool:
    """Ask glibc to reuse freed memory for the next image instead of returning it to the system at once.

    The CPU model allocates and frees activations of tens to hundreds of MB per image. By default
    glibc maps the biggest anew and unmaps them when freed, so every image faults those pages in
    again, zeroed by the kernel: on Set14 with the built-in model that was a fifth of the model's
    time (benchmarks/RESULTS.md). Setting any parameter stops glibc adapting its mapping
    threshold, so that is set to its ceiling (blocks below it come from the heap), and `nbytes`
    of padding is kept at the top of the heap for the bigger ones. False where the C library is
    not glibc (nothing changes there).
    """
    if sys.platform != "linux":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_MMAP_THRESHOLD_MAX))) and bool(mallopt(_M_TOP_PAD, ctypes.c_int(nbytes)))


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


def _cpuinfo_field(name: str) -> str:
    """A field of the first CPU in /proc/cpuinfo (Linux), or ''."""
    for line in _read_lines("/proc/cpuinfo"):
        if line.startswith(name):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_name() -> str:
    """The CPU's marketing name where Linux tells it (platform.processor() is empty there)."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions run about twice as fast as fp32; elsewhere they are emulated."""
    return bool({"avx512_bf16", "amx_bf16"} & set(_cpuinfo_field("flags").split()))


def resolve_precision(spec: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on CUDA (tensor cores); on CPU bf16 where it is native, else fp32.

    bf16 output matches fp32 within ~55 dB PSNR on Set14 with the built-in model, and tiles that
    come out non-finite or collapsed are recomputed in fp32; `eval` always scores in fp32.
    """
    if spec == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    try:
        return PRECISIONS[spec]
    except KeyError:
        raise ValueError(f"--precision {spec!r}: use auto, fp32, fp16 or bf16") from None


def available_memory(device: torch.device) -> int:
    """Bytes free for new allocations: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    for line in _read_lines("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 4 << 30  # no /proc (not Linux): assume a modest machine


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def channels_last(module: M) -> M:
    """NHWC weights for faster convolutions; torch's type stubs omit Module.to's memory_format."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]
