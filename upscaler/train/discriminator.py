"""The SRGAN discriminator of Ledig et al. 2017, Fig. 4."""

from __future__ import annotations

import torch
from torch import nn

# (channels, stride) of the conv-BN-LeakyReLU blocks after the first convolution (k3n64s1, no BN).
BLOCKS: list[tuple[int, int]] = [(64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2)]
SLOPE = 0.2


def feature_size(patch: int) -> int:
    """Side of the last feature map: each stride-2 3x3 convolution (padding 1) halves, rounding up."""
    for _, stride in BLOCKS:
        patch = (patch + stride - 1) // stride
    return patch


class Discriminator(nn.Module):
    """Real/fake classifier of HR patches; returns logits (sigmoid is folded into the BCE loss).

    The dense layers see the whole last feature map, as in the paper, so the patch size is fixed
    at construction. Convolutions followed by batch norm carry no bias: the norm's shift replaces it.
    """

    def __init__(self, patch: int = 96) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True)]
        channels = 64
        for out, stride in BLOCKS:
            layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.LeakyReLU(SLOPE, inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        side = feature_size(patch)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, 1024), nn.LeakyReLU(SLOPE, inplace=True), nn.Linear(1024, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).squeeze(1)
