"""SRVGGNetCompact, Real-ESRGAN's small generator (realesr-general-x4v3, realesr-animevideov3).

Written from the structure of BasicSR's `srvgg_arch.py`: a plain stack of 3x3 convs with
per-channel PReLU on the low-resolution grid, one PixelShuffle, plus the nearest-neighbour
upscale of the input. The keys are `body.0` (first conv), `body.1` (its PReLU), then a conv
and a PReLU per body conv, and the last conv with 3*scale^2 outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.layouts import indices, shape
from upscaler.models.registry import Detection, register


def _detect(state: Mapping[str, torch.Tensor]) -> Detection | None:
    if "body.0.weight" not in state or "body.1.weight" not in state or len(shape(state, "body.1.weight")) != 1:
        return None
    numbered = indices(state, r"body\.(\d+)\.weight")
    if numbered != list(range(numbered[-1] + 1)) or numbered[-1] % 2:
        return None  # PReLU weights at every odd index: a gap means another activation or another network
    channels, in_channels = shape(state, "body.0.weight")[:2]
    out = shape(state, f"body.{numbered[-1]}.weight")[0]
    scale = math.isqrt(out // 3)
    if in_channels != 3 or 3 * scale * scale != out:
        return None
    return Detection({"scale": scale, "channels": channels, "blocks": numbered[-1] // 2 - 1}, dict(state))


@register("srvggnet_compact", "Real-ESRGAN SRVGGNetCompact: plain convs + PReLU on the LR grid, one PixelShuffle", detect=_detect)
class SRVGGNetCompact(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 32) -> None:
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.PReLU(channels)]
        for _ in range(blocks):  # body convs, each with its PReLU
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels)]
        layers.append(nn.Conv2d(channels, 3 * scale * scale, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(x, scale_factor=float(self.scale), mode="nearest")
        return F.pixel_shuffle(self.body(x), self.scale) + base
