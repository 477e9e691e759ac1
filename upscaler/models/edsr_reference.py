"""EDSR as its authors published it (Lim et al. 2017), for their checkpoints and BasicSR's.

Written from the structure of EDSR-PyTorch's `edsr.py`/`common.py`: the network works on
0..255 pixels, `sub_mean`/`add_mean` are fixed 1x1 convs (MeanShift) that remove and restore
the DIV2K mean, residual blocks `body.N.body.{0,2}` are conv-ReLU-conv scaled by `res_scale`,
then `body.B` and the tail's conv + PixelShuffle steps and last conv. BasicSR's EDSR is the
same computation with other names (`conv_first`, `body.N.conv1/2`, `conv_after_body`,
`upsample.K`, `conv_last`) and its mean as a constant, which becomes the MeanShift here.
`res_scale` is not in the tensors: both references train the large model (256 channels)
with 0.1 and smaller ones with 1, which is what detection assumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from upscaler.models.edsr import _RGB_MEAN, _ResidualBlock
from upscaler.models.layouts import count_from_zero, indices, renamed, shape
from upscaler.models.registry import Detection, StateDict, register

LARGE_WIDTH = 256


def _mean_shift(sign: float, value_range: float) -> nn.Conv2d:
    conv = nn.Conv2d(3, 3, 1)
    assert conv.bias is not None
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.copy_(sign * value_range * torch.tensor(_RGB_MEAN))
    return conv


def _from_basicsr(state: Mapping[str, torch.Tensor]) -> StateDict:
    blocks = count_from_zero(state, r"body\.(\d+)\.conv1\.weight")
    out = renamed(state, [
        (r"conv_first\.(weight|bias)", r"head.0.\1"), (r"body\.(\d+)\.conv1\.(weight|bias)", r"body.\1.body.0.\2"),
        (r"body\.(\d+)\.conv2\.(weight|bias)", r"body.\1.body.2.\2"),
        (r"conv_after_body\.(weight|bias)", rf"body.{blocks}.\1"), (r"upsample\.(\d+)\.(weight|bias)", r"tail.0.\1.\2"),
        (r"conv_last\.(weight|bias)", r"tail.1.\1"),
    ])
    for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
        shift = _mean_shift(sign, 255.0)
        out[f"{name}.weight"], out[f"{name}.bias"] = shift.weight.detach(), shift.state_dict()["bias"]
    return out


def _detect(state: Mapping[str, torch.Tensor]) -> Detection | None:
    if {"conv_first.weight", "body.0.conv1.weight", "conv_after_body.weight", "upsample.0.weight"} <= set(state):
        state = _from_basicsr(state)
    if not {"sub_mean.weight", "add_mean.weight", "head.0.weight", "body.0.body.0.weight", "tail.1.weight"} <= set(state):
        return None
    channels, in_channels = shape(state, "head.0.weight")[:2]
    blocks = count_from_zero(state, r"body\.(\d+)\.body\.0\.weight")
    steps = indices(state, r"tail\.0\.(\d+)\.weight")
    if in_channels != 3 or blocks < 0 or not steps:
        return None
    first_step = shape(state, f"tail.0.{steps[0]}.weight")[0] // channels
    scale = 3 if first_step == 9 else 2 ** len(steps)
    res_scale = 0.1 if channels >= LARGE_WIDTH else 1.0
    return Detection({"scale": scale, "channels": channels, "blocks": blocks, "res_scale": res_scale}, dict(state))


@register("edsr_reference", "EDSR as published (EDSR-PyTorch and BasicSR checkpoints): 0..255 inside, MeanShift", detect=_detect)
class EDSRReference(nn.Module):
    def __init__(self, scale: int = 4, channels: int = 64, blocks: int = 16, res_scale: float = 1.0) -> None:
        super().__init__()
        if scale != 3 and 2 ** int(math.log2(scale)) != scale:
            raise ValueError(f"edsr_reference: scale must be 3 or a power of two, got {scale}")
        self.scale, self.value_range = scale, 255.0
        self.sub_mean = _mean_shift(-1.0, self.value_range)
        self.add_mean = _mean_shift(1.0, self.value_range)
        self.head = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1))
        self.body = nn.Sequential(
            *[_ResidualBlock(channels, res_scale) for _ in range(blocks)], nn.Conv2d(channels, channels, 3, padding=1)
        )
        steps: list[nn.Module] = []
        for factor in [3] if scale == 3 else [2] * int(math.log2(scale)):
            steps += [nn.Conv2d(channels, channels * factor * factor, 3, padding=1), nn.PixelShuffle(factor)]
        self.tail = nn.Sequential(nn.Sequential(*steps), nn.Conv2d(channels, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.sub_mean(x * self.value_range))
        features = features + self.body(features)
        return self.add_mean(self.tail(features)) / self.value_range
