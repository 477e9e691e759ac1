"""When a model's output for a tile cannot be trusted: one rule for the torch engine and the exported graph.

Reduced precision fails in two ways: it overflows (non-finite output) or it collapses (a flat
tile where the input has texture). Both places that judge tiles, the torch frame engine and the
`bad` output of our ONNX graphs (for TensorRT), take the ranges from here, in [0, 1] units; each
finds the non-finite values its own way (ONNX reductions need not propagate NaN).
"""

from __future__ import annotations

import torch

FLAT_OUTPUT = 1 / 255  # an output range under one grey level...
TEXTURED_INPUT = 4 / 255  # ...where the input spans more than four: a collapse, not a flat sky


def collapsed(out_high: torch.Tensor, out_low: torch.Tensor, in_high: torch.Tensor, in_low: torch.Tensor) -> torch.Tensor:
    """Per tile: flat output over textured input (every range in [0, 1] units, float32)."""
    return ((out_high - out_low) < FLAT_OUTPUT) & ((in_high - in_low) > TEXTURED_INPUT)
