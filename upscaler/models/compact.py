"""A compact generator for CPUs: EDSR-style blocks at low resolution, one sub-pixel step.

All convolutions run on the low-resolution grid and the final PixelShuffle does the whole
upscale, so the cost per input pixel stays small; the network predicts a residual on top of the
nearest-neighbour upscale of its input, which makes it train fast.
"""

from __future__ import annotations

import torch
from torch import nn

from upscaler.models.edsr import _ResidualBlock
from upscaler.models.registry import register


@register("compact", "CPU-sized: EDSR-style blocks on the LR grid, one sub-pixel upscale")
class Compact(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 48, blocks: int = 6) -> None:
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(
            *[_ResidualBlock(channels, 1.0) for _ in range(blocks)],
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.to_subpixels = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        features = features + self.body(features)
        anchor = x.repeat_interleave(self.scale * self.scale, dim=1)
        return self.shuffle(self.to_subpixels(features) + anchor)
