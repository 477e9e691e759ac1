"""SRResNet, the SRGAN generator exactly as in Ledig et al. 2017, Fig. 4."""

from __future__ import annotations

import math

import torch
from torch import nn

from upscaler.models.registry import register


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _check_power_of_two(scale: int) -> int:
    steps = int(math.log2(scale))
    if 2**steps != scale:
        raise ValueError(f"scale must be a power of two, got {scale}")
    return steps


@register("srresnet", "SRGAN generator: 9x9 head, 16 BN residual blocks, sub-pixel x2 upsamplers")
class SRResNet(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 16) -> None:
        super().__init__()
        self.scale = scale
        self.head = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU())
        self.body = nn.Sequential(*[_ResidualBlock(channels) for _ in range(blocks)])
        self.body_tail = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)
        )
        upsamplers: list[nn.Module] = []
        for _ in range(_check_power_of_two(scale)):
            upsamplers += [
                nn.Conv2d(channels, channels * 4, 3, padding=1),
                nn.PixelShuffle(2),
                nn.PReLU(),
            ]
        self.upsample = nn.Sequential(*upsamplers)
        self.tail = nn.Conv2d(channels, 3, 9, padding=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x)
        features = features + self.body_tail(self.body(features))
        return self.tail(self.upsample(features))
