"""A torch model's descriptor, measured in one forward on the meta device: MACs, widest activation, real scale."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from upscaler.models.descriptor import ModelDescriptor
from upscaler.models.errors import ModelError
from upscaler.models.registry import Architecture, count_parameters

PROBE = 32  # input pixels a side (the size the MAC and activation figures were always measured at)


def probe(arch: Architecture, params: dict[str, Any], module: nn.Module, source: str) -> ModelDescriptor:
    """Hooks on every layer during one forward of a PROBE-square input; on meta it costs shapes alone.

    Raises ModelError when the layers do not make an RGB upscale.
    """
    checked = arch.checked_params(params)
    multiple = arch.size_multiple(checked)
    side = PROBE * multiple // math.gcd(PROBE, multiple)
    macs = widest = 0

    def record(layer: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal macs, widest
        if isinstance(output, torch.Tensor):
            widest = max(widest, output.numel())
            if isinstance(layer, nn.Conv2d):
                macs += output.numel() * layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups

    handles = [m.register_forward_hook(record) for m in module.modules() if m is not module]
    param = next(module.parameters(), None)
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            shape = tuple(module(torch.zeros(1, 3, side, side, device=param.device if param is not None else None)).shape)
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    scale = shape[-1] // side
    if len(shape) != 4 or shape[1] != 3 or scale < 1 or shape[-1] != scale * side or shape[-2] != scale * side:
        raise ModelError(f"the layers make {list(shape)} from a {side}x{side} RGB input, not an RGB upscale")
    pixels = side * side
    return ModelDescriptor(
        arch=arch.name, scale=scale, in_channels=3, out_channels=3, parameters=count_parameters(module),
        macs_per_input_pixel=macs / pixels, supports_fp16=arch.supports_fp16, supports_bf16=arch.supports_bf16,
        size_multiple=multiple, source=source, arch_params=checked,
        activations_per_input_pixel=max(-(-widest // pixels), 3),
    )
