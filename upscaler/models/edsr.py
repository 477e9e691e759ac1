"""EDSR (Lim et al. 2017): residual blocks without batch norm, with residual scaling."""

from __future__ import annotations

import torch
from torch import nn

from upscaler.models.registry import register
from upscaler.models.srresnet import _check_power_of_two

# DIV2K RGB mean, as in the EDSR reference code; subtracted on the way in, added on the way out.
_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.body(x)
        return x + (residual if self.res_scale == 1.0 else residual * self.res_scale)


@register("edsr", "EDSR: no batch norm, residual scaling; the baseline is 16 blocks x 64 channels")
class EDSR(nn.Module):
    rgb_mean: torch.Tensor

    def __init__(
        self, scale: int = 4, channels: int = 64, blocks: int = 16, res_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("rgb_mean", torch.tensor(_RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.Sequential(
            *[_ResidualBlock(channels, res_scale) for _ in range(blocks)],
            nn.Conv2d(channels, channels, 3, padding=1),
        )
        upsamplers: list[nn.Module] = []
        for _ in range(_check_power_of_two(scale)):
            upsamplers += [nn.Conv2d(channels, channels * 4, 3, padding=1), nn.PixelShuffle(2)]
        self.upsample = nn.Sequential(*upsamplers)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(x - self.rgb_mean)
        features = features + self.body(features)
        return self.tail(self.upsample(features)) + self.rgb_mean
