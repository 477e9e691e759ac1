"""Reading tensors out of model files without ever executing code.

`.safetensors` goes through the safetensors parser only (never pickle); `.pth/.pt/.ckpt`
only through `torch.load(weights_only=True)`, whose unpickler builds tensors and plain
containers and refuses every other global. Every failure is one ModelError line.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from upscaler.models.errors import ModelError
from upscaler.models.registry import StateDict

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")
ONNX_SUFFIXES = (".onnx",)
NCNN_SUFFIXES = (".param",)  # with its .bin beside it (models/ncnn.py)
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES + ONNX_SUFFIXES + NCNN_SUFFIXES
WRAPPERS = ("params_ema", "params", "state_dict", "model")  # BasicSR's EMA weights are the ones to run


def first_line(exc: BaseException) -> str:
    """The informative line of a library's (often multi-paragraph) message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    blocked = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (blocked or lines or [type(exc).__name__])[0]


def sniff(path: Path) -> str:
    """What the first bytes say the file is, for messages about misnamed files."""
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch zip checkpoint"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if not head:
        return "empty"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return "not a safetensors file"


def read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata; a file that is not safetensors is named for what it is, never unpickled."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        kind = sniff(path)
        hint = " (rename it .pth to load it through the safe PyTorch loader)" if "PyTorch" in kind or "pickle" in kind else ""
        raise ModelError(f"{path}: not a readable safetensors file ({kind}; {first_line(exc)}){hint}") from None
    return tensors, metadata


def read_torch_checkpoint(path: Path) -> Any:
    """torch.load with weights_only: a pickle that would run code or build objects is refused, not run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as exc:
        raise ModelError(f"{path}: refused: the checkpoint holds more than weights ({first_line(exc)})") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, IndexError) as exc:
        raise ModelError(f"{path}: not a readable PyTorch checkpoint ({sniff(path)}: {first_line(exc)})") from None


def unwrap(checkpoint: Any, source: Path) -> StateDict:
    """The state dict inside a training checkpoint: params_ema over params, state_dict, model.

    DataParallel's `module.` prefix is removed; non-tensor entries (step counters...) are dropped.
    """
    state = checkpoint
    for _ in range(3):
        if not isinstance(state, Mapping):
            break
        inner = next((state[key] for key in WRAPPERS if isinstance(state.get(key), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise ModelError(f"{source}: holds a {type(state).__name__}, not a dict of weights")
    tensors = {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{source}: no weight tensors found (keys: {', '.join(map(str, list(state)[:5])) or 'none'})")
    return tensors


def as_float32(state: Mapping[str, torch.Tensor], source: Path) -> StateDict:
    """fp16/bf16 files run in fp32 here; NaN or infinite weights would turn every image black."""
    out: StateDict = {}
    for key, value in state.items():
        if value.is_floating_point():
            value = value.float()
            if not torch.isfinite(value).all():
                raise ModelError(f"{source}: tensor {key} holds NaN or infinite values")
        out[key] = value
    return out
