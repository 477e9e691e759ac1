"""Precision names (what `--precision` and the caches say) and torch dtypes: one map for every stage."""

from __future__ import annotations

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(dtype: torch.dtype) -> str:
    """fp32, fp16 or bf16; KeyError for a dtype no model runs in."""
    return {d: name for name, d in PRECISIONS.items()}[dtype]
