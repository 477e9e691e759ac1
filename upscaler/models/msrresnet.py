"""BasicSR's MSRResNet: SRResNet without batch norm, LeakyReLU(0.1), plus a bilinear skip.

Written from the structure of BasicSR's `srresnet_arch.py`: x2 and x3 use one conv +
PixelShuffle(scale), x4 two conv + PixelShuffle(2) steps; the output adds the bilinear
(align_corners=False) upscale of the input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.layouts import count_from_zero, shape
from upscaler.models.registry import Detection, register


class _PlainBlock(nn.Module):
    """conv-ReLU-conv plus identity: BasicSR's ResidualBlockNoBN with res_scale 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def _detect(state: Mapping[str, torch.Tensor]) -> Detection | None:
    if not {"conv_first.weight", "upconv1.weight", "conv_hr.weight", "conv_last.weight"} <= set(state):
        return None
    channels, in_channels = shape(state, "conv_first.weight")[:2]
    blocks = count_from_zero(state, r"body\.(\d+)\.conv1\.weight")
    if "upconv2.weight" in state:
        scale = 4
    else:
        scale = math.isqrt(shape(state, "upconv1.weight")[0] // channels)
    if in_channels != 3 or blocks < 0 or scale not in (2, 3, 4):
        return None
    return Detection({"scale": scale, "channels": channels, "blocks": blocks}, dict(state))


@register("msrresnet", "BasicSR MSRResNet: SRResNet without batch norm, bilinear skip", detect=_detect)
class MSRResNet(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 16) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"msrresnet: scale must be 2, 3 or 4, got {scale}")
        self.scale = scale
        self.conv_first = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(*[_PlainBlock(channels) for _ in range(blocks)])
        step = 2 if scale == 4 else scale
        self.upconv1 = nn.Conv2d(channels, channels * step * step, 3, padding=1)
        self.upconv2 = nn.Conv2d(channels, channels * 4, 3, padding=1) if scale == 4 else None
        self.step = step
        self.conv_hr = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_last = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        for conv in (self.upconv1, self.upconv2):
            if conv is not None:
                features = F.leaky_relu(F.pixel_shuffle(conv(features), self.step), 0.1)
        out = self.conv_last(F.leaky_relu(self.conv_hr(features), 0.1))
        return out + F.interpolate(x, scale_factor=float(self.scale), mode="bilinear", align_corners=False)
